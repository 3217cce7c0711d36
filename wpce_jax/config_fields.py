"""Reading, setting and checking dotted config fields, with errors that name the field."""
from numbers import Real
from typing import Any

from wpce_jax.errors import ConfigError

REQUIRED = object()


def get(config, path: str, default: Any = REQUIRED) -> Any:
    """config value at dotted `path`; `default` when absent or None, ValueError naming the field if required."""
    node = config
    for key in path.split("."):
        node = node.get(key) if hasattr(node, "get") else None
        if node is None:
            if default is REQUIRED:
                raise ConfigError(f"config field {path} is required but missing")
            return default
    return node


def set_field(config, path: str, value: Any, ignore_type: bool = False) -> None:
    """Sets the config value at dotted `path` (its parents must exist); ignore_type: allow another type than the
    field's (e.g. a placeholder's)."""
    *parents, leaf = path.split(".")
    node = config
    for key in parents:
        node = node[key]
    if ignore_type:
        with node.ignore_type():
            node[leaf] = value
    else:
        node[leaf] = value


def positive_int(config, path: str, default: Any = REQUIRED) -> int:
    value = get(config, path, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"config field {path} must be a positive int, got {value!r}")
    return value


def number(config, path: str, low: float, low_inclusive: bool = True) -> float:
    """A real number >= low (or > low); ValueError naming the field otherwise."""
    value = get(config, path)
    ok = isinstance(value, Real) and not isinstance(value, bool) and (value >= low if low_inclusive else value > low)
    if not ok:
        raise ConfigError(f"config field {path} must be a number {'>=' if low_inclusive else '>'} {low}, "
                          f"got {value!r}")
    return value
