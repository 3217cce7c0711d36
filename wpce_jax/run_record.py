"""The run's record (DIR/config.json) and the check that a resumed run computes what its checkpoint computed.

config.json, written by process 0 at every start: the resolved config, the versions of the packages that decide
the numbers, the git commit of the code (when it runs from a git checkout), the command line, the platform and the
start time. On resume, every field that changes what is computed must equal the checkpoint's; the fields below may
change (each change is reported in one line).
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
from wpce_jax.paths import write_text

# Fields a resumed run may change: when and what to evaluate, log and checkpoint, the input workers, where the
# built-in data is cached, the tokenizer copy's path (it moves with the workdir), the length of the run, and the
# micro-batches of gradient accumulation, the FSDP split of the parameters and the attention implementation (they
# change memory and speed, not the step's result beyond float rounding).
MAY_CHANGE = ("eval.", "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints",
              "async_checkpoints", "data.worker_count", "data.cache_dir", "data.tokenizer_path", "total_steps",
              "epochs", "profile_steps", "require_accelerator", "optim.accum_steps", "mesh.fsdp",
              "model.attention")
PACKAGES = ("jax", "jaxlib", "libtpu", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "ml-collections", "wpce_jax")


class ConfigChangedError(ValueError):
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


def _may_change(field: str) -> bool:
    return any(field == m or (m.endswith(".") and field.startswith(m)) for m in MAY_CHANGE)


def compare(saved: dict, current: ConfigDict) -> tuple[list[str], list[str]]:
    """(fields that may not change but did, fields that may change and did), each as "field: old -> new" lines.
    A field the checkpoint's config lacks (added to the code since) counts as allowed."""
    old, new = flatten(saved), flatten(config_to_json(current))
    old = {field: _normalised(field, value) for field, value in old.items()}
    fatal, allowed = [], []
    for field in sorted(set(old) | set(new)):
        if field in old and field in new and old[field] == new[field]:
            continue
        line = f"{field}: {old.get(field, '(absent)')!r} -> {new.get(field, '(absent)')!r}"
        (allowed if field not in old or _may_change(field) else fatal).append(line)
    return fatal, allowed


def check_resume(saved: dict, current: ConfigDict, step: int) -> list[str]:
    """Raises ConfigChangedError listing every field that may not change; returns the allowed changes."""
    fatal, allowed = compare(saved, current)
    if fatal:
        raise ConfigChangedError(
            f"the step-{step} checkpoint was trained with another config; resuming would mix two runs. Restore "
            f"these fields (or use a new --workdir):\n  " + "\n  ".join(fatal))
    return allowed


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


def write(workdir, config: ConfigDict, platform: str) -> epath.Path:
    """DIR/config.json."""
    record = {"config": config_to_json(config), "versions": _versions(), "git_commit": _git_commit(),
              "command": sys.argv, "platform": platform,
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    path = epath.Path(workdir) / "config.json"
    write_text(path, json.dumps(record, indent=1))
    return path
