"""The run's record (DIR/config.json) and the check that a resumed run computes what its checkpoint computed.

config.json, written by process 0 at every start: the resolved config, the run plan (data/run_data.RunPlan, under
"plan"; an imported workdir has none), the versions of the packages that decide the numbers, the git commit of the
code (when it runs from a git checkout), the command line, the platform and the start time; "given_config" is the
config as the user gave it (the resolved config is it with the plan's fields written in).

On resume, what changes the computation must equal the checkpoint's: every field of the config (the user's fields,
and the plan's vocabulary, end-of-text id and tokenizer, which the resolved config holds) except those below, which
may change (each change is reported in one line), and the plan's size of the training set (`check_plan`: the data
order is shuffled per epoch over the whole set). The learning-rate schedule (warm-up and horizon) is the one planned
when the run started, whatever the run's length or warm-up says today (`keep_schedule`).
"""
import datetime
import importlib.metadata
import json
import os
import subprocess
import sys

from etils import epath
from ml_collections import ConfigDict

from wpce_jax.checkpoint import config_to_json
from wpce_jax.errors import ConfigError
from wpce_jax.optimizer import learning_rate_schedule, schedule_steps
from wpce_jax.paths import write_text

# Fields a resumed run may change: when and what to evaluate, log and checkpoint, the input workers, the limit on
# replaced unreadable records (raised to go on after it stopped a run), where the built-in data is cached, the
# tokenizer copy's path (it moves with the workdir), the length of the run and of its warm-up (the schedule stays the
# checkpoint's: keep_schedule), the micro-batches of gradient accumulation, the FSDP split of the parameters and the
# attention implementation (they change memory and speed, not the step's result beyond float rounding), and
# init_from (read only when a run starts without a checkpoint of its own; a resumed run's parameters are its
# checkpoint's). optim.frozen changes every later update: it may not change.
MAY_CHANGE = ("eval.", "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints",
              "async_checkpoints", "data.worker_count", "data.max_skipped_fraction", "data.cache_dir",
              "data.tokenizer_path", "total_steps", "epochs", "warmup_epochs", "profile_steps", "require_accelerator",
              "optim.accum_steps", "mesh.fsdp", "model.attention", "init_from")
PACKAGES = ("jax", "jaxlib", "libtpu", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "ml-collections", "wpce_jax")


class ConfigChangedError(ConfigError):
    """A resumed run's config differs from its checkpoint's in a field that changes the computation."""


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are compared whole."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# Values older configs wrote that mean what a current value means.
_ALIASES = {"model.remat": {False: "none", True: "full"}}


def _normalised(field: str, value):
    return _ALIASES.get(field, {}).get(value, value) if isinstance(value, bool) else value


def may_change(field: str) -> bool:
    return any(field == m or (m.endswith(".") and field.startswith(m)) for m in MAY_CHANGE)


class _Absent:
    def __repr__(self):
        return "(absent)"


ABSENT = _Absent()  # the value of a field one of the two configs lacks


def differences(saved: dict, current: ConfigDict) -> list[tuple[str, object, object]]:
    """(field, checkpoint's value, current value) of every field that differs, sorted; ABSENT for a missing one."""
    old, new = flatten(saved), flatten(config_to_json(current))
    old = {field: _normalised(field, value) for field, value in old.items()}
    return [(field, old.get(field, ABSENT), new.get(field, ABSENT)) for field in sorted(set(old) | set(new))
            if not (field in old and field in new and old[field] == new[field])]


def compare(saved: dict, current: ConfigDict) -> tuple[list[str], list[str]]:
    """(fields that may not change but did, fields that may change and did), each as "field: old -> new" lines.
    A field the checkpoint's config lacks (added to the code since) counts as allowed."""
    fatal, allowed = [], []
    for field, old, new in differences(saved, current):
        (allowed if old is ABSENT or may_change(field) else fatal).append(f"{field}: {old!r} -> {new!r}")
    return fatal, allowed


