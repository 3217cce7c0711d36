"""Shift-invariant kernels on unit vectors, their random Fourier features, and the exact kernels.

Every shift-invariant kernel here is a Gaussian scale mixture (docs/method.md),

    k(r) = E_s[ exp(-s r^2 / (2 scale^2)) ],

so one sampler serves them all: draw s from the kind's mixing law, then a frequency omega ~ N(0, s / scale^2 I).
By Bochner's theorem z(u) = sqrt(2/D) cos(W u + b), with W's rows such frequencies and b ~ U[0, 2 pi), gives
E[z(u) . z(v)] = k(|u - v|). The mixing laws (each gives the kernel's Laplace transform E[exp(-s t)] exactly):

    gaussian   exp(-r^2 / (2 scale^2))       s = 1
    imq        (1 + r^2 / scale^2)^(-1/2)    s ~ chi-square(1)     (Gamma(1/2, scale 2))
    cauchy     (1 + r^2 / scale^2)^(-1)      s ~ chi-square(2)     (Gamma(1, scale 2))
    laplacian  exp(-r / scale)               s = 1 / n^2, n ~ N(0, 1)   (Levy(1))

All functions are pure; `sample_rff` is jit-able with (kind, dim_in, num_features) static.
"""
import math
from numbers import Real
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class RFF(NamedTuple):
    """One draw of random Fourier features: z(u) = sqrt(2/D) cos(frequencies @ u + phases).

    frequencies: [D, d];  phases: [D].
    """
    frequencies: jax.Array
    phases: jax.Array


def _mixing_gaussian(key, shape):
    return jnp.ones(shape, jnp.float32)


def _mixing_imq(key, shape):
    return jax.random.chisquare(key, 1.0, shape, jnp.float32)


def _mixing_cauchy(key, shape):
    return jax.random.chisquare(key, 2.0, shape, jnp.float32)


def _mixing_laplacian(key, shape):
    return 1.0 / jnp.square(jax.random.normal(key, shape, jnp.float32))


def _profile_gaussian(r2, scale):
    return jnp.exp(-r2 / (2.0 * scale**2))


def _profile_imq(r2, scale):
    return jax.lax.rsqrt(1.0 + r2 / scale**2)


def _profile_cauchy(r2, scale):
    return 1.0 / (1.0 + r2 / scale**2)


def _profile_laplacian(r2, scale):
    # sqrt'(0) is infinite; where r2 == 0 the kernel is 1 and we route the gradient through a safe value.
    safe = jnp.where(r2 > 0, r2, 1.0)
    return jnp.where(r2 > 0, jnp.exp(-jnp.sqrt(safe) / scale), 1.0)


# kind -> (mixing law sampler (key, shape) -> s, kernel as a function of the squared distance).
_KINDS: dict[str, tuple[Callable, Callable]] = {
    "gaussian": (_mixing_gaussian, _profile_gaussian),
    "imq": (_mixing_imq, _profile_imq),
    "cauchy": (_mixing_cauchy, _profile_cauchy),
    "laplacian": (_mixing_laplacian, _profile_laplacian),
}
KINDS = tuple(_KINDS)


def check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise ValueError(f"kernel kind must be one of {KINDS}, got {kind!r}")


def check_scale(scale) -> None:
    """Scale must be positive; checked only when it is a concrete number (a traced scale passes through)."""
    if isinstance(scale, Real) and not scale > 0:
        raise ValueError(f"kernel scale must be > 0 (sigma for gaussian/laplacian, c for imq/cauchy), got {scale}")


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def sample_rff(key: jax.Array, kind: str, dim_in: int, num_features: int, scale) -> RFF:
    """Draws D = num_features random Fourier features for `kind` on R^dim_in.

    Returns RFF(frequencies [D, dim_in] float32, phases [D] float32). The draw depends only on `key`, so every
    device that folds the same step into the same key gets the same features.
    """
    check_kind(kind)
    _check_positive_int("dim_in", dim_in)
    _check_positive_int("num_features", num_features)
    check_scale(scale)
    key_s, key_w, key_b = jax.random.split(key, 3)
    s = _KINDS[kind][0](key_s, (num_features,))
    gauss = jax.random.normal(key_w, (num_features, dim_in), jnp.float32)
    frequencies = gauss * (jnp.sqrt(s) / scale)[:, None]
    phases = jax.random.uniform(key_b, (num_features,), jnp.float32, 0.0, 2.0 * math.pi)
    return RFF(frequencies, phases)


def rff_map(points: jax.Array, rff: RFF) -> jax.Array:
    """z(u) = sqrt(2/D) cos(W u + b) for points [..., d] -> [..., D]."""
    num_features, dim = rff.frequencies.shape
    if points.shape[-1] != dim:
        raise ValueError(f"points have dimension {points.shape[-1]} but the RFF draw expects {dim} "
                         f"(frequencies {rff.frequencies.shape})")
    proj = jnp.einsum("...d,fd->...f", points, rff.frequencies.astype(points.dtype))
    return math.sqrt(2.0 / num_features) * jnp.cos(proj + rff.phases.astype(points.dtype))


def linear_kernel(u: jax.Array, v: jax.Array) -> jax.Array:
    """<u_i, v_j> for u [N, d], v [K, d] -> [N, K]."""
    return u @ v.T


def squared_distances(u: jax.Array, v: jax.Array) -> jax.Array:
    """|u_i - v_j|^2 for u [N, d], v [K, d] -> [N, K], clipped at 0 against cancellation."""
    r2 = jnp.sum(u * u, -1)[:, None] + jnp.sum(v * v, -1)[None, :] - 2.0 * (u @ v.T)
    return jnp.maximum(r2, 0.0)


def exact_kernel(kind: str, scale) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The exact kernel of `kind` as a function (u [N, d], v [K, d]) -> [N, K]; kind "linear" is <u, v>."""
    if kind == "linear":
        return linear_kernel
    check_kind(kind)
    check_scale(scale)
    profile = _KINDS[kind][1]

    def kernel(u, v):
        if u.shape[-1] != v.shape[-1]:
            raise ValueError(f"kernel inputs must share their last dimension, got {u.shape} and {v.shape}")
        return profile(squared_distances(u, v), scale)

    return kernel
