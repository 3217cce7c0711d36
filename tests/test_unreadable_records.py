"""Training records that do not read (a damaged ArrayRecord chunk) or decode (a broken JPEG or header): replaced by
deterministic stand-ins, counted, limited; a shard that does not open stops the pipeline at start-up."""
import json
import os
import shutil

import numpy as np
import pytest

from wpce_jax import train
from wpce_jax.data import image_ops, pipeline, records, run_data, testing, tokenizers, unreadable
from wpce_jax.data.train_tokenizer import train_sentencepiece
from wpce_jax.errors import UserError
from runs import losses, tiny_config, train_here

N, SIZE, SEED, B = 40, 16, 3, 8  # 5 batches of B per epoch


def locate(data_dir: str, index: int) -> tuple[str, int]:
    """(shard path, index in it) of dataset record `index`."""
    manifest = records.read_manifest(data_dir)
    paths = records.shard_paths(data_dir, manifest)
    return unreadable.ShardIndex(paths, [s["num_examples"] for s in manifest["shards"]]).locate(index)


def read_record(data_dir: str, index: int) -> bytes:
    path, position = locate(data_dir, index)
    return records.read_records(path, position, position + 1)[0]


def corrupt_record(data_dir: str, index: int) -> tuple[str, int]:
    """Flips 64 bytes inside the chunk of dataset record `index`. Returns the shard's path and the record's index in
    it."""
    path, position = locate(data_dir, index)
    testing.damage_record(path, position)
    return path, position


def _write(directory, images: dict[int, bytes] = {}, raw: dict[int, bytes] = {}) -> str:  # noqa: B006
    """N records labelled with their index (so a batch shows which records it holds), 2 shards; `images` replaces
    some records' JPEGs, `raw` some whole records."""
    recs = []
    for i in range(N):
        jpeg = images.get(i, testing.encode(testing.digit_image(i, 24), quality=90))
        recs.append(raw.get(i, records.encode_record(jpeg, f"digit {i}", key=str(i), source="t", label=i)))
    records.write_dataset(recs, str(directory), 2, inputs=["t"])
    return str(directory)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("unreadable")
    model = train_sentencepiece([f"digit {i}" for i in range(N)], str(d / "spm"), vocab_size=20)
    return _write(d / "clean"), tokenizers.get_tokenizer("sentencepiece", model, 8)


def _batches(data_dir, tok, n, **kw):
    args = dict(tokenizer=tok, image_size=SIZE, batch_size=B, seed=SEED, read_threads=2)
    it = iter(pipeline.make_train_dataset(data_dir, pipeline.TrainDataOptions(**{**args, **kw})))
    out = [next(it) for _ in range(n)]
    if hasattr(it, "close"):
        it.close()
    return out