def check_resume(saved: dict, current: ConfigDict, step: int) -> list[str]:
    """Raises ConfigChangedError listing every field that may not change; returns the allowed changes."""
    fatal, allowed = compare(saved, current)
    if fatal:
        raise ConfigChangedError(
            f"the step-{step} checkpoint was trained with another config; resuming would mix two runs. Restore "
            f"these fields (or use a new --workdir):\n  " + "\n  ".join(fatal))
    return allowed


# Run-plan fields the resolved config does not hold (it holds the others, compared as config fields): the training
# set's size (num_examples) decides the data order, so it may not change; its directory may (the data moved, or
# data.cache_dir changed).
PLAN_MAY_CHANGE = ("train_dir",)


def check_plan(saved: dict | None, current: dict, step: int) -> list[str]:
    """Raises ConfigChangedError when the checkpoint's run plan (None: a checkpoint without one, nothing to compare)
    counts another number of training examples than `current` (RunPlan.to_json()); returns the PLAN_MAY_CHANGE
    changes."""
    if saved is None:
        return []
    if saved.get("num_examples", current["num_examples"]) != current["num_examples"]:
        raise ConfigChangedError(
            f"the step-{step} checkpoint was trained on {saved['num_examples']:,} training examples "
            f"({saved.get('train_dir')}); the data now has {current['num_examples']:,} ({current['train_dir']}). The "
            f"data order is shuffled over the whole set each epoch, so resuming would mix two runs: point the config "
            f"at the run's data, or use a new --workdir (init_from=DIR starts a new run from its parameters)")
    return [f"plan.{field}: {saved[field]!r} -> {current[field]!r}" for field in PLAN_MAY_CHANGE
            if field in saved and saved[field] != current[field]]


def keep_schedule(saved: dict, current: ConfigDict) -> tuple[ConfigDict, list[str]]:
    """(`current` with the checkpoint's schedule, a line for each way it differs from today's plan).

    The schedule is the warm-up and horizon (optim.warmup_steps, optim.schedule_steps) planned when the run started;
    a checkpoint written before optim.schedule_steps existed planned it over its own total_steps. Re-planning it from
    a changed run length would make the learning rate jump at the resume step: a longer run goes on past the horizon
    at optim.end_lr, a shorter one stops early on the same curve."""
    old = flatten(saved)
    warmup, horizon = old["optim.warmup_steps"], old.get("optim.schedule_steps") or old["total_steps"]
    wanted_warmup, wanted_horizon, total = current.optim.warmup_steps, schedule_steps(current), current.total_steps
    kept = current.copy_and_resolve_references()
    with kept.unlocked():
        kept.optim.warmup_steps, kept.optim.schedule_steps = warmup, horizon
    plan = f"the schedule keeps its planned horizon of {horizon:,} steps (warm-up {warmup:,})"
    lines = []
    if wanted_warmup != warmup:
        lines.append(f"optim.warmup_steps {warmup:,} -> {wanted_warmup:,}: {plan}, set when the run started")
    if wanted_horizon not in (total, horizon):  # a schedule_steps asked for on this command line
        lines.append(f"optim.schedule_steps {horizon:,} -> {wanted_horizon:,}: {plan}, set when the run started")
    if total > horizon:
        lines.append(f"total_steps {horizon:,} -> {total:,}: {plan}; steps {horizon + 1:,}-{total:,} run at the "
                     f"final learning rate {kept.optim.end_lr:g}")
    elif total < horizon:
        last = float(learning_rate_schedule(kept)(total - 1))  # the rate of step `total` (its update count is total-1)
        lines.append(f"total_steps {horizon:,} -> {total:,}: {plan}, not compressed; the run stops at step {total:,} "
                     f"at learning rate {last:.3g}")
    return kept, lines


def _versions() -> dict:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _git_commit() -> str | None:
    """The commit of the code being run (with "+dirty" when it has uncommitted changes), or None."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def write(workdir, config: ConfigDict, platform: str, extra: dict | None = None) -> epath.Path:
    """DIR/config.json; `extra` adds top-level entries (the import command records its source there)."""
    record = {"config": config_to_json(config), "versions": _versions(), "git_commit": _git_commit(),
              "command": sys.argv, "platform": platform,
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **(extra or {})}
    path = epath.Path(workdir) / "config.json"
    write_text(path, json.dumps(record, indent=1))
    return path
