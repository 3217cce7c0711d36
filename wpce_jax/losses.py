"""Contrastive and metric-learning objectives over a batch of embeddings (feature maps or unit vectors).

Paired objectives, over x, y [B, F] whose row i of x and row i of y are a positive pair:

- `symmetric_infonce` (with `infonce_and_accuracy`): CLIP's loss, the mean of the image->text and text->image
  cross-entropies of the logits `logit_scale * x @ y.T`, the positives on the diagonal.
- `nt_xent`: SimCLR's normalised-temperature cross-entropy over the 2B views `[x; y]`, each view's positive its
  partner and its negatives the other 2B - 2 views.
- `sigmoid_loss`: SigLIP's pairwise logistic loss, every (i, j) an independent binary "is a pair" problem.
- `nce_loss`: noise-contrastive estimation, the real pairs against the B - 1 in-batch pairings of each row as noise
  (the sigmoid loss with the bias fixed at -log(B - 1)); its optimum is the pointwise mutual information.

Labelled objectives, over one set x [B, F] with integer labels [B] (equal labels: a similar pair):

- `margin_contrastive_loss`: Hadsell et al.'s contrastive loss over all ordered pairs i != j.
- `triplet_loss`: FaceNet's triplet loss on squared distances with "semihard", "hard" (batch-hard) or "all"
  triplet mining.

Ranking objective, over queries x and items y [B, F] with graded relevance [B, B] (query i against item j):

- `ranking_loss`: rax's softmax, pairwise logistic (RankNet), ApproxNDCG and pointwise sigmoid losses of the scores
  `logit_scale * x @ y.T`, with rax's default reductions.

Every objective returns a float32 scalar (float64 under x64) whatever the input dtype. With `axis_name` each runs
inside `shard_map` on local shards: the device gathers the global batch over the axis (the gather's transpose, a
reduce-scatter, carries the gradients back), computes the terms of its own rows against every row, and the sums
(and, for the means over a data-dependent number of terms, the counts) are summed over the axis before dividing, so
the result is the global loss, identical on every device, and so are its gradients.
"""
import math
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp

from wpce_jax.kernels import squared_distances

AxisName = Optional[Union[str, Sequence[str]]]
MININGS = ("semihard", "hard", "all")


def _check_pair(x: jax.Array, y: jax.Array) -> None:
    if x.ndim != 2 or y.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"x and y must both be [B, F] with the same shape, got {x.shape} and {y.shape}")


def _check_labelled(x: jax.Array, labels: jax.Array) -> None:
    if x.ndim != 2 or jnp.shape(labels) != x.shape[:1]:
        raise ValueError(f"x must be [B, F] and labels [B], got {x.shape} and {jnp.shape(labels)}")
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise ValueError(f"labels must be integers, got {jnp.result_type(labels)}")


def _float(*arrays: jax.Array):
    """The arrays in their common dtype promoted to at least float32 (bf16 sums would lose the loss), and that dtype."""
    dtype = jnp.promote_types(jnp.result_type(*arrays), jnp.float32)
    return dtype, tuple(a.astype(dtype) for a in arrays)


def _global(axis_name: AxisName, local: int, *arrays: jax.Array):
    """The global batch of each array (gathered over `axis_name`) and the global index of this device's first row."""
    if axis_name is None:
        return arrays, 0
    return (tuple(jax.lax.all_gather(a, axis_name, tiled=True) for a in arrays),
            jax.lax.axis_index(axis_name) * local)


def _psum(sums: jax.Array, axis_name: AxisName) -> jax.Array:
    return sums if axis_name is None else jax.lax.psum(sums, axis_name)


def _mean(total: jax.Array, count: jax.Array, axis_name: AxisName) -> jax.Array:
    """sum / count over the global batch; 0 where there is no term at all (a NaN would poison a whole training run)."""
    total, count = _psum(jnp.stack([total, count.astype(total.dtype)]), axis_name)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), 0)