def _assert_same(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _stand_in_crop(clean_dir, g):
    """What position g holds when its record is unreadable, computed from the clean records: the first stand-in's
    record, cropped with g's augmentation."""
    j = unreadable.stand_in(SEED, g, 1, N)
    record = records.decode_record(read_record(clean_dir, j))
    return j, image_ops.train_crop(record["image"], SIZE, pipeline.augment_rng(SEED, g))


def test_damaged_chunk_is_replaced_by_a_deterministic_stand_in(data, tmp_path, capfd):
    clean_dir, tok = data
    bad_dir = str(tmp_path / "bad")
    shutil.copytree(clean_dir, bad_dir)
    order = pipeline.ShuffledOrder(N, B, seed=SEED)
    r = order[B + 2]  # row 2 of global batch 1, and once in each later epoch
    shard, index_in_shard = corrupt_record(bad_dir, r)
    n = 2 * (N // B) + 1  # into the third epoch
    clean = _batches(clean_dir, tok, n)
    bad = _batches(bad_dir, tok, n)
    positions = [g for g in range(n * B) if order[g] == r]
    assert len(positions) >= 2  # once in each epoch
    for k, (c, b) in enumerate(zip(clean, bad)):
        assert b["image"].shape == (B, SIZE, SIZE, 3)  # full batches
        replaced = [g - k * B for g in positions if k * B <= g < (k + 1) * B]
        np.testing.assert_array_equal(np.flatnonzero(b["skipped"]), replaced)
        keep = np.setdiff1d(np.arange(B), replaced)
        for key in ("image", "tokens", "label"):
            np.testing.assert_array_equal(b[key][keep], c[key][keep])
        for row in replaced:
            j, image = _stand_in_crop(clean_dir, k * B + row)
            assert b["label"][row] == j != r
            np.testing.assert_array_equal(b["image"][row], image)
    # One line for the damaged file, however often its record comes round.
    err = capfd.readouterr().err
    assert err.count("unreadable training record") == 1
    assert f"record {index_in_shard} of {shard} (RuntimeError: Corrupted Riegeli/records file: chunk data hash " \
           f"mismatch" in err
    # The same batches with worker processes, with two processes (each its slice), and resumed after two batches.
    _assert_same(_batches(bad_dir, tok, n, worker_count=2), bad)
    halves = [_batches(bad_dir, tok, n, batch_size=B // 2, process_index=p, process_count=2) for p in (0, 1)]
    _assert_same([{k: np.concatenate([h0[k], h1[k]]) for k in h0} for h0, h1 in zip(*halves)], bad)
    _assert_same(_batches(bad_dir, tok, n - 2, start_example=2 * B), bad[2:])


@pytest.mark.parametrize("decoder", image_ops.DECODERS)
def test_broken_image_or_header_is_replaced(data, tmp_path, decoder):
    clean_dir, tok = data
    good = read_record(clean_dir, 5)
    broken = {4: b"\xff\xd8\xff\xe0" + bytes(200),  # a JPEG start, then nothing decodable
              7: records.decode_record(good)["image"][:60]}  # cut inside the JPEG's headers
    bad_dir = _write(tmp_path / "bad", images=broken, raw={9: b"XXXX" + good[4:]})  # wrong magic
    order = pipeline.ShuffledOrder(N, B, seed=SEED)
    batches = _batches(bad_dir, tok, N // B, decoder=decoder)
    flags = np.concatenate([b["skipped"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    want = np.array([order[g] in (4, 7, 9) for g in range(N)])
    np.testing.assert_array_equal(flags, want)
    assert not set(labels[want].tolist()) & {4, 7, 9}
    np.testing.assert_array_equal(labels[~want], [order[g] for g in range(N) if not want[g]])


def test_faults_in_the_code_are_not_swallowed(data, monkeypatch):
    clean_dir, tok = data

    def crop(*args, **kw):
        raise RuntimeError("a bug")  # what the reader raises for a damaged chunk, but not from the reader

    monkeypatch.setattr(image_ops, "train_crop", crop)
    with pytest.raises(RuntimeError, match="a bug"):
        _batches(clean_dir, tok, 1, read_threads=1)


def test_mostly_unreadable_data_stops(data, tmp_path):
    _, tok = data
    bad_dir = _write(tmp_path / "bad", images={i: b"not a jpeg" for i in range(N)})
    with pytest.raises(unreadable.UnreadableDataError, match=f"{unreadable.MAX_ATTEMPTS} records in a row"):
        _batches(bad_dir, tok, 1, read_threads=1)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_shard_that_does_not_open_stops_at_start_up_naming_it(data, tmp_path, damage):
    clean_dir, tok = data
    bad_dir = str(tmp_path / "bad")
    shutil.copytree(clean_dir, bad_dir)
    shard = os.path.join(bad_dir, records.shard_name(1, 2))
    with open(shard, "rb") as f:
        content = f.read()
    content = {"garbage": os.urandom(len(content)), "truncated": content[:len(content) // 2], "empty": b""}[damage]
    with open(shard, "wb") as f:
        f.write(content)
    with pytest.raises(records.UnreadableShardError, match=f"{shard}: not a readable ArrayRecord file") as e:
        pipeline.make_train_dataset(bad_dir, pipeline.TrainDataOptions(tokenizer=tok, image_size=SIZE, batch_size=B,
                                                                       seed=SEED))
    assert isinstance(e.value, UserError) and isinstance(e.value, OSError)


def test_stand_ins_are_uniform_and_keyed_by_seed_position_and_attempt():
    draws = np.array([unreadable.stand_in(0, g, 1, 10) for g in range(4000)])
    counts = np.bincount(draws, minlength=10)
    chi2 = ((counts - 400) ** 2 / 400).sum()
    assert chi2 < 27.9  # chi-square, 9 degrees of freedom: p = 0.001
    assert draws.max() < 10
    again = [unreadable.stand_in(0, g, 1, 10) for g in range(100)]
    assert again == draws[:100].tolist()
    for other in ([unreadable.stand_in(1, g, 1, 10) for g in range(100)],
                  [unreadable.stand_in(0, g, 2, 10) for g in range(100)]):
        assert np.mean(np.array(other) == draws[:100]) < 0.3  # ~0.1 for independent draws


def test_fraction_limit_counts_the_first_examples_as_min_examples():
    floor = unreadable.MIN_EXAMPLES
    unreadable.check_fraction(int(0.01 * floor), 32, 0.01)  # one bad record in the first batch does not stop a run
    with pytest.raises(unreadable.TooManySkippedError, match=r"101 of the 640 .*data.max_skipped_fraction = 0.01"):
        unreadable.check_fraction(int(0.01 * floor) + 1, 640, 0.01)
    unreadable.check_fraction(300, 3 * floor, 0.01)
    with pytest.raises(unreadable.TooManySkippedError):
        unreadable.check_fraction(301, 3 * floor, 0.01)
    with pytest.raises(UserError):
        unreadable.check_fraction(1, 32, 0.0)
    unreadable.check_fraction(0, 32, 0.0)


# ------------------------------------------------------------------ the trainer on damaged digits

# Global positions of the damaged records in the tiny runs' stream (batch 32): rows of steps 3 and 9.
DAMAGED = (2 * 32 + 5, 8 * 32 + 7)
NO_EVAL = {"eval.zeroshot": "", "eval.retrieval": "", "eval.image_retrieval": ""}


@pytest.fixture
def damaged_cache(cache_dir, tmp_path):
    """A copy of the built digits (data.cache_dir) in which the training records at DAMAGED do not read; and the
    (shard, index in it) of the first."""
    config = tiny_config(cache_dir)
    built = os.path.dirname(run_data.prepare_digits(config).train_dir)
    copy = tmp_path / "cache"
    shutil.copytree(built, copy / os.path.basename(built))
    train_dir = str(copy / os.path.basename(built) / "train")
    order = pipeline.ShuffledOrder(pipeline.dataset_size(train_dir), config.batch_size, seed=config.seed)
    return str(copy), [corrupt_record(train_dir, order[g]) for g in DAMAGED][0]


def _skipped(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["train/skipped_examples"] for r in rows if "train/skipped_examples" in r}


def test_resume_after_sigkill_on_damaged_data_is_exact(damaged_cache, tmp_path, capfd):
    """The uninterrupted run and a resumed one, both in this process. The resumed one starts from the uninterrupted
    run's workdir cut back to what a kill -9 after the step-6 checkpoint leaves: checkpoints up to 6, metrics a little
    further (a real kill -9 of the command line: tests/test_train.py)."""
    cache, (shard, index) = damaged_cache
    reference, workdir = str(tmp_path / "reference"), str(tmp_path / "run")
    steps = {"total_steps": 12, "checkpoint_every_steps": 6, **NO_EVAL}
    train_here(reference, cache, **steps)
    out, err = capfd.readouterr()
    # One line per damaged file (the second damaged record may be in the other).
    assert err.count(f" of {shard} (") == 1
    assert f"unreadable training record {index} of {shard} (RuntimeError: Corrupted Riegeli" in err
    shutil.copytree(reference, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "12"))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        kept = [line for line in f if json.loads(line).get("step", 0) <= 8]  # steps 7-8 logged, not checkpointed
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(kept)
    assert max(losses(workdir)) == 8 and _skipped(workdir)[8] == 1
    # Resumed with two worker processes: the flags come from them; the count before step 6 from the checkpoint.
    train_here(workdir, cache, **steps, **{"data.worker_count": 2})
    resumed = capfd.readouterr().out
    assert "resumed from the step-6 checkpoint" in resumed
    want = {step: 0 if step < 3 else 1 if step < 9 else 2 for step in range(1, 13)}
    assert _skipped(reference) == _skipped(workdir) == want
    assert losses(workdir) == losses(reference)  # bit-identical, every step
    for stdout in (out, resumed):
        assert "2 of the 384 training examples were stand-ins for records that did not read or decode" in stdout


def test_too_many_stand_ins_stop_the_run(damaged_cache, tmp_path):
    cache, _ = damaged_cache
    workdir = str(tmp_path / "run")
    config = tiny_config(cache, total_steps=5, **NO_EVAL, **{"data.max_skipped_fraction": 0.0})
    with pytest.raises(unreadable.TooManySkippedError, match=r"1 of the 96 training examples so far could not be "
                                                             r"read or decoded .*data.max_skipped_fraction = 0;"):
        train.train_and_evaluate(config, workdir)
    assert _skipped(workdir) == {1: 0, 2: 0, 3: 1}  # on record up to the step that stopped it


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_max_skipped_fraction_must_be_a_fraction(cache_dir, value):
    from wpce_jax.config_validation import validate_config

    with pytest.raises(ValueError, match="config field data.max_skipped_fraction must be"):
        validate_config(tiny_config(cache_dir, **{"data.max_skipped_fraction": value}))
