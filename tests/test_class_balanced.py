"""Class-balanced training order: whole groups of m images of a class per batch, the same global batches for any
process count, a fresh order per epoch, exact resume through the pipeline."""
import numpy as np
import pytest

from wpce_jax.data import pipeline, records, testing, tokenizers
from wpce_jax.data.class_balanced import ClassBalancedOrder
from wpce_jax.data.train_tokenizer import train_sentencepiece

LABELS = np.repeat(np.arange(7), [3, 5, 8, 14, 4, 9, 6])  # uneven classes; sizes not multiples of m
np.random.default_rng(0).shuffle(LABELS)


def _stream(order, n):
    return np.asarray([order[i] for i in range(n)])


def test_batches_hold_whole_groups_and_epochs_differ():
    order = ClassBalancedOrder(LABELS, 3, 12, seed=5, num_epochs=2)
    per_epoch = order.epoch_length
    assert per_epoch == (sum(np.bincount(LABELS) // 3) * 3 // 12) * 12  # whole batches of whole groups
    first, second = _stream(order, per_epoch), np.asarray([order[per_epoch + i] for i in range(per_epoch)])
    for epoch in (first, second):
        assert len(set(epoch.tolist())) == len(epoch)  # no record twice in an epoch
        groups = LABELS[epoch].reshape(-1, 3)
        assert (groups == groups[:, :1]).all()  # every group of 3 is one class
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, _stream(ClassBalancedOrder(LABELS, 3, 12, seed=5), per_epoch))
    assert not np.array_equal(first, _stream(ClassBalancedOrder(LABELS, 3, 12, seed=6), per_epoch))


def test_global_batches_do_not_depend_on_the_process_count():
    one = _stream(ClassBalancedOrder(LABELS, 2, 8, seed=1), 16)
    procs = [_stream(ClassBalancedOrder(LABELS, 2, 8, seed=1, process_index=p, process_count=2), 8) for p in range(2)]
    stitched = np.concatenate([np.concatenate([procs[0][k * 4:(k + 1) * 4], procs[1][k * 4:(k + 1) * 4]])
                               for k in range(2)])
    np.testing.assert_array_equal(stitched, one)


@pytest.mark.parametrize("kwargs,match", [
    (dict(per_class=1, global_batch=8), ">= 2"),
    (dict(per_class=3, global_batch=8), "multiple"),
    (dict(per_class=2, global_batch=8, process_count=3), "multiple"),
    (dict(per_class=2, global_batch=128), "fill no batch"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClassBalancedOrder(LABELS, seed=0, **kwargs)
    with pytest.raises(ValueError, match="label -1"):
        ClassBalancedOrder(np.append(LABELS, -1), 2, 8, seed=0)


def test_pipeline_batches_and_exact_resume(tmp_path):
    recs = [records.encode_record(testing.encode(testing.digit_image(i, 20)), f"digit {int(y)}", key=str(i),
                                  source="test", label=int(y), width=20, height=20) for i, y in enumerate(LABELS)]
    records.write_dataset(recs, str(tmp_path / "data"), 3, inputs=["test"])
    model = train_sentencepiece([f"digit {k}" for k in range(10)] * 5, str(tmp_path / "spm"), vocab_size=20)
    tok = tokenizers.get_tokenizer("sentencepiece", model, 8)

    def make():
        return pipeline.make_dataset(str(tmp_path / "data"), tokenizer=tok, image_size=16, train=True,
                                     batch_size=8, seed=2, samples_per_class=4)

    it = iter(make())
    batches = [next(it) for _ in range(3)]  # 10 groups of 4 fill 5 batches of 8 per epoch
    for b in batches:
        groups = b["label"].reshape(-1, 4)
        assert (groups == groups[:, :1]).all()
    state = it.get_state()
    want = [next(it) for _ in range(5)]  # across the epoch boundary
    resumed = iter(make())
    resumed.set_state(state)
    for expected in want:
        got = next(resumed)
        for key in ("image", "label", "tokens"):
            np.testing.assert_array_equal(got[key], expected[key])


@pytest.mark.parametrize("value,match", [(1, "0 .uniform. or an int >= 2"), (-2, "0 .uniform."),
                                         (3, "multiple of data.samples_per_class")])
def test_config_field_is_validated(cache_dir, value, match):
    from runs import tiny_config
    from wpce_jax.config_validation import validate_config

    with pytest.raises(ValueError, match=match):
        validate_config(tiny_config(cache_dir, **{"data.samples_per_class": value}))  # batch_size 32
    validate_config(tiny_config(cache_dir, **{"data.samples_per_class": 4}))
