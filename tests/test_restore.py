"""Resume's restore (wpce_jax/restore.py) with injected faults: a damaged checkpoint is moved aside and the one
before used; a checkpoint that does not fit the model stops with exit 2 naming the arrays and config fields; an
I/O or memory error is retried, then raised; nothing is moved aside for a mismatch, a passing fault or an unknown
error. Two processes that see different faults take one decision (one subprocess pair, run last)."""
import json
import os
import re
import shutil
import sys

import jax
import numpy as np
import pytest

from wpce_jax import restore, rng, run_record
from wpce_jax.checkpoint import Checkpointer, IncompatibleCheckpointError, abstract_like
from wpce_jax.errors import UserError
from wpce_jax.models.model_config import make_model
from wpce_jax.optimizer import make_optimizer
from wpce_jax.train_step import initial_state
from runs import cpu_env, run_two_processes, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(cache_dir, **overrides):
    # The tokenizer's fields that run_data.resolve would fill in: the model is built without reading the data.
    config = tiny_config(cache_dir, **{"model.text.vocab_size": 64, "model.text.eot_id": 63, **overrides})
    config.unlock()
    return config


def _target(config):
    model, tx = make_model(config), make_optimizer(config)
    abstract = jax.eval_shape(lambda: initial_state(model, tx, config, rng.root_key(config.seed)))
    return abstract_like(abstract, jax.sharding.SingleDeviceSharding(jax.devices()[0]))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, cache_dir):
    """A workdir holding step-10 and step-20 checkpoints of the tiny digits model (different values), the config
    they were written with, and the step-20 checkpoint's first parameter value."""
    config = _config(cache_dir)
    target = _target(config)
    workdir = tmp_path_factory.mktemp("saved")
    checkpointer = Checkpointer(workdir, max_to_keep=5, async_save=False)
    values = np.random.default_rng(0)
    for step in (10, 20):  # random values (no compiled init: seconds saved), placed as the target says
        state = jax.tree.map(lambda s: jax.device_put(values.integers(0, 9, s.shape).astype(s.dtype), s.sharding),
                             target)
        checkpointer.save(step, state, step * 32, config)
    checkpointer.close()
    return workdir, config, _first_param(state)


@pytest.fixture
def workdir(saved, tmp_path):
    shutil.copytree(saved[0], tmp_path / "run")
    return tmp_path / "run"


def _resume(workdir, config, target=None, **kwargs):
    checkpointer = Checkpointer(workdir, max_to_keep=5)
    try:
        return restore.resume(checkpointer, config, _target(config) if target is None else target, **kwargs)
    finally:
        checkpointer.close()


def _listing(workdir):
    return sorted(os.listdir(workdir / "checkpoints"))


def _first_param(state):
    return float(np.asarray(jax.tree.leaves(state.params)[0]).ravel()[0])


def test_a_good_checkpoint_restores_the_newest_step(workdir, saved):
    step, state, examples = _resume(workdir, saved[1])
    assert (step, examples) == (20, 640) and _first_param(state) == saved[2]
    assert _listing(workdir) == ["10", "20"]


def test_the_training_set_may_move_but_not_change_size(workdir, saved, capsys):
    """The run plan saved with a checkpoint: another number of training examples (another data order) stops the
    resume before anything is read or moved; another directory with the same count is reported and resumed; a
    checkpoint without a plan (written before plans were saved) resumes."""
    config = saved[1]
    plan = {"train_dir": "/data/a", "num_examples": 1797, "steps_per_epoch": None, "total_steps": 30,
            "warmup_steps": 3, "schedule_steps": 30, "tokenizer": "sentencepiece", "tokenizer_path": "t.model",
            "vocab_size": 64, "eot_id": 63}
    assert _resume(workdir, config, plan=plan)[0] == 20  # the saved checkpoints have no plan
    step, state, _ = _resume(workdir, config)
    checkpointer = Checkpointer(workdir, max_to_keep=5, async_save=False)
    checkpointer.save(30, state, 960, config, plan=plan)
    checkpointer.close()
    listing = _listing(workdir)
    with pytest.raises(run_record.ConfigChangedError) as e:
        _resume(workdir, config, plan={**plan, "num_examples": 1800})
    assert "trained on 1,797 training examples (/data/a); the data now has 1,800" in str(e.value)
    assert _listing(workdir) == listing
    capsys.readouterr()
    assert _resume(workdir, config, plan={**plan, "train_dir": "/data/b"})[0] == 30
    assert "changed since the step-30 checkpoint: plan.train_dir: '/data/a' -> '/data/b'" in capsys.readouterr().out


