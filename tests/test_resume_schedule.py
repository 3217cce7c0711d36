"""The learning-rate schedule is part of the run: a resumed run keeps the warm-up and horizon planned when it
started, whatever its length or warm-up says today; longer runs go on at the final rate, shorter ones stop early on
the same curve, and the rate never jumps at a resume."""
import json
import math
import os
import shutil

import numpy as np
import pytest

from wpce_jax import run_record, train
from wpce_jax.checkpoint import config_to_json
from wpce_jax.cli import load_config_file
from wpce_jax.data import run_data
from wpce_jax.optimizer import learning_rate_schedule
from runs import ROOT, tiny_config


def reference_lr(count, init, peak, end, warmup, horizon):
    """float64: the learning rate of update `count` (0-based) of a linear warm-up then cosine to `horizon`."""
    if count < warmup:
        return init + (peak - init) * count / warmup
    t, span = min(count, horizon) - warmup, horizon - warmup
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * t / span))


def b16(epochs, warmup_epochs=1, num_examples=10_000_000):
    """The B/16 config resolved for a CC12M-sized set (2,441 steps per epoch at batch 4096)."""
    config = load_config_file(os.path.join(ROOT, "configs", "vitb16_cc12m.py"))
    config.epochs, config.warmup_epochs = epochs, warmup_epochs
    return run_data.with_schedule(config, num_examples)


def rates(config, counts):
    schedule = learning_rate_schedule(config)
    return np.array([float(schedule(c)) for c in counts])


def reference(config, counts, warmup, horizon):
    o = config.optim
    return np.array([reference_lr(c, o.init_lr, o.lr, o.end_lr, warmup, horizon) for c in counts])


# float32 schedule arithmetic against float64: relative rounding ~1e-7 of the peak.
RTOL = 1e-5


def test_extending_b16_from_35_to_40_epochs_keeps_the_35_epoch_schedule():
    planned, extended = b16(35), b16(40)
    per_epoch = 10_000_000 // 4096
    resume = planned.total_steps
    assert (resume, planned.optim.warmup_steps, planned.optim.schedule_steps) == (35 * per_epoch, per_epoch,
                                                                                 35 * per_epoch)
    kept, lines = run_record.keep_schedule(config_to_json(planned), extended)
    assert (kept.total_steps, kept.optim.schedule_steps, kept.optim.warmup_steps) == (40 * per_epoch, resume,
                                                                                     per_epoch)
    assert lines == [f"total_steps {resume:,} -> {40 * per_epoch:,}: the schedule keeps its planned horizon of "
                     f"{resume:,} steps (warm-up {per_epoch:,}); steps {resume + 1:,}-{40 * per_epoch:,} run at the "
                     f"final learning rate 1e-05"]
    # The step after the resume (update count `resume`): the 35-epoch plan's final rate, not a re-planned one.
    counts = [0, per_epoch // 2, per_epoch, 10 * per_epoch, resume - 1, resume, resume + 1, 40 * per_epoch - 1]
    want = reference(planned, counts, per_epoch, resume)
    np.testing.assert_allclose(rates(kept, counts), want, rtol=RTOL)
    np.testing.assert_allclose(rates(planned, counts), want, rtol=RTOL)
    assert want[counts.index(resume)] == pytest.approx(1e-5, rel=1e-12)
    # What the re-planned schedule did: 3.0e-5 at the resume step (the rate jumped up from 1.0e-5).
    replanned = reference(extended, [resume], per_epoch, 40 * per_epoch)[0]
    assert replanned == pytest.approx(2.97e-5, rel=1e-2)
    assert rates(extended, [resume])[0] == pytest.approx(replanned, rel=RTOL)
    # The run may resume with the longer length: the changed fields are allowed, each with its line.
    assert run_record.check_resume(config_to_json(planned), kept, resume) == [
        "epochs: 35.0 -> 40.0", f"total_steps: {resume} -> {40 * per_epoch}"]


def test_changed_warmup_and_shorter_run_keep_the_planned_curve():
    planned, changed = b16(35), b16(30, warmup_epochs=2)
    per_epoch = planned.optim.warmup_steps
    kept, lines = run_record.keep_schedule(config_to_json(planned), changed)
    assert (kept.optim.warmup_steps, kept.optim.schedule_steps, kept.total_steps) == (per_epoch, 35 * per_epoch,
                                                                                     30 * per_epoch)
    stop_rate = reference(planned, [30 * per_epoch - 1], per_epoch, 35 * per_epoch)[0]
    plan = f"the schedule keeps its planned horizon of {35 * per_epoch:,} steps (warm-up {per_epoch:,})"
    assert lines == [f"optim.warmup_steps {per_epoch:,} -> {2 * per_epoch:,}: {plan}, set when the run started",
                     f"total_steps {35 * per_epoch:,} -> {30 * per_epoch:,}: {plan}, not compressed; the run stops "
                     f"at step {30 * per_epoch:,} at learning rate {stop_rate:.3g}"]
    counts = list(range(0, 30 * per_epoch, 997))
    np.testing.assert_allclose(rates(kept, counts), reference(planned, counts, per_epoch, 35 * per_epoch),
                               rtol=RTOL)
    assert run_record.check_resume(config_to_json(planned), kept, 100) == [
        "epochs: 35.0 -> 30.0", f"total_steps: {35 * per_epoch} -> {30 * per_epoch}", "warmup_epochs: 1.0 -> 2.0"]


def test_a_checkpoint_older_than_schedule_steps_planned_over_its_total_steps(cache_dir):
    saved = config_to_json(run_data.with_schedule(tiny_config(cache_dir), 0))
    del saved["optim"]["schedule_steps"]
    kept, lines = run_record.keep_schedule(saved, run_data.with_schedule(tiny_config(cache_dir, total_steps=40), 0))
    assert (kept.optim.schedule_steps, kept.total_steps) == (30, 40) and lines[0].startswith("total_steps 30 -> 40")
    # An explicit horizon on the command line of a resumed run is overridden, with a line.
    kept, lines = run_record.keep_schedule(
        saved, run_data.with_schedule(tiny_config(cache_dir, **{"optim.schedule_steps": 50}), 0))
    assert kept.optim.schedule_steps == 30 and lines == [
        "optim.schedule_steps 30 -> 50: the schedule keeps its planned horizon of 30 steps (warm-up 5), set when "
        "the run started"]


def logged(workdir, key):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r[key] for r in map(json.loads, f) if key in r}


