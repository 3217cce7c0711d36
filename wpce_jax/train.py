"""The training loop: state, steps, zero-shot evaluation, checkpoints, metrics, resume and preemption.

Exact resume: a step's randomness is a function of (seed, step) alone (RFF frequencies) or lives in the checkpoint
(the data iterator's position, parameters, optimiser state), so a run restarted from its step-k checkpoint takes the
same steps k+1, k+2, ... as one that never stopped, and metrics.jsonl is cut back to step k before it goes on.
SIGTERM (preemption) finishes the current step, writes a checkpoint and returns.
"""
import os
import signal
import time
from functools import partial

import jax
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from wpce_jax import datasets
from wpce_jax.checkpoint import Checkpointer, abstract_like
from wpce_jax.config_validation import mode_settings, validate_config
from wpce_jax.data.image_ops import ViewAugment
from wpce_jax.data.pipeline import make_dataset
from wpce_jax.evaluate.evaluator import Evaluator, validate_eval_config
from wpce_jax.metric_writer import MetricWriter, Progress, write_eval_json
from wpce_jax.models.towers import make_model, validate_model_config
from wpce_jax.optimizer import make_optimizer
from wpce_jax.parallel import global_batch, make_mesh, per_process_batch, replicated, to_host
from wpce_jax.train_step import TrainState, initial_state, make_train_step


class NonFiniteError(FloatingPointError):
    pass


class _Preemption:
    """When to stop for preemption, agreed by every process.

    One process: SIGTERM sets a flag that the loop reads after each step (a signal handler must not do work).
    Several: each host may get the notice at a different step, and a host that saves while another steps would
    deadlock their collectives; JAX's preemption sync manager (it catches SIGTERM itself) picks one step for all.
    """

    def __init__(self):
        self.requested = False
        self._multiprocess = jax.process_count() > 1
        self._previous = None

    def __enter__(self):
        if not self._multiprocess:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def reached(self, step: int) -> bool:
        """Call at every step on every process; True at the step where all should save and stop."""
        if self._multiprocess:
            try:
                self.requested = multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # the preemption service is disabled: no notice can arrive
                self.requested = False
        return self.requested

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _check_finite(state: TrainState, checkpointer: Checkpointer, workdir: str) -> None:
    bad = int(jax.device_get(state.bad_step))
    if bad >= 0:
        checkpointer.wait()  # the newest checkpoint may still be in flight
        last = checkpointer.latest_step()
        raise NonFiniteError(
            f"non-finite loss or gradient at step {bad + 1}; no update was applied from that step on. "
            f"Last good checkpoint: step {last} in {os.path.join(workdir, 'checkpoints')}. Lower optim.lr, "
            f"set optim.grad_clip_norm, or check the data, then restart from that checkpoint.")


