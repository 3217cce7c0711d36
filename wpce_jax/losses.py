"""Contrastive objectives over a batch of paired embeddings (feature maps or unit vectors).

`symmetric_infonce` is CLIP's loss: the mean of the image->text and text->image cross-entropies of the logits
`logit_scale * x @ y.T`, the positives on the diagonal. With `axis_name` it runs inside `shard_map` on local shards:
each device gathers the other side's embeddings over the axis (the gather's transpose, a reduce-scatter, carries the
gradients back), scores its own rows against the global batch, and the per-row terms are summed over the axis, so the
result is the global loss, identical on every device.
"""
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp

AxisName = Optional[Union[str, Sequence[str]]]


def _check_pair(x: jax.Array, y: jax.Array) -> None:
    if x.ndim != 2 or y.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"x and y must both be [B, F] with the same shape, got {x.shape} and {y.shape}")


def _row_terms(q: jax.Array, keys: jax.Array, labels: jax.Array, scale: jax.Array):
    """Cross-entropy of each row of scale * q @ keys.T against `labels`, and whether its argmax is the label."""
    logits = scale * (q @ keys.T)
    ce = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    correct = jnp.argmax(logits, axis=-1) == labels
    return ce, correct


def infonce_and_accuracy(x: jax.Array, y: jax.Array, logit_scale, axis_name: AxisName = None):
    """Symmetric InfoNCE and its top-1 accuracies.

    x, y: [B, F] (global batch), or [B_local, F] shards inside shard_map when `axis_name` names the data axis.
    logit_scale: scalar, used as is. Computation is float32 (or float64 under x64) whatever the input dtype.
    Returns (loss scalar, {"i2t_top1": scalar, "t2i_top1": scalar}); all are global values, equal on every device.
    """
    _check_pair(x, y)
    dtype = jnp.promote_types(jnp.promote_types(x.dtype, y.dtype), jnp.float32)
    x, y = x.astype(dtype), y.astype(dtype)
    scale = jnp.asarray(logit_scale, dtype)
    local = x.shape[0]
    if axis_name is None:
        x_all, y_all, offset, total = x, y, 0, local
    else:
        x_all = jax.lax.all_gather(x, axis_name, tiled=True)
        y_all = jax.lax.all_gather(y, axis_name, tiled=True)
        offset, total = jax.lax.axis_index(axis_name) * local, x_all.shape[0]
    labels = offset + jnp.arange(local)
    ce_i2t, ok_i2t = _row_terms(x, y_all, labels, scale)
    ce_t2i, ok_t2i = _row_terms(y, x_all, labels, scale)
    sums = jnp.stack([jnp.sum(ce_i2t) + jnp.sum(ce_t2i), jnp.sum(ok_i2t), jnp.sum(ok_t2i)])
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
    loss = sums[0] / (2 * total)
    return loss, {"i2t_top1": sums[1] / total, "t2i_top1": sums[2] / total}


def symmetric_infonce(x: jax.Array, y: jax.Array, logit_scale, axis_name: AxisName = None) -> jax.Array:
    """The symmetric InfoNCE loss (a scalar) of `infonce_and_accuracy`."""
    return infonce_and_accuracy(x, y, logit_scale, axis_name)[0]