def _drop_config_field(workdir, step, dotted):
    """Rewrites a checkpoint's config as an older version of the code wrote it: without `dotted`."""
    path = workdir / "checkpoints" / str(step) / "config" / "metadata"
    record = json.loads(path.read_text())
    *parents, leaf = dotted.split(".")
    node = record
    for p in parents:
        node = node[p]
    del node[leaf]
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("field, value, first_path, saved_shape, expected_shape", [
    # The user's case: a run whose saved config lacks the field (the code added it later), restarted with another
    # value than the one it trained with; the field's default (True) gave the weight projections a bias.
    ("model.weight_bias", False, "params/image_head/weights/bias", "(1,)", "(absent)"),
    ("model.embed_dim", 24, "params/image_head/", "16)", "24)"),
])
def test_a_model_that_does_not_fit_stops_naming_arrays_and_fields(workdir, saved, field, value, first_path,
                                                                  saved_shape, expected_shape):
    for step in (10, 20):
        _drop_config_field(workdir, step, field)
    config = saved[1].copy_and_resolve_references()
    node = config
    for p in field.split(".")[:-1]:
        node = node[p]
    node[field.split(".")[-1]] = value
    metadata_before = {p: p.read_bytes() for p in (workdir / "checkpoints").rglob("*") if p.is_file()}
    with pytest.raises(restore.RestoreMismatchError) as raised:
        _resume(workdir, config)
    message = str(raised.value)
    assert isinstance(raised.value, UserError) and "step-20 checkpoint does not fit" in message
    lines = message.splitlines()
    paths = [line for line in lines if line.startswith("  params/")]
    assert 1 <= len(paths) <= 5, message
    path, saved_as, expected_as = re.fullmatch(r"  (\S+): saved (.+), expected (.+)", paths[0]).groups()
    assert path.startswith(first_path) and saved_as.endswith(saved_shape) and expected_as.endswith(expected_shape)
    assert f"  {field}: (absent in the checkpoint) -> {value!r}" in lines, message
    if field == "model.weight_bias":
        assert "--config.model.weight_bias=True" in message
    # Nothing moved, nothing rewritten.
    assert _listing(workdir) == ["10", "20"]
    assert {p: p.read_bytes() for p in (workdir / "checkpoints").rglob("*") if p.is_file()} == metadata_before


def test_the_librarys_own_structure_error_is_a_mismatch(workdir, saved, monkeypatch):
    def mismatched(self, step, target):
        raise ValueError("User-provided restore item and on-disk value metadata tree structures do not match: "
                         "params.extra: Source: ShapeDtypeStruct(shape=(5,)) Target: MISSING")
    monkeypatch.setattr(Checkpointer, "restore", mismatched)
    with pytest.raises(restore.RestoreMismatchError, match=r"step-20 checkpoint does not fit(.|\n)*params.extra"):
        _resume(workdir, saved[1])
    assert _listing(workdir) == ["10", "20"]


def _failing(monkeypatch, errors):
    """Checkpointer.restore raising `errors` in turn, then restoring; returns the list of steps it was asked for."""
    original, asked = Checkpointer.restore, []

    def flaky(self, step, target):
        asked.append(step)
        if errors:
            raise errors.pop(0)
        return original(self, step, target)
    monkeypatch.setattr(Checkpointer, "restore", flaky)
    return asked


def test_a_passing_fault_is_retried_and_the_same_step_restored(workdir, saved, monkeypatch, capsys):
    oom = RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2GiB")  # XLA's wording
    asked = _failing(monkeypatch, [OSError("Connection reset by peer"), oom])
    slept = []
    step, _, examples = _resume(workdir, saved[1], delays=(0.01, 0.02, 0.03), sleep=slept.append)
    assert (step, examples) == (20, 640) and asked == [20, 20, 20] and slept == [0.01, 0.02]
    assert _listing(workdir) == ["10", "20"]
    assert "trying again in 0.01 s (try 2 of 4)" in capsys.readouterr().out


