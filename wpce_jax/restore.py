"""Which checkpoint a run resumes from, and what a failed restore means.

Newest first, each checkpoint is read and its failure, if any, classified:
    damaged    its own files prove it: a commit marker missing (a save that never finished), a file that fails its
               decoding or checksum, unreadable metadata JSON, a file it lists that is gone. Moved aside to
               <step>.damaged with a line; the one before is tried.
    mismatch   its saved arrays (paths or shapes, from Orbax's metadata, compared before reading any array) differ
               from the model this config builds. RestoreMismatchError (exit 2) names the first paths and the
               config fields that differ from the checkpoint's; nothing is moved.
    transient  an I/O or resource error (OSError, a timeout, out of memory): tried again after RETRY_DELAYS_S, then
               raised; nothing is moved.
    anything else (a changed config, a checkpoint of an older version, a bug) is raised; nothing is moved.
With several processes each reads its own shards and classifies its own outcome; the outcomes are gathered and
every process takes the same decision, the gravest one (so all restore the same step, or all stop).
"""
import json
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
from ml_collections import ConfigDict

from wpce_jax import run_record
from wpce_jax.checkpoint import Checkpointer, IncompatibleCheckpointError, array_shapes
from wpce_jax.errors import UserError

RETRY_DELAYS_S = (2.0, 10.0, 30.0)  # before the 2nd, 3rd and 4th try of a restore that failed transiently

# Outcomes, in the order of gravity in which the processes' outcomes combine.
OK, TRANSIENT, DAMAGED, MISMATCH, FAULT = range(5)