def _row_terms(q: jax.Array, keys: jax.Array, labels: jax.Array, scale: jax.Array, exclude=None):
    """Cross-entropy of each row of scale * q @ keys.T against `labels`, and whether its argmax is the label.

    exclude: optional [rows] column index per row taken out of the softmax (a view is not its own negative).
    """
    logits = scale * (q @ keys.T)
    if exclude is not None:
        logits = jnp.where(jnp.arange(keys.shape[0]) == exclude[:, None], -jnp.inf, logits)
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
    dtype, (x, y) = _float(x, y)
    scale = jnp.asarray(logit_scale, dtype)
    local = x.shape[0]
    (x_all, y_all), offset = _global(axis_name, local, x, y)
    total = x_all.shape[0]
    labels = offset + jnp.arange(local)
    ce_i2t, ok_i2t = _row_terms(x, y_all, labels, scale)
    ce_t2i, ok_t2i = _row_terms(y, x_all, labels, scale)
    sums = _psum(jnp.stack([jnp.sum(ce_i2t) + jnp.sum(ce_t2i), jnp.sum(ok_i2t), jnp.sum(ok_t2i)]), axis_name)
    loss = sums[0] / (2 * total)
    return loss, {"i2t_top1": sums[1] / total, "t2i_top1": sums[2] / total}


def symmetric_infonce(x: jax.Array, y: jax.Array, logit_scale, axis_name: AxisName = None) -> jax.Array:
    """The symmetric InfoNCE loss (a scalar) of `infonce_and_accuracy`."""
    return infonce_and_accuracy(x, y, logit_scale, axis_name)[0]


def nt_xent(x: jax.Array, y: jax.Array, temperature, axis_name: AxisName = None) -> jax.Array:
    """SimCLR's NT-Xent loss of the two views x, y: [B, F] (or [B_local, F] shards of the same rows).

    With z = [x; y] (2B rows) and logits l_ij = z_i . z_j / temperature, row i's positive p(i) is its partner
    (x_i <-> y_i) and its negatives are the other 2B - 2 rows (itself excluded):
        loss = (1 / 2B) sum_i [ -l_{i p(i)} + log sum_{j != i} exp(l_ij) ].
    temperature: scalar, used as is. Returns the float32 scalar. At B = 1 it is 0 (the positive is the only term).
    """
    _check_pair(x, y)
    dtype, (x, y) = _float(x, y)
    local = x.shape[0]
    (x_all, y_all), offset = _global(axis_name, local, x, y)
    total = x_all.shape[0]
    rows = offset + jnp.arange(local)
    # Global row indices in [x_all; y_all]: x row r is r, y row r is B + r.
    self_index = jnp.concatenate([rows, total + rows])
    partner = jnp.concatenate([total + rows, rows])
    ce, _ = _row_terms(jnp.concatenate([x, y]), jnp.concatenate([x_all, y_all]), partner,
                       1 / jnp.asarray(temperature, dtype), exclude=self_index)
    return _psum(jnp.sum(ce), axis_name) / (2 * total)


def sigmoid_loss(x: jax.Array, y: jax.Array, logit_scale, logit_bias, axis_name: AxisName = None) -> jax.Array:
    """SigLIP's pairwise sigmoid loss of x, y: [B, F] (or [B_local, F] shards), a scalar.

        loss = -(1/B) sum_i sum_j log sigmoid(z_ij (logit_scale * x_i . y_j + logit_bias)),
    z_ii = 1, z_ij = -1 for i != j. logit_scale, logit_bias: scalars, used as is.
    """
    _check_pair(x, y)
    dtype, (x, y) = _float(x, y)
    local = x.shape[0]
    (y_all,), offset = _global(axis_name, local, y)
    logits = jnp.asarray(logit_scale, dtype) * (x @ y_all.T) + jnp.asarray(logit_bias, dtype)
    positive = jnp.arange(y_all.shape[0]) == (offset + jnp.arange(local))[:, None]
    # log_sigmoid is stable for large |logits|, where log(sigmoid(.)) would give -inf.
    terms = -jax.nn.log_sigmoid(jnp.where(positive, logits, -logits))
    return _psum(jnp.sum(terms), axis_name) / y_all.shape[0]