def _validate(config: ConfigDict) -> None:
    """Every field, before any data is prepared or compute runs. The vocabulary fields come from the tokenizer
    later; a stand-in lets the model's other fields be checked now."""
    validate_config(config)
    validate_eval_config(config)
    probe = config.copy_and_resolve_references()
    with probe.unlocked():
        if probe.model.text.vocab_size is None:
            probe.model.text.vocab_size, probe.model.text.eot_id = 2, 1
    validate_model_config(probe)


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict[str, float]:
    """Trains per `config` in `workdir` (resuming from its latest checkpoint). Returns the last evaluation."""
    _validate(config)
    workdir = os.path.abspath(workdir)
    is_main = jax.process_index() == 0
    if is_main:
        os.makedirs(workdir, exist_ok=True)
    data = datasets.resolve(config, workdir, is_main)  # fills in the vocabulary; make_model re-validates
    local_batch = per_process_batch(config.batch_size)

    mesh = make_mesh()
    model, tx = make_model(config), make_optimizer(config)
    init = partial(initial_state, model, tx, config, jax.random.key(config.seed))
    state_sharding = replicated(mesh)
    settings = mode_settings(config)
    views = ViewAugment(**settings.views) if settings.mode == "two_view" else None
    train_ds = make_dataset(data.train_dir, tokenizer=data.tokenizer, image_size=config.data.image_size,
                            train=True, batch_size=local_batch, seed=config.seed,
                            process_index=jax.process_index(), process_count=jax.process_count(),
                            crop_scale=tuple(config.data.crop_scale), worker_count=config.data.worker_count,
                            views=views, samples_per_class=config.data.get("samples_per_class", 0))
    iterator = iter(train_ds)
    checkpointer = Checkpointer(workdir, config.keep_checkpoints, config.async_checkpoints)
    writer = MetricWriter(workdir, enabled=is_main)
    try:
        start = checkpointer.latest_step() or 0
        if start:
            state = checkpointer.restore(start, abstract_like(jax.eval_shape(init), state_sharding), iterator)
            if is_main:
                print(f"resumed from the step-{start} checkpoint in {workdir}", flush=True)
        else:
            state = jax.jit(init, out_shardings=state_sharding)()
        writer.truncate_after(start)  # lines a killed run wrote after its last checkpoint (or before its first)
        return _loop(config, workdir, mesh, model, tx, state, iterator, data, checkpointer, writer, start)
    finally:
        checkpointer.wait()
        checkpointer.close()
        writer.close()


def _loop(config, workdir, mesh, model, tx, state, iterator, data, checkpointer, writer, start):
    is_main = jax.process_index() == 0
    train_step = jax.jit(make_train_step(model, config, mesh, tx), donate_argnums=0,
                         out_shardings=(replicated(mesh), replicated(mesh)))
    evaluator = Evaluator(model, config, mesh, data.tokenizer, digits_data=data.digits)
    progress = Progress(config.total_steps, start, config.batch_size, enabled=is_main)
    mode = mode_settings(config).mode
    labelled = mode == "labelled"
    last_eval: dict[str, float] = {}
    with _Preemption() as preemption:
        for step in range(start + 1, config.total_steps + 1):
            local = next(iterator)
            if mode != "image_text":  # the image-only steps never read the captions: do not ship them
                local = {k: v for k, v in local.items() if k != "tokens"}
            if labelled and (local["label"] < 0).any():
                raise ValueError("config field mode='labelled' needs class labels, but the training records include "
                                 "unlabelled ones (label -1); use mode 'image_text' or 'two_view' for this data")
            batch = global_batch(local, mesh)
            state, metrics = train_step(state, batch)
            final = step == config.total_steps
            if step % config.log_every_steps == 0 or final:
                steps_per_s, examples_per_s = progress.rates(step)
                logged = {**to_host(metrics), "train/steps_per_s": steps_per_s, "train/examples_per_s": examples_per_s}
                writer.write(step, logged)
                progress.report(step, steps_per_s, logged)
                _check_finite(state, checkpointer, workdir)  # after logging, so the bad loss is on record
            if evaluator and (step % config.eval_every_steps == 0 or final):
                started = time.perf_counter()
                if is_main:
                    print(f"evaluating at step {step}", flush=True)
                last_eval = evaluator(state.params, state.rng, state.eval_rff)
                writer.write(step, last_eval)
                write_eval_json(workdir, step, last_eval, enabled=is_main)
                if is_main:
                    print(f"eval at step {step} done in {time.perf_counter() - started:.1f}s", flush=True)
                progress.rates(step)  # evaluation time is not training time
            preempted = preemption.reached(step)
            if step % config.checkpoint_every_steps == 0 or final or preempted:
                _check_finite(state, checkpointer, workdir)
                checkpointer.save(step, state, iterator, config)
            if preempted:
                if is_main:
                    print(f"SIGTERM: saved the step-{step} checkpoint; restart with the same --workdir to resume",
                          flush=True)
                break
    return last_eval
