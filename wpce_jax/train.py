"""The training loop: state, steps, evaluation, checkpoints, metrics, resume and preemption.

Exact resume: a step's randomness is a function of (seed, step) alone (RFF frequencies, wpce_jax/rng.py), the data
stream is addressed by global example index (the checkpoint holds how many were consumed), and the parameters and
optimiser state are in the checkpoint; so a run restarted from its step-k checkpoint, with any number of data
workers or processes, takes the same steps k+1, k+2, ... as one that never stopped, and metrics.jsonl is cut back
to step k before it goes on. A resumed run must have the checkpoint's config in every field that changes the
computation (run_record.py). A damaged checkpoint is moved aside and the one before it is used; one that does not
fit the model stops the run (restore.py).

SIGTERM (preemption) or SIGINT (Ctrl-C) finishes the current step, writes a checkpoint (before any evaluation that
was due), waits for it to be complete, says so and returns; signals that arrive meanwhile are ignored.
"""
import contextlib
import dataclasses
import itertools
import os
import signal
import sys
import time
from typing import Any, Iterator

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from wpce_jax import config_fields, finetune, mfu, objectives, platform, rng, run_record
from wpce_jax.checkpoint import Checkpointer, abstract_like, config_to_json
from wpce_jax.config_validation import ModeSettings, validate
from wpce_jax.data import run_data, unreadable
from wpce_jax.data.image_ops import ViewAugment
from wpce_jax.data.pipeline import TrainDataOptions, make_train_dataset
from wpce_jax.errors import UserError, WrongPathError
from wpce_jax.evaluate.evaluator import Evaluator
from wpce_jax.metric_writer import MetricWriter, write_eval_json
from wpce_jax.models.model_config import make_model
from wpce_jax.optimizer import make_optimizer
from wpce_jax.paths import is_remote, resolved
from wpce_jax.parallel import global_batch, make_mesh, per_process_batch, replicated, state_shardings, to_host
from wpce_jax.progress import Progress
from wpce_jax.restore import resume
from wpce_jax.train_step import TrainState, initial_state, make_train_step
from wpce_jax.workdir_lock import WorkdirLock


class NonFiniteError(UserError, FloatingPointError):  # its message names the fix (learning rate, clipping, data)
    pass


def _say(text: str) -> None:
    if jax.process_index() == 0:
        print(text, flush=True)


class StopSignals:
    """When to stop for SIGTERM (preemption) or SIGINT (Ctrl-C), agreed by every process.

    One process: the handler sets a flag that the loop reads after each step (a handler must not do work). Several:
    each host may get the notice at a different step, and a host that saves while another steps would deadlock their
    collectives; JAX's preemption sync manager (it catches SIGTERM itself) picks one step for all, so SIGINT is turned
    into a SIGTERM to this process. The handlers stay until the final checkpoint is complete, so a second signal
    cannot kill the save; the command line enters them for the whole process (`main.py`), so that a late signal
    cannot kill its exit either.
    """

    def __init__(self):
        self.requested = ""  # the first signal's name
        self._multiprocess = jax.process_count() > 1
        self._previous = {}

    def __enter__(self):
        signals = (signal.SIGINT,) if self._multiprocess else (signal.SIGTERM, signal.SIGINT)
        self._previous = {s: signal.signal(s, self._handle) for s in signals}
        return self

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested:
            message = f"{name} again: still stopping (saving a checkpoint); the run exits as soon as it is complete\n"
        else:
            self.requested = name
            message = f"{name}: stopping after the current step; saving a checkpoint first\n"
            if self._multiprocess:
                os.kill(os.getpid(), signal.SIGTERM)
        os.write(2, message.encode())  # print() is not safe inside a signal handler

    def reached(self, step: int) -> bool:
        """Call at every step on every process; True at the step where all should save and stop."""
        if self._multiprocess:
            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    self.requested = self.requested or "SIGTERM"
                    return True
            except RuntimeError:  # the preemption service is disabled: no notice can arrive
                pass
            return False
        return bool(self.requested)

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)

    def ignore_from_now_on(self) -> None:
        """For a process that is about to exit: Python's finalization puts the default disposition (death by the
        signal) back in place of these handlers, but leaves ignored signals ignored; so a second signal arriving
        during the exit cannot turn a clean exit into a kill."""
        for s in self._previous:
            signal.signal(s, signal.SIG_IGN)