def nce_loss(x: jax.Array, y: jax.Array, logit_scale, axis_name: AxisName = None) -> jax.Array:
    """NCE of the real pairs (x_i, y_i) against the k = B - 1 noise pairs (x_i, y_j), j != i, of each row.

    x, y: [B, F] (or [B_local, F] shards); s_ij = logit_scale * x_i . y_j:
        loss = (1/B) sum_i [ -log sigmoid(s_ii - log k) - sum_{j != i} log sigmoid(-(s_ij - log k)) ].
    The noise pairs sample the product of the marginals, so the optimum is s = PMI(x, y). It is the sigmoid loss
    with the bias fixed at -log k. Raises ValueError at B = 1 (no noise pair).
    """
    _check_pair(x, y)
    total = x.shape[0] * (1 if axis_name is None else jax.lax.axis_size(axis_name))
    if total < 2:
        raise ValueError(f"nce_loss needs a global batch of at least 2 (B - 1 noise pairs per real one), got {total}")
    return sigmoid_loss(x, y, logit_scale, -math.log(total - 1), axis_name)


def pair_distances(x: jax.Array, labels: jax.Array, axis_name: AxisName = None):
    """Squared distances d [B_local, B] of this device's rows to every row (of the global batch with `axis_name`),
    and the similar / dissimilar masks: `similar` excludes the row itself; `dissimilar` is label_i != label_j.
    """
    local = x.shape[0]
    (x_all, labels_all), offset = _global(axis_name, local, x, labels)
    # One matmul ([B, B, F] differences would not fit at large B), clipped at 0 against rounding.
    d = squared_distances(x, x_all)
    same = labels[:, None] == labels_all[None, :]
    not_self = jnp.arange(x_all.shape[0]) != (offset + jnp.arange(local))[:, None]
    return d, same & not_self, ~same


def _safe_sqrt(d: jax.Array) -> jax.Array:
    """sqrt with gradient 0 at 0 instead of inf (identical vectors), so a NaN cannot reach the parameters."""
    positive = d > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, d, 1)), 0)


def margin_contrastive_loss(x: jax.Array, labels: jax.Array, margin, axis_name: AxisName = None) -> jax.Array:
    """Contrastive loss with a margin (Hadsell, Chopra & LeCun 2006) of x: [B, F] with labels: [B] int.

    Over all ordered pairs i != j, D_ij = |x_i - x_j| (Euclidean), y_ij = 0 if label_i == label_j else 1:
        loss = 1 / (B (B - 1)) sum_{i != j} [ (1 - y_ij) D_ij^2 / 2 + y_ij max(0, margin - D_ij)^2 / 2 ].
    Returns 0.0 at B = 1 (no pair). The gradient is finite where two rows coincide.
    """
    _check_labelled(x, labels)
    dtype, (x,) = _float(x)
    d, similar, dissimilar = pair_distances(x, labels, axis_name)
    hinge = jnp.maximum(jnp.asarray(margin, dtype) - _safe_sqrt(d), 0)
    terms = jnp.where(similar, d, 0) + jnp.where(dissimilar, hinge * hinge, 0)
    count = jnp.sum(similar) + jnp.sum(dissimilar)
    return _mean(jnp.sum(terms) / 2, count, axis_name)


def _sorted_negatives(d: jax.Array, dissimilar: jax.Array):
    """Each anchor's negative distances in ascending order, the non-negatives after them.

    Returns (keys: the sorted distances with +inf for non-negatives, for searchsorted; values: the same distances
    gathered from d so gradients reach the chosen ones; count: the number of negatives per anchor).
    """
    keys = jnp.where(dissimilar, d, jnp.inf)
    order = jnp.argsort(keys, axis=-1)
    return (jnp.take_along_axis(keys, order, axis=-1), jnp.take_along_axis(d, order, axis=-1),
            jnp.sum(dissimilar, axis=-1))


# searchsorted of every candidate's distance into its anchor's sorted negatives: O(B^2 log B), no [B, B, B] tensor.
_rank = jax.vmap(lambda keys, queries, side: jnp.searchsorted(keys, queries, side=side), in_axes=(0, 0, None))