# Tensorstore (Orbax's array storage) reports failures as ValueErrors carrying an absl status name.
_TRANSIENT_STATUS = ("RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "out of memory", "Out of memory")
_DAMAGED_STATUS = ("DATA_LOSS", "NOT_FOUND", "checksum")
_MISMATCH_TEXT = ("tree structures do not match", "is not compatible with the stored shape")


class RestoreMismatchError(UserError, ValueError):
    """A checkpoint whose saved arrays do not fit the model the config builds."""


class RestoreError(RuntimeError):
    """Another process could not restore the checkpoint (its own output has the reason)."""


class _Damage(Exception):
    """A checkpoint's files prove it damaged (found by looking, not raised by a library)."""


def classify(error: BaseException) -> int:
    """The outcome code of an exception raised while reading a checkpoint."""
    text = str(error)
    if isinstance(error, (_Damage, json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError)):
        return DAMAGED
    if isinstance(error, RestoreMismatchError):
        return MISMATCH
    if isinstance(error, (UserError, run_record.ConfigChangedError, IncompatibleCheckpointError)):
        return FAULT  # the project's own verdicts, whatever their text holds
    if isinstance(error, (OSError, TimeoutError, MemoryError)) or any(s in text for s in _TRANSIENT_STATUS):
        return TRANSIENT
    if any(s in text for s in _DAMAGED_STATUS):
        return DAMAGED
    if isinstance(error, ValueError) and any(s in text for s in _MISMATCH_TEXT):
        return MISMATCH
    return FAULT


def mismatch(saved: dict, expected: dict, saved_config: dict, config: ConfigDict, step: int,
             library_error: str = "") -> "RestoreMismatchError | None":
    """The error naming the first differing array paths (saved and expected shapes) and the config fields that differ
    from the checkpoint's; None when the arrays agree and no library error says otherwise.
    saved, expected: '/'-joined path -> shape."""
    paths = sorted((p for p in set(saved) | set(expected) if saved.get(p) != expected.get(p)),
                   key=lambda p: (not p.startswith("params/"), p))  # the parameters first, then their moments
    if not paths and not library_error:
        return None
    shape = lambda s: "(absent)" if s is None else str(s)  # noqa: E731
    lines = [f"  {p}: saved {shape(saved.get(p))}, expected {shape(expected.get(p))}" for p in paths[:5]]
    if len(paths) > 5:
        lines.append(f"  ... and {len(paths) - 5} more")
    if not paths:
        lines.append("  " + " ".join(library_error.split())[:500])
    fields = [(f, old, new) for f, old, new in run_record.differences(saved_config, config)
              if not run_record.may_change(f)]
    if fields:
        lines.append("config fields that differ from the checkpoint's:")
        lines += [f"  {f}: {'(absent in the checkpoint)' if old is run_record.ABSENT else repr(old)} -> {new!r}"
                  for f, old, new in fields]
        flags = " ".join(f"--config.{f}={_guess(old, new)}" for f, old, new in fields)
        fix = (f"pass the values the checkpoint was trained with (a field absent in the checkpoint was added to "
               f"the code since; its old behaviour may be the other value): e.g. {flags}")
    else:
        fix = "pass the config the checkpoint was trained with"
    return RestoreMismatchError(
        f"the step-{step} checkpoint does not fit the model this config builds ({len(paths)} arrays differ); "
        f"{fix}, or use a new --workdir. Nothing was moved.\n" + "\n".join(lines))


def _guess(old, new) -> str:
    if old is not run_record.ABSENT:
        return json.dumps(old) if not isinstance(old, str) else old
    return str(not new) if isinstance(new, bool) else "<the value it was trained with>"


def _say(text: str) -> None:
    if jax.process_index() == 0:
        print(text, flush=True)


def _agree(code: int) -> tuple[int, list[int]]:
    """(the gravest of all processes' codes, the processes that reported it)."""
    if jax.process_count() == 1:
        return code, [0]
    from jax.experimental import multihost_utils
    codes = np.asarray(multihost_utils.process_allgather(np.int32(code))).reshape(-1)
    worst = int(codes.max())
    return worst, [int(i) for i in np.flatnonzero(codes == worst)]


def _read(checkpointer: Checkpointer, config: ConfigDict, plan: Optional[dict], target, step: int, first_try: bool):
    """(state, examples consumed) of checkpoint `step`, or an exception (raised by the checks or the read)."""
    try:
        missing = checkpointer.unfinished(step)
        if missing:
            raise _Damage(f"its save never finished ({', '.join(missing)} missing)")
        saved_config = checkpointer.saved_config(step)
        allowed = run_record.check_resume(saved_config, config, step)
        if plan is not None:
            allowed += run_record.check_plan(checkpointer.saved_plan(step), plan, step)
        if first_try:
            for line in allowed:
                _say(f"changed since the step-{step} checkpoint: {line}")
        error = mismatch(checkpointer.saved_shapes(step), array_shapes(target), saved_config, config, step)
        if error:
            raise error
        try:
            return checkpointer.restore(step, target)
        except Exception as e:  # noqa: BLE001 - the library's own mismatch checks, after ours passed
            if classify(e) != MISMATCH:
                raise
            raise mismatch({}, {}, saved_config, config, step, library_error=str(e)) from e
    except Exception as e:  # noqa: BLE001 - classified by the caller
        return e


def resume(checkpointer: Checkpointer, config: ConfigDict, target, *, plan: Optional[dict] = None, delays=None,
           sleep: Callable[[float], None] = time.sleep) -> tuple[int, Any, int]:
    """(step, state shaped and placed like `target`, global examples consumed) of the newest checkpoint that
    restores; (0, None, 0) when none does. Call on every process. plan: the run plan (RunPlan.to_json()), compared
    with the checkpoint's (run_record.check_plan). delays: seconds before each retry of a transient failure
    (RETRY_DELAYS_S by default)."""
    delays = RETRY_DELAYS_S if delays is None else tuple(delays)
    for step in reversed(checkpointer.all_steps()):
        for attempt in range(len(delays) + 1):
            result = _read(checkpointer, config, plan, target, step, first_try=attempt == 0)
            code = OK if not isinstance(result, Exception) else classify(result)
            if code != OK and jax.process_count() > 1:  # process 0 prints the decision; this process's reason here
                print(f"process {jax.process_index()}: the step-{step} checkpoint: {_reason(result)}", flush=True)
            decision, where = _agree(code)
            if decision == OK:
                return step, *result
            if decision != TRANSIENT or attempt == len(delays):
                break
            _say(f"could not read the step-{step} checkpoint ({_why(result, code, decision, where)}); trying again in "
                 f"{delays[attempt]:g} s (try {attempt + 2} of {len(delays) + 1})")
            sleep(delays[attempt])
        if decision == DAMAGED:
            moved = checkpointer.skip(step, jax.process_index() == 0)
            _say(f"skipping the step-{step} checkpoint: it is damaged ({_why(result, code, decision, where)}); "
                 f"moved to {moved}")
            continue
        if code == decision:
            raise result
        if decision == MISMATCH:
            raise RestoreMismatchError(f"process(es) {where} found that the step-{step} checkpoint does not fit the "
                                       f"model this config builds (their output names the arrays). Nothing was "
                                       f"moved.")
        raise RestoreError(f"process(es) {where} could not restore the step-{step} checkpoint (their output has "
                           f"the reason); nothing was moved")
    return 0, None, 0


def _reason(result) -> str:
    if isinstance(result, _Damage):
        return str(result)
    return f"{type(result).__name__}: {' '.join(str(result).split())[:300]}"


def _why(result, code: int, decision: int, processes: list[int]) -> str:
    """This process's reason when it shares the decision, else who had one."""
    if jax.process_count() == 1:
        return _reason(result)
    return f"process(es) {processes}" + (f": {_reason(result)}" if code == decision else "; see their output")