@dataclasses.dataclass
class _Skipped:
    """Training examples that were stand-ins for unreadable records (data/unreadable.py): `before` this run started
    (all processes, from the checkpoint) and seen by this process since."""
    before: int = 0
    local: int = 0

    def total(self) -> int:
        """All processes' count (a collective: every process must call it at the same step)."""
        local = self.local
        if jax.process_count() > 1:
            local = int(np.sum(multihost_utils.process_allgather(np.int32(local))))
        return self.before + local


@dataclasses.dataclass
class _Run:
    """Everything the loop works with."""
    config: ConfigDict          # resolved (run_data.resolve)
    plan: run_data.RunPlan
    workdir: epath.Path
    state: TrainState
    batches: Iterator[dict]     # global batches, from the restored position on
    train_step: Any             # compiled: (state, global batch) -> (state, metrics)
    flops_per_step: Any         # per device, from XLA's cost analysis (None when unknown)
    evaluator: Evaluator
    checkpointer: Checkpointer
    writer: MetricWriter
    lock: WorkdirLock
    stop: StopSignals
    start: int                  # the step restored from (0 for a new run)
    skipped: _Skipped           # examples replaced because their records did not read or decode


def _workdir(path) -> epath.Path:
    workdir = resolved(path)
    if jax.process_index() == 0:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WrongPathError(f"--workdir {path}: cannot create it ({e.strerror or e}); pick a writable "
                                 f"directory") from None
        if not is_remote(path) and not os.access(workdir, os.W_OK):
            raise WrongPathError(f"--workdir {path}: not writable; pick a writable directory")
    return workdir


def _planned_schedule(workdir: epath.Path, config: ConfigDict) -> ConfigDict:
    """`config` with the learning-rate schedule this run planned when it started (run_record.keep_schedule): that of
    the newest checkpoint in `workdir` whose config reads (every checkpoint of a run carries the same plan); `config`
    unchanged for a new run. Needed before the optimiser is built, so before the restore."""
    with contextlib.closing(Checkpointer(workdir, config.keep_checkpoints, async_save=False)) as checkpointer:
        for step in reversed(checkpointer.all_steps()):
            try:
                saved = checkpointer.saved_config(step)
            except Exception:  # noqa: BLE001 - restore.resume classifies it (moved aside, or raised)
                continue
            config, lines = run_record.keep_schedule(saved, config)
            for line in lines:
                _say(line)
            return config
    return config