def triplet_loss(x: jax.Array, labels: jax.Array, margin, mining: str = "semihard",
                 axis_name: AxisName = None) -> jax.Array:
    """Triplet loss (FaceNet) of x: [B, F] with labels: [B] int, on squared distances d_ab = |x_a - x_b|^2.

    Each triplet (anchor a, positive p != a with label_p == label_a, negative n with label_n != label_a) costs
    max(0, d_ap - d_an + margin). `mining` picks which are averaged:
    - "semihard" (as TF-Addons' triplet_semihard_loss): for each ordered positive pair (a, p), n is the negative with
      the smallest d_an > d_ap, or, where there is none, the negative with the largest d_an; the mean over all
      positive pairs (whose anchor has a negative).
    - "hard" (batch-hard): for each anchor, its largest d_ap and smallest d_an; the mean over the anchors that have
      both a positive and a negative.
    - "all": the mean over every valid triplet, the zero terms included (so easy triplets dilute it).
    The selection is not differentiated; gradients flow through the chosen distances. Returns 0.0 when there is no
    valid triplet at all. Raises ValueError for another `mining`.
    """
    if mining not in MININGS:
        raise ValueError(f"mining must be one of {MININGS}, got {mining!r}")
    _check_labelled(x, labels)
    dtype, (x,) = _float(x)
    margin = jnp.asarray(margin, dtype)
    d, similar, dissimilar = pair_distances(x, labels, axis_name)
    has_negative = jnp.any(dissimilar, axis=-1, keepdims=True)
    if mining == "hard":
        d_ap = jnp.take_along_axis(d, jnp.argmax(jnp.where(similar, d, -jnp.inf), axis=-1)[:, None], axis=-1)
        d_an = jnp.take_along_axis(d, jnp.argmin(jnp.where(dissimilar, d, jnp.inf), axis=-1)[:, None], axis=-1)
        valid = jnp.any(similar, axis=-1, keepdims=True) & has_negative
        terms = jnp.where(valid, jnp.maximum(d_ap - d_an + margin, 0), 0)
        return _mean(jnp.sum(terms), jnp.sum(valid), axis_name)
    keys, values, count = _sorted_negatives(d, dissimilar)
    pairs = similar & has_negative  # d[a, p] for every candidate p, d_ap where `pairs`
    if mining == "semihard":
        # Index of the first negative with d_an > d_ap; past the last negative, fall back to the last (largest).
        first_farther = _rank(keys, d, "right")
        chosen = jnp.minimum(first_farther, jnp.maximum(count[:, None] - 1, 0))
        d_an = jnp.take_along_axis(values, chosen, axis=-1)
        terms = jnp.where(pairs, jnp.maximum(d - d_an + margin, 0), 0)
        return _mean(jnp.sum(terms), jnp.sum(pairs), axis_name)
    # "all": sum_n max(0, t - d_an) with t = d_ap + margin is c t - (sum of the c smallest d_an), c = #{d_an < t}.
    t = d + margin
    below = _rank(keys, t, "left")
    prefix = jnp.concatenate([jnp.zeros_like(values[:, :1]), jnp.cumsum(values, axis=-1)], axis=-1)
    terms = jnp.where(pairs, below * t - jnp.take_along_axis(prefix, below, axis=-1), 0)
    # Counted in floating point: B^3 triplets overflow int32 at B ~ 1300.
    return _mean(jnp.sum(terms), jnp.sum(jnp.where(pairs, count[:, None].astype(dtype), 0)), axis_name)


RANKING_KINDS = ("softmax", "pairwise_logistic", "approx_ndcg", "pointwise_sigmoid")


