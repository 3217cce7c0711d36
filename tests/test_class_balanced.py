"""Class-balanced training order: whole groups of m images of a class per batch, a fresh order per epoch, and
through the pipeline the same global batches for any process count and worker count, exact resume from an example
count (also with another process count)."""
import numpy as np
import pytest

from wpce_jax.data import image_ops, pipeline, records, testing, tokenizers
from wpce_jax.data.class_balanced import ClassBalancedOrder
from wpce_jax.data.train_tokenizer import train_sentencepiece

LABELS = np.repeat(np.arange(7), [3, 5, 8, 14, 4, 9, 6])  # uneven classes; sizes not multiples of m
np.random.default_rng(0).shuffle(LABELS)


def _stream(order, n, start=0):
    return np.asarray([order[g] for g in range(start, start + n)])


def test_batches_hold_whole_groups_and_epochs_differ():
    order = ClassBalancedOrder(LABELS, 3, 12, seed=5)
    per_epoch = order.epoch_length
    assert per_epoch == (sum(np.bincount(LABELS) // 3) * 3 // 12) * 12  # whole batches of whole groups
    assert per_epoch == order.batches_per_epoch * 12
    epochs = [_stream(order, per_epoch, e * per_epoch) for e in range(6)]
    for epoch in epochs:
        assert len(set(epoch.tolist())) == len(epoch)  # no record twice in an epoch
        groups = LABELS[epoch].reshape(-1, 3)
        assert (groups == groups[:, :1]).all()  # every group of 3 is one class
    assert len({tuple(e) for e in epochs}) == len(epochs)  # every epoch its own order
    np.testing.assert_array_equal(epochs[0], _stream(ClassBalancedOrder(LABELS, 3, 12, seed=5), per_epoch))
    assert not np.array_equal(epochs[0], _stream(ClassBalancedOrder(LABELS, 3, 12, seed=6), per_epoch))


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


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    d = tmp_path_factory.mktemp("cb")
    recs = [records.encode_record(testing.encode(testing.digit_image(i, 20)), f"digit {int(y)}", key=str(i),
                                  source="test", label=int(y), width=20, height=20) for i, y in enumerate(LABELS)]
    records.write_dataset(recs, str(d / "data"), 3, inputs=["test"])
    model = train_sentencepiece([f"digit {k}" for k in range(10)] * 5, str(d / "spm"), vocab_size=20)
    return str(d / "data"), tokenizers.get_tokenizer("sentencepiece", model, 8)


def _take(ds, n):
    it = iter(ds)
    out = [next(it) for _ in range(n)]
    if hasattr(it, "close"):
        it.close()
    return out


def _global(labelled, processes, n, *, global_batch, per_class, start_example=0, worker_count=0, **kw):
    """The first n global batches with `processes` processes: their k-th batches concatenated in process order."""
    data_dir, tok = labelled
    per = [_take(pipeline.make_train_dataset(data_dir, pipeline.TrainDataOptions(
                     tokenizer=tok, image_size=16, batch_size=global_batch // processes, seed=2,
                     samples_per_class=per_class, process_index=p, process_count=processes,
                     start_example=start_example, worker_count=worker_count, **kw)), n)
           for p in range(processes)]
    return [{key: np.concatenate([per[p][k][key] for p in range(processes)]) for key in per[0][k]} for k in range(n)]


def _same(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_pipeline_batches_hold_whole_groups(labelled):
    # m = 4: 10 groups of 4 fill 5 batches of 8 per epoch.
    batches = _global(labelled, 2, 7, global_batch=8, per_class=4)  # across the epoch boundary
    for b in batches:
        groups = b["label"].reshape(-1, 4)
        assert (groups == groups[:, :1]).all()
    order = ClassBalancedOrder(LABELS, 4, 8, seed=2)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), LABELS[_stream(order, 7 * 8)])


# m = 2: 23 groups of 2 fill 5 global batches of 8 per epoch; 8 = 1 x 8 = 2 x 4 = 4 x 2 rows of whole groups.
VIEWS = {"views": image_ops.ViewAugment(strength=0.5)}


@pytest.mark.parametrize("kw", [{}, VIEWS], ids=["crop", "two_view"])
def test_global_batches_do_not_depend_on_the_process_count(labelled, kw):
    one = _global(labelled, 1, 7, global_batch=8, per_class=2, **kw)
    for processes in (2, 4):
        _same(_global(labelled, processes, 7, global_batch=8, per_class=2, **kw), one)


def test_workers_do_not_change_the_stream(labelled):
    # One process: the process split comes before the workers and is tested above without them; each worker
    # process costs an interpreter start-up.
    _same(_global(labelled, 1, 7, global_batch=8, per_class=2, worker_count=2),
          _global(labelled, 1, 7, global_batch=8, per_class=2))


@pytest.mark.parametrize("processes,resumed,worker_count,kw", [
    (2, 2, 0, {}), (1, 4, 0, {}), (4, 1, 2, {}), (2, 1, 0, VIEWS)], ids=["same", "1to4", "4to1_workers", "two_view"])
def test_start_example_continues_the_stream(labelled, processes, resumed, worker_count, kw):
    k, n = 3, 4  # the resumed batches cross the epoch boundary (5 batches per epoch)
    whole = _global(labelled, processes, k + n, global_batch=8, per_class=2, **kw)
    _same(_global(labelled, resumed, n, global_batch=8, per_class=2, start_example=k * 8, worker_count=worker_count,
                  **kw), whole[k:])
    with pytest.raises(ValueError, match="multiple of the global batch 8"):
        _global(labelled, 2, 1, global_batch=8, per_class=2, start_example=4)


@pytest.mark.parametrize("value,match", [(1, "0 .uniform. or an int >= 2"), (-2, "0 .uniform."),
                                         (3, "multiple of data.samples_per_class")])
def test_config_field_is_validated(cache_dir, value, match):
    from runs import tiny_config
    from wpce_jax.config_validation import validate_config

    with pytest.raises(ValueError, match=match):
        validate_config(tiny_config(cache_dir, **{"data.samples_per_class": value}))  # batch_size 32
    validate_config(tiny_config(cache_dir, **{"data.samples_per_class": 4}))