def train_and_evaluate(config: ConfigDict, workdir, stop_signals: "StopSignals | None" = None) -> dict[str, float]:
    """Trains per `config` in `workdir` (local or gs://; resuming from its latest checkpoint). Returns the last
    evaluation. stop_signals: an entered StopSignals that outlives the call (the command line's); by default the
    call installs its own and restores the previous handlers when it returns."""
    given, settings = config, validate(config)
    platform.check_accelerator(config.get("require_accelerator", False))
    workdir = _workdir(workdir)
    is_main = jax.process_index() == 0
    with contextlib.ExitStack() as scope:
        stop = stop_signals or scope.enter_context(StopSignals())
        lock = scope.enter_context(WorkdirLock(workdir, enabled=is_main, log=_say))
        _say(platform.describe())
        data = run_data.resolve(config, workdir, is_main)
        plan = data.plan
        if plan.steps_per_epoch is not None:
            _say(f"{config.epochs:g} epochs of {plan.num_examples:,} examples at batch {config.batch_size:,}: "
                 f"{plan.total_steps:,} steps, {plan.warmup_steps:,} of warm-up")
        config = _planned_schedule(workdir, data.config)
        plan = dataclasses.replace(plan, warmup_steps=config.optim.warmup_steps,  # a resumed run keeps its schedule
                                   schedule_steps=config.optim.schedule_steps)
        mesh = make_mesh(fsdp=config_fields.get(config, "mesh.fsdp", 1))
        model, tx = make_model(config), make_optimizer(config)
        init = lambda: initial_state(model, tx, config, rng.root_key(config.seed))  # noqa: E731
        abstract = jax.eval_shape(init)  # shapes only: traces the model's init, allocates nothing
        shardings = state_shardings(abstract, mesh)
        finetune.describe_frozen(abstract.params, config, _say)
        checkpointer = Checkpointer(workdir, config.keep_checkpoints, config.async_checkpoints)
        writer = MetricWriter(workdir, enabled=is_main)
        try:
            start, state, examples = resume(checkpointer, config, abstract_like(abstract, shardings),
                                            plan=plan.to_json())
            if start:
                _say(f"resumed from the step-{start} checkpoint in {workdir}")
                finetune.resumed_note(config, start, _say)
            else:
                state = finetune.start_from(jax.jit(init, out_shardings=shardings)(), shardings, config, _say)
            if is_main:
                run_record.write(workdir, config, platform.describe(),
                                 {"plan": plan.to_json(), "given_config": config_to_json(given)})
            if start:
                writer.truncate_after(start)  # lines a killed run wrote after its last checkpoint
            elif (kept := writer.set_aside()) is not None:
                _say(f"starting from step 0: the metrics already in {workdir} were moved to {kept.name}")
            skipped = _Skipped(checkpointer.skipped_examples(start) if start else 0)
            batches = _global_batches(iter(_dataset(config, data, examples, settings)), settings.mode, mesh,
                                      skipped)
            first = next(batches)
            train_step, flops = _compile(model, config, mesh, tx, settings, state, first)
            batches = itertools.chain([first], batches)
            run = _Run(config, plan, workdir, state, batches, train_step, flops,
                       Evaluator(model, config, mesh, data.tokenizer, settings.relevance, digits_data=data.digits),
                       checkpointer, writer, lock, stop, start, skipped)
            return _loop(run)
        finally:
            checkpointer.wait()
            checkpointer.close()
            writer.close()


def _dataset(config: ConfigDict, data: run_data.RunData, start_example: int, settings: ModeSettings):
    return make_train_dataset(data.train_dir, TrainDataOptions(
        tokenizer=data.tokenizer, image_size=config.data.image_size, batch_size=per_process_batch(config.batch_size),
        seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count(),
        crop_scale=tuple(config.data.crop_scale), worker_count=config.data.worker_count,
        views=ViewAugment(**settings.views) if settings.views is not None else None,
        samples_per_class=config.data.get("samples_per_class", 0), start_example=start_example,
        label_tuples="labels" in objectives.MODES[settings.mode].reads))


def _global_batches(local_batches: Iterator[dict], mode: str, mesh, skipped: _Skipped) -> Iterator[dict]:
    """This process's numpy batches -> global arrays on the mesh; their "skipped" flags are counted in `skipped`."""
    for local in local_batches:
        local = dict(local)
        skipped.local += int(np.count_nonzero(local.pop("skipped")))
        if objectives.MODES[mode].image_only:  # the image-only steps never read the captions: do not ship them
            local = {k: v for k, v in local.items() if k != "tokens"}
        objectives.check_batch(mode, local)
        yield global_batch(local, mesh)


def _compile(model, config, mesh, tx, settings: ModeSettings, state, batch):
    """The train step compiled for the real batch's shapes (compile time stays out of the first step's rate), and
    the model FLOPs of one step per device: those of the unsplit step, since accumulation's second forward pass is
    recomputation, not model work (and XLA's cost analysis counts a loop body once)."""
    def lower(config):
        step = jax.jit(make_train_step(model, config, mesh, tx, settings), donate_argnums=0,
                       out_shardings=(state_shardings(state, mesh), replicated(mesh)))
        return step.lower(state, batch)

    started = time.perf_counter()
    lowered = lower(config)
    compiled = lowered.compile()
    _say(f"compiled the train step in {time.perf_counter() - started:.1f}s")
    if config.optim.accum_steps > 1:
        unsplit = config.copy_and_resolve_references()
        with unsplit.unlocked():
            unsplit.optim.accum_steps = 1
        lowered = lower(unsplit)
    flops = mfu.step_flops(lowered)  # the whole (unpartitioned) program
    return compiled, flops / jax.device_count() if flops else None