def ranking_loss(x: jax.Array, y: jax.Array, relevance: jax.Array, logit_scale, kind: str,
                 axis_name: AxisName = None) -> jax.Array:
    """A learning-to-rank loss of the queries x against the items y with graded relevance (a scalar).

    x, y: [B, F] (or [b, F] shards of the same rows with `axis_name`); relevance: [B, B] (or [b, B]: this device's
    queries against every global item), float >= 0. Each query i is a list over the B items, scored by
    s_ij = logit_scale * x_i . y_j (logit_scale: scalar, used as is). The value is rax 0.4.0's loss with its
    default reductions on the global [B, B] scores and relevance (query = list, item = list entry):
    - "softmax" (rax.softmax_loss): per query -sum_j rel_ij log softmax(s_i)_j, relevance as given (not
      normalised); the mean over all B queries, a query with no relevant item counting 0.
    - "pairwise_logistic" (RankNet, rax.pairwise_logistic_loss): log(1 + exp(-(s_ij - s_ik))) for every pair of
      items with rel_ij > rel_ik in the same query; the mean over all such pairs of all queries (queries with more
      pairs weigh more); 0 when there is no pair at all.
    - "approx_ndcg" (Qin et al. 2010; rax.approx_t12n(rax.ndcg_metric), temperature 1): approximate ranks
      r_ij = 1 + sum_{k != j} sigmoid(s_ik - s_ij), gains 2^rel - 1, NDCG_i = sum_j gain_ij / log2(1 + r_ij)
      divided by the ideal DCG (the gains sorted descending, at ranks 1..B); NDCG_i = 0 where the ideal DCG is 0
      (no relevant item). The loss is -mean_i NDCG_i over all B queries: as rax's default, queries without a
      relevant item count 0 and are not excluded.
    - "pointwise_sigmoid" (rax.pointwise_sigmoid_loss): the binary cross-entropy of sigmoid(s_ij) against
      rel_ij clipped to [0, 1] (give grades divided by the largest one); the mean over all B * B entries.
    Memory: "pairwise_logistic" and "approx_ndcg" build [b, B, B] pair terms on each device (rax does the same
    per list): 4 b B^2 bytes in float32, e.g. 0.5 GiB per device at B = 1024 on 8 devices, but 32 GiB at B = 4096;
    fine at the batch sizes this mode is trained with, not at CLIP's. "softmax" and "pointwise_sigmoid" are [b, B].
    Raises ValueError for another `kind` or mismatched shapes.
    """
    if kind not in RANKING_KINDS:
        raise ValueError(f"kind must be one of {RANKING_KINDS}, got {kind!r}")
    _check_pair(x, y)
    dtype, (x, y, relevance) = _float(x, y, relevance)
    local = x.shape[0]
    (y_all,), _ = _global(axis_name, local, y)
    total = y_all.shape[0]  # x is split like y, so this is also the global number of queries
    if relevance.shape != (local, total):
        raise ValueError(f"relevance must be [queries, global items] = {(local, total)}, got {relevance.shape}")
    s = jnp.asarray(logit_scale, dtype) * (x @ y_all.T)  # [b, B]
    if kind == "softmax":
        terms = -relevance * jax.nn.log_softmax(s, axis=-1)
        return _psum(jnp.sum(terms), axis_name) / total
    if kind == "pointwise_sigmoid":
        # -[l log sigmoid(s) + (1 - l) log sigmoid(-s)] = softplus(s) - l s, stable for large |s|.
        terms = jax.nn.softplus(s) - s * jnp.clip(relevance, 0, 1)
        return _psum(jnp.sum(terms), axis_name) / (total * total)
    if kind == "pairwise_logistic":
        # [b, B, B]: pair (j, k) of query i; the mean over a data-dependent number of pairs needs the global count.
        preferred = relevance[:, :, None] > relevance[:, None, :]
        terms = jnp.where(preferred, jax.nn.softplus(s[:, None, :] - s[:, :, None]), 0)
        return _mean(jnp.sum(terms), jnp.sum(preferred), axis_name)
    # approx_ndcg. sum_k sigmoid(s_ik - s_ij) over all k includes k = j, which is sigmoid(0) = 1/2 (with no gradient
    # through it), so the rank is 1/2 + the full sum: no diagonal mask.
    ranks = 0.5 + jnp.sum(jax.nn.sigmoid(s[:, None, :] - s[:, :, None]), axis=-1)  # [b, B]
    gains = jnp.exp2(relevance) - 1
    dcg = jnp.sum(gains / jnp.log2(1 + ranks), axis=-1)
    ideal = jnp.sum(jnp.sort(gains, axis=-1)[:, ::-1] / jnp.log2(2 + jnp.arange(total, dtype=dtype)), axis=-1)
    ndcg = dcg / jnp.where(ideal == 0, 1, ideal)
    return -_psum(jnp.sum(ndcg), axis_name) / total