def test_a_fault_that_persists_stops_with_it_and_moves_nothing(workdir, saved, monkeypatch):
    asked = _failing(monkeypatch, [TimeoutError("gs:// read timed out")] * 10)
    slept = []
    with pytest.raises(TimeoutError, match="timed out"):
        _resume(workdir, saved[1], delays=(0, 0), sleep=slept.append)
    assert asked == [20, 20, 20] and slept == [0, 0] and _listing(workdir) == ["10", "20"]


def test_an_unknown_error_stops_and_moves_nothing(workdir, saved, monkeypatch):
    _failing(monkeypatch, [RuntimeError("a bug in the restore target")])
    with pytest.raises(RuntimeError, match="a bug"):
        _resume(workdir, saved[1], delays=())
    assert _listing(workdir) == ["10", "20"]


def test_an_older_versions_checkpoint_is_refused_not_moved(workdir, saved):
    step_dir = workdir / "checkpoints" / "20"
    (step_dir / "position").rename(step_dir / "data")  # the old data-iterator item, finished and complete
    with pytest.raises(IncompatibleCheckpointError, match="older version of wpce_jax"):
        _resume(workdir, saved[1], delays=())
    assert _listing(workdir) == ["10", "20"]


def _flip_a_byte(directory):
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.parent.name == "d"):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["no commit marker", "checksum", "metadata json"])
def test_a_damaged_checkpoint_is_moved_aside_and_the_one_before_used(workdir, saved, damage, capsys):
    step_dir = workdir / "checkpoints" / "20"
    if damage == "no commit marker":  # a save that never finished (on gs:// Orbax's own listing hides these)
        (step_dir / "commit_success.txt").unlink()
    elif damage == "checksum":
        _flip_a_byte(step_dir / "state")
    else:
        (step_dir / "state" / "_METADATA").write_text('{"tree_metadata": {"par')
    step, _, examples = _resume(workdir, saved[1], delays=())
    assert (step, examples) == (10, 320) and _listing(workdir) == ["10", "20.damaged"]
    out = capsys.readouterr().out
    assert "skipping the step-20 checkpoint: it is damaged" in out and "20.damaged" in out


@pytest.mark.parametrize("error, code", [
    (OSError("Input/output error"), restore.TRANSIENT), (TimeoutError(), restore.TRANSIENT),
    (ValueError("UNAVAILABLE: gcs: 503"), restore.TRANSIENT), (MemoryError(), restore.TRANSIENT),
    (FileNotFoundError("d/abc"), restore.DAMAGED), (json.JSONDecodeError("x", "{", 1), restore.DAMAGED),
    (ValueError("DATA_LOSS: CRC-32C checksum verification failed"), restore.DAMAGED),
    (ValueError("Requested shape: (6,) is not compatible with the stored shape: (5,)"), restore.MISMATCH),
    (ValueError("config field seed must be an int"), restore.FAULT), (KeyError("params"), restore.FAULT),
    (run_record.ConfigChangedError("data.path: 'gs://UNAVAILABLE' -> 'x'"), restore.FAULT),
])
def test_classify(error, code):
    assert restore.classify(error) == code


def test_two_processes_that_see_different_faults_take_one_decision(tmp_path):
    """Process 1 alone sees a passing fault (both retry, both restore step 20), then alone sees damage (both move
    step 20 aside and restore step 10); process 0 alone hits an unknown error (both stop, nothing moved)."""
    script = os.path.join(ROOT, "tests", "restore_two_processes.py")
    env = {**cpu_env(1), "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    outs = run_two_processes(lambda port, i: [sys.executable, script, str(port), str(i), str(tmp_path)], env, 300)
    results = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    assert results[0]["transient"] == results[1]["transient"] == [20, 20.0]
    assert results[0]["damaged"] == results[1]["damaged"] == [10, 10.0]
    assert results[0]["unknown"] == "RuntimeError: injected on process 0"
    assert results[1]["unknown"].startswith("RestoreError: process(es) [0] could not restore the step-10")
    assert results[0]["listing"] == results[1]["listing"] == ["10", "20.damaged"]
