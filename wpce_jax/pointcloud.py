"""Weighted point clouds: the type, their random-feature map, and the exact kernel-sum similarity.

A cloud P = {(w_i, v_i)} is compared with Q through
    g(P, Q) = 1/(|P||Q|) sum_i sum_j w_i w'_j k(u_i, u'_j),    u = v / |v|,
    k = a_lin <u, u'> + a_rff k_shift(u, u').
`feature_map` turns a cloud into one vector phi(P) with phi(P).phi(Q) = g(P, Q) (exactly for the linear part, in
expectation over the random Fourier features for the shift-invariant part); `exact_similarity` is the double sum.
"""
from numbers import Real
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from wpce_jax.kernels import RFF, exact_kernel, linear_kernel, rff_map

NORM_EPS = 1e-6


class PointCloud(NamedTuple):
    """A batch of weighted point clouds; a NamedTuple, hence a pytree that passes through jit and shard_map.

    points:  [B, M, d] point vectors (not yet normalised).
    weights: [B, M] real weights (may be negative).
    mask:    [B, M] bool, True where the point exists; None means every point exists.
    """
    points: jax.Array
    weights: jax.Array
    mask: Optional[jax.Array] = None


def _check_cloud(cloud: PointCloud, name: str) -> None:
    points, weights, mask = cloud
    if points.ndim != 3:
        raise ValueError(f"{name}.points must be [B, M, d], got shape {points.shape}")
    if weights.shape != points.shape[:2]:
        raise ValueError(f"{name}.weights must be [B, M] = {points.shape[:2]} to match {name}.points, "
                         f"got {weights.shape}")
    if mask is not None and mask.shape != points.shape[:2]:
        raise ValueError(f"{name}.mask must be [B, M] = {points.shape[:2]} or None, got {mask.shape}")


def _check_mixing(a_lin, a_rff) -> None:
    for name, a in (("a_lin", a_lin), ("a_rff", a_rff)):
        if isinstance(a, Real) and a < 0:
            raise ValueError(f"{name} is a kernel mixing weight and must be >= 0, got {a}")


def _compute_dtype(x: jax.Array):
    # Feature maps and similarities are computed in at least float32, whatever the towers' compute dtype.
    return jnp.promote_types(x.dtype, jnp.float32)


def normalize(points: jax.Array) -> jax.Array:
    """u = v / max(|v|, 1e-6) over the last axis; the floor keeps near-zero points finite."""
    norm2 = jnp.sum(jnp.square(points), axis=-1, keepdims=True)
    return points * jax.lax.rsqrt(jnp.maximum(norm2, NORM_EPS**2))


def _masked_weights(cloud: PointCloud, dtype) -> tuple[jax.Array, jax.Array]:
    """Weights with masked points zeroed, divided by each cloud's number of valid points: [B, M].

    Also returns the normalised points in `dtype`. A cloud with no valid point gets all-zero weights.
    """
    points, weights, mask = cloud
    u = normalize(points.astype(dtype))
    w = weights.astype(dtype)
    if mask is None:
        return u, w / points.shape[1]
    count = jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1).astype(dtype)
    return u, jnp.where(mask, w, 0.0) / count


def feature_map(cloud: PointCloud, rff: Optional[RFF], a_lin, a_rff) -> jax.Array:
    """phi(P) = [sqrt(a_lin) mean_i w_i u_i, sqrt(a_rff) mean_i w_i z(u_i)]: [B, d + D].

    Means run over each cloud's valid points. With rff None or a_rff == 0 the random features are not computed and
    the map is the linear part alone, [B, d]. phi(P) . phi(Q) approximates `exact_similarity(P, Q, ...)`.
    """
    _check_cloud(cloud, "cloud")
    _check_mixing(a_lin, a_rff)
    u, w = _masked_weights(cloud, _compute_dtype(cloud.points))
    linear = jnp.sqrt(jnp.asarray(a_lin, u.dtype)) * jnp.einsum("bm,bmd->bd", w, u)
    if rff is None or (isinstance(a_rff, Real) and a_rff == 0):
        return linear
    features = rff_map(u, rff)
    shift = jnp.sqrt(jnp.asarray(a_rff, u.dtype)) * jnp.einsum("bm,bmf->bf", w, features)
    return jnp.concatenate([linear, shift], axis=-1)


def _blocks(x: jax.Array, size: int) -> jax.Array:
    """[B, ...] -> [ceil(B / size), size, ...], zero-padded (padded clouds have zero weights, so contribute 0)."""
    pad = -x.shape[0] % size
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    return x.reshape((-1, size) + x.shape[1:])


def exact_similarity(cloud_x: PointCloud, cloud_y: PointCloud, kind: str, scale, a_lin, a_rff,
                     max_block_elements: int = 1 << 24) -> jax.Array:
    """g(P, Q) = 1/(|P||Q|) sum_i sum_j w_i w'_j (a_lin <u_i, u'_j> + a_rff k(u_i, u'_j)): [Bx, By].

    |P| counts valid points. Computed in blocks of clouds, so that no intermediate holds more than about
    `max_block_elements` kernel values (never Bx By Mx My at once).
    """
    _check_cloud(cloud_x, "cloud_x")
    _check_cloud(cloud_y, "cloud_y")
    _check_mixing(a_lin, a_rff)
    (bx, mx, dx), (by, my, dy) = cloud_x.points.shape, cloud_y.points.shape
    if dx != dy:
        raise ValueError(f"cloud_x and cloud_y points must share their dimension, got {dx} and {dy}")
    shift = exact_kernel(kind, scale)  # validates kind and scale even when a_rff == 0
    if isinstance(a_rff, Real) and a_rff == 0:
        shift = None
    dtype = jnp.promote_types(_compute_dtype(cloud_x.points), _compute_dtype(cloud_y.points))
    ux, wx = _masked_weights(cloud_x, dtype)
    uy, wy = _masked_weights(cloud_y, dtype)

    # Block sizes: one block pair holds block_x * mx * block_y * my kernel values.
    block_y = max(1, min(by, max_block_elements // (mx * my)))
    block_x = max(1, min(bx, max_block_elements // (mx * my * block_y)))

    def pair(xb, yb):
        (u1, w1), (u2, w2) = xb, yb
        n1, n2 = u1.shape[0], u2.shape[0]
        flat1, flat2 = u1.reshape(n1 * mx, -1), u2.reshape(n2 * my, -1)
        k = a_lin * linear_kernel(flat1, flat2)
        if shift is not None:
            k = k + a_rff * shift(flat1, flat2)
        return jnp.einsum("am,ambn,bn->ab", w1, k.reshape(n1, mx, n2, my), w2)

    def row(xb):
        return jax.lax.map(lambda yb: pair(xb, yb), (_blocks(uy, block_y), _blocks(wy, block_y)))

    out = jax.lax.map(row, (_blocks(ux, block_x), _blocks(wx, block_x)))  # [nx, ny, block_x, block_y]
    out = out.transpose(0, 2, 1, 3).reshape(out.shape[0] * block_x, out.shape[1] * block_y)
    return out[:bx, :by]
