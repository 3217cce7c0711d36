"""Weighted point clouds: the type, their random-feature map, and the exact kernel-sum similarity.

A cloud P = {(w_i, v_i)} is compared with Q through
    g(P, Q) = 1/(|P||Q|) sum_i sum_j w_i w'_j k(u_i, u'_j),    u = v / |v|,
    k = a_lin <u, u'> + a_rff k_shift(u, u').
`feature_map` turns a cloud into one vector phi(P) with phi(P).phi(Q) = g(P, Q) (exactly for the linear part, in
expectation over the random Fourier features for the shift-invariant part); `exact_similarity` is the double sum.
"""
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

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
