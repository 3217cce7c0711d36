"""Starting a run from another run's parameters (`config.init_from`) and reporting locked parameters (`optim.frozen`).

`init_from = DIR[:STEP]` names a workdir (a trained run, or one written by `python -m wpce_jax.import_checkpoint`)
and optionally its step (latest by default). A new run takes from it the parameters both models have: only the
parameters are read (checkpoint.restore_params), never the optimiser state, which starts fresh like the step
counter, the data position and the run's own evaluation RFF draw. Parameters the source lacks keep their fresh
initialisation and are listed, the source's extra ones are listed and ignored, and a shape that differs stops the
run before it trains. Once the run has a checkpoint of its own it resumes from that, and init_from is not read again.

The logit scale means the scale itself for WPCE and its log for CLIP (wpce_jax.logit_scale): a source
of the other similarity has its value converted so that the starting scale is the source's.
"""
from typing import Callable, Optional

import jax
import orbax.checkpoint as ocp
from ml_collections import ConfigDict

from wpce_jax import logit_scale
from wpce_jax.checkpoint import abstract_like, checkpoint_dir, restore_params
from wpce_jax.errors import ConfigError
from wpce_jax.optimizer import count_frozen, param_path
from wpce_jax.parallel import SCANNED


def parse_init_from(value: str) -> tuple[str, Optional[int]]:
    """"DIR" or "DIR:STEP" -> (DIR, STEP or None); DIR may be a gs:// URI (its own colon is kept)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"config field init_from must be a workdir DIR or DIR:STEP, got {value!r}")
    head, sep, tail = value.rpartition(":")
    if sep and tail.isdigit() and head:
        return head, int(tail)
    return value, None


def describe_frozen(abstract_params, config: ConfigDict, say: Callable[[str], None]) -> None:
    """One line with the frozen and trained parameter counts when optim.frozen is set (a ConfigError when it
    matches nothing)."""
    if not config.optim.get("frozen"):
        return
    frozen, trained = count_frozen(abstract_params, config)
    say(f"optim.frozen = {config.optim.frozen!r}: {frozen:,} parameters frozen (no update, no optimiser state), "
        f"{trained:,} trained")


def _source_similarity(directory, step: int) -> Optional[str]:
    manager = ocp.CheckpointManager(checkpoint_dir(directory), options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        config = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    finally:
        manager.close()
    return (config.get("model") or {}).get("similarity")


def _lines(what: str, paths: list[str]) -> str:
    shown = ", ".join(paths[:12]) + (f", ... ({len(paths)} in all)" if len(paths) > 12 else "")
    return f"{what}: {shown}"


def start_from(state, shardings, config: ConfigDict, say: Callable[[str], None]):
    """A new run's fresh TrainState (placed per `shardings`) with the parameters of `config.init_from` put in;
    `state` unchanged when init_from is unset. The optimiser state stays the fresh one: AdamW's moments start at
    zero whatever the parameters' values."""
    if not config.get("init_from"):
        return state
    directory, step = parse_init_from(config.init_from)
    target = abstract_like(state.params, shardings.params)
    source = restore_params(directory, step, target)
    stacked = lambda paths: any(f"/{SCANNED}/" in p for p in paths)  # noqa: E731
    if stacked(source.missing) != stacked(source.unused) and source.missing and source.unused:
        raise ConfigError(f"config field model.scan_blocks = {config.model.scan_blocks} but the source {directory} "
                          f"keeps its transformer blocks {'per block' if config.model.scan_blocks else 'stacked'}: "
                          f"set --config.model.scan_blocks={not config.model.scan_blocks} (the source's config.json "
                          f"has its value), or every block would start fresh")
    say(f"init_from: {len(source.params)} of {len(source.params) + len(source.missing)} parameter arrays from the "
        f"step-{source.step} checkpoint of {directory}")
    if source.missing:
        say(_lines("init_from: initialised fresh (the source lacks them)", source.missing))
    if source.unused:
        say(_lines("init_from: ignored (the model lacks them)", source.unused))
    params = dict(source.params)
    similarity, theirs = config.model.similarity, _source_similarity(directory, source.step)
    if "logit_scale" in params and theirs in logit_scale.SIMILARITIES and theirs != similarity:
        params["logit_scale"] = logit_scale.convert(params["logit_scale"], theirs, similarity)
        scale = float(logit_scale.from_parameter(source.params["logit_scale"], theirs))
        say(f"init_from: the source is {theirs}, this run {similarity}: its logit scale {scale:.4g} converted")
    merged = jax.tree_util.tree_map_with_path(lambda path, x: params.get(param_path(path), x), state.params)
    return state._replace(params=merged)


def resumed_note(config: ConfigDict, start: int, say: Callable[[str], None]) -> None:
    if config.get("init_from"):
        say(f"init_from = {config.init_from!r} is not used: the run resumes from its own step-{start} checkpoint")