def test_shortened_then_extended_run_follows_the_planned_schedule(tmp_path, cache_dir, digits_run, capsys):
    """digits_run: 30 steps, warm-up 5, checkpoints at 10, 20, 30. Resumed from step 10 with total_steps 25, then
    from that run's step-25 checkpoint with total_steps 36."""
    workdir = str(tmp_path / "run")
    shutil.copytree(digits_run, workdir)
    for step in ("20", "30"):
        shutil.rmtree(os.path.join(workdir, "checkpoints", step))
    no_eval = {"eval.zeroshot": "", "eval.retrieval": "", "eval.image_retrieval": ""}  # evaluation is not tested
    want_lr, want_loss = logged(digits_run, "train/learning_rate"), logged(digits_run, "train/loss")
    config = tiny_config(cache_dir)
    o = config.optim
    formula = {s: reference_lr(s - 1, o.init_lr, o.lr, o.end_lr, 5, 30) for s in range(1, 37)}  # step s: update s-1

    train.train_and_evaluate(tiny_config(cache_dir, total_steps=25, **no_eval), workdir)
    out = capsys.readouterr().out
    assert (f"total_steps 30 -> 25: the schedule keeps its planned horizon of 30 steps (warm-up 5), not compressed; "
            f"the run stops at step 25 at learning rate {formula[25]:.3g}") in out
    lr, loss = logged(workdir, "train/learning_rate"), logged(workdir, "train/loss")
    assert sorted(lr) == list(range(1, 26))
    assert {s: lr[s] for s in range(1, 26)} == {s: want_lr[s] for s in range(1, 26)}  # bit-identical
    assert {s: loss[s] for s in range(1, 26)} == {s: want_loss[s] for s in range(1, 26)}

    train.train_and_evaluate(tiny_config(cache_dir, total_steps=36, **no_eval), workdir)
    out = capsys.readouterr().out
    assert "resumed from the step-25 checkpoint" in out
    assert ("total_steps 30 -> 36: the schedule keeps its planned horizon of 30 steps (warm-up 5); steps 31-36 run at "
            "the final learning rate 1e-05") in out
    lr, loss = logged(workdir, "train/learning_rate"), logged(workdir, "train/loss")
    assert sorted(lr) == list(range(1, 37))
    assert {s: lr[s] for s in range(1, 31)} == want_lr  # the uninterrupted run's rates, steps 26-30 recomputed
    assert {s: loss[s] for s in range(1, 31)} == want_loss
    np.testing.assert_allclose([lr[s] for s in range(1, 37)], [formula[s] for s in range(1, 37)], rtol=RTOL)
    np.testing.assert_allclose([lr[s] for s in range(31, 37)], o.end_lr, rtol=1e-7)  # float32 of 1e-5
    assert all(lr[s + 1] <= lr[s] for s in range(6, 36))  # after the warm-up (steps 1-6): no jump at either resume
    record = json.load(open(os.path.join(workdir, "config.json")))["config"]
    assert (record["total_steps"], record["optim"]["schedule_steps"], record["optim"]["warmup_steps"]) == (36, 30, 5)