def _check_finite(run: _Run) -> None:
    bad = int(jax.device_get(run.state.bad_step))
    if bad >= 0:
        run.checkpointer.wait()  # the newest checkpoint may still be in flight
        last = run.checkpointer.latest_step()
        raise NonFiniteError(
            f"non-finite loss or gradient at step {bad + 1}; no update was applied from that step on. "
            f"Last good checkpoint: step {last} in {run.checkpointer.directory}. Lower optim.lr, "
            f"set optim.grad_clip_norm, or check the data, then restart from that checkpoint.")


def _save(run: _Run, step: int) -> None:
    _check_finite(run)
    run.checkpointer.save(step, run.state, step * run.config.batch_size, run.config, run.skipped.total(),
                          run.plan.to_json())


def _loop(run: _Run) -> dict[str, float]:
    config, is_main = run.config, jax.process_index() == 0
    total = config.total_steps
    progress = Progress("train", "steps", total, start=run.start, stream=sys.stdout, interval=float("inf"),
                        enabled=is_main)
    device_kind = jax.devices()[0].device_kind
    profile = tuple(config.get("profile_steps") or ())
    last_eval: dict[str, float] = {}
    data_wait, window_start = 0.0, run.start
    step = run.start
    for step in range(run.start + 1, total + 1):
        if profile and step == profile[0]:
            jax.profiler.start_trace(os.fspath(run.workdir / "profile"))
        waited = time.perf_counter()
        batch = next(run.batches)
        data_wait += time.perf_counter() - waited
        run.state, metrics = run.train_step(run.state, batch)
        progress.update(1)
        if profile and step == profile[1]:
            jax.block_until_ready(run.state)
            jax.profiler.stop_trace()
            _say(f"wrote a profile of steps {profile[0]}-{profile[1]} to {run.workdir / 'profile'}")
        final = step == total
        if step % config.log_every_steps == 0 or final:
            logged = to_host(metrics)  # waits for the step: the window's time includes the device's work
            steps_per_s = progress.rate()
            window_s = (step - window_start) / max(steps_per_s, 1e-9)
            logged.update({"train/steps_per_s": steps_per_s, "train/examples_per_s": steps_per_s * config.batch_size,
                           "train/step_time_s": 1 / max(steps_per_s, 1e-9),
                           "train/data_wait_share": min(data_wait / window_s, 1.0)})
            utilisation = mfu.mfu(run.flops_per_step, 1 / max(steps_per_s, 1e-9), device_kind)
            if utilisation is not None:
                logged["train/mfu"] = utilisation
            logged["train/skipped_examples"] = skipped = run.skipped.total()
            run.writer.write(step, logged)
            shown = "  ".join(f"{k.split('/')[-1]} {float(logged[k]):.4g}" for k in
                              ("train/loss", "train/logit_scale", "train/learning_rate") if k in logged)
            progress.update(force=True, note=f"{shown}  {steps_per_s * config.batch_size:,.0f} ex/s  "
                                             f"data wait {100 * logged['train/data_wait_share']:.0f}%")
            data_wait, window_start = 0.0, step
            _check_finite(run)  # after logging, so the bad loss is on record
            unreadable.check_fraction(skipped, step * config.batch_size, config.data.max_skipped_fraction)
        if run.stop.reached(step):  # before evaluating: a preempted run has seconds, not minutes
            with progress.pause():
                _save(run, step)
                run.checkpointer.wait()
            _say(f"{run.stop.requested}: saved the step-{step} checkpoint; restart with the same --workdir to resume")
            break
        if run.evaluator and (due := run.evaluator.due(step, final)):  # eval.<kind>_every_steps
            with progress.pause():  # evaluation time is not training time
                started = time.perf_counter()
                _say(f"evaluating at step {step}")
                last_eval = run.evaluator(run.state.params, run.state.rng, run.state.eval_rff, due)
                run.writer.write(step, last_eval)
                write_eval_json(run.workdir, step, last_eval, enabled=is_main)
                _say(f"eval at step {step} done in {time.perf_counter() - started:.1f}s")
        if step % config.checkpoint_every_steps == 0 or final:
            with progress.pause():
                _save(run, step)
    skipped = run.skipped.total()
    if skipped:
        _say(f"{skipped:,} of the {step * config.batch_size:,} training examples were stand-ins for records that did "
             f"not read or decode (train/skipped_examples)")
    return last_eval
