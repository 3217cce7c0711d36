"""The logit scale's (and SigLIP bias's) parameterisation: the one place that knows it.

The model owns the scalar parameter "logit_scale". For similarity "wpce" it is the scale itself (the paper: used as
is, initialised to 1/0.07, clipped to [logit_scale_min, logit_scale_max] = [1, 100] after each update); for "clip"
it is the log of the scale (CLIP's exp-parameterisation, so the clip bounds are the logs of the same fields).
Objective "sigmoid" (SigLIP) initialises the scale to 10 instead and adds the scalar parameter "logit_bias",
initialised to -10, used as is.
"""
import math
from typing import Any

import jax
import jax.numpy as jnp

SIMILARITIES = ("wpce", "clip")
INIT_TEMPERATURE = 0.07
SIGMOID_INIT_SCALE = 10.0   # SigLIP's initialisation: t' = log 10 ...
SIGMOID_INIT_BIAS = -10.0   # ... and b = -10


def _check(similarity: str) -> None:
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")


def init_scale(objective: str) -> float:
    """The scale a fresh model starts from: 1/0.07, or SigLIP's 10 for objective "sigmoid"."""
    return SIGMOID_INIT_SCALE if objective == "sigmoid" else 1.0 / INIT_TEMPERATURE


def to_parameter(scale, similarity: str):
    """A scale (python float or array) -> the parameter that holds it under `similarity`."""
    _check(similarity)
    if similarity == "wpce":
        return scale
    return math.log(scale) if isinstance(scale, (int, float)) else jnp.log(scale)


def from_parameter(parameter, similarity: str) -> jax.Array:
    """The parameter -> the multiplier of the logits. No clipping here: that is the trainer's update rule (`clip`)."""
    _check(similarity)
    return jnp.exp(parameter) if similarity == "clip" else parameter


def convert(parameter, source: str, target: str):
    """A parameter of similarity `source` -> the parameter of similarity `target` that holds the same scale."""
    return parameter if source == target else to_parameter(from_parameter(parameter, source), target)


def value(params: Any, similarity: str) -> jax.Array:
    """The multiplier of the logits, from a parameter tree ({"params": ...} or its inner dict)."""
    tree = params["params"] if "params" in params else params
    return from_parameter(tree["logit_scale"], similarity)


def bounds(similarity: str, low: float, high: float) -> tuple[float, float]:
    """Bounds on the parameter for scale bounds [low, high] (config logit_scale_min/max)."""
    return to_parameter(float(low), similarity), to_parameter(float(high), similarity)


def clip(params, similarity: str, low: float, high: float):
    """The inner parameter dict with "logit_scale" clipped so that its scale lies in [low, high]."""
    lo, hi = bounds(similarity, low, high)
    return {**params, "logit_scale": jnp.clip(params["logit_scale"], lo, hi)}
