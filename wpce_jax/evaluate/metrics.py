"""Ranking and classification metrics, per query, computed on device under jit (float32).

Shapes: scores [Q, N] (query i, candidate j; higher is better), relevant [Q, N] bool, relevance [Q, N] float >= 0.
Every ranking metric returns a float32 array [Q], one value per query; k is static (a Python int, may exceed N).

Tie rule (all metrics except NDCG and AP): the ranking is a stable descending sort of the scores, so among equal
scores the lower candidate index ranks first. Scores must be finite; -0.0 and 0.0 are the same score.

- recall@k: 1 when some relevant item is among the first k of the ranking, else 0.
- precision@1: whether the first item of the ranking is relevant.
- R-precision, MAP@R (Musgrave et al. 2020, "A Metric Learning Reality Check"): with R the number of relevant items
  of the query and rel(i), P(i) the relevance and precision at rank i (1-based),
  R-precision = (relevant among the first R) / R and MAP@R = (1/R) sum_{i<=R} P(i) rel(i).
- NDCG@k: DCG@k = sum_{i<=k} (2**rel - 1) / log2(i + 1), divided by the DCG@k of the ideal ordering. Ties are
  averaged as scikit-learn does (McSherry & Najork 2008): each group of equal scores gets the mean gain of the group
  at every one of its positions, so a group straddling the k cut-off contributes its mean gain times the sum of its
  discounts at ranks <= k. Equals `sklearn.metrics.ndcg_score([2**rel - 1], [scores], k=k)` per query.
- average precision: sum over thresholds (distinct scores, descending) of (recall increase) * (precision at the
  threshold), i.e. a group of tied scores counts as one step, evaluated at the group's last rank. Equals
  `sklearn.metrics.average_precision_score(relevant, scores)` per query.
A query with no relevant item scores 0 on every ranking metric.

Classification: `top_k_accuracy` (logits [B, C], labels [B]; same tie rule) and `mean_per_class_recall` (host NumPy,
the mean over the classes present in the labels of each class's recall: sklearn's balanced accuracy).

`retrieval_metrics` scores query features against candidate features block by block, on device, and returns only the
per-query numbers; see its docstring for the memory of a block. With `exclude_self` (queries and candidates the same
set) candidate i is left out of query i's ranking, as if its column were deleted (leave-one-out retrieval).
"""
from functools import partial
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


# --------------------------------------------------------------------------------------------- ranking helpers


def _as_f32(x) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    # Canonical zero: the sort orders -0.0 before 0.0 although they are the same score.
    return jnp.where(x == 0, jnp.float32(0), x)


def _check_2d(scores: jax.Array, other: jax.Array, name: str) -> None:
    if scores.ndim != 2 or other.shape != scores.shape:
        raise ValueError(f"scores and {name} must both be [Q, N] with the same shape, got {scores.shape} and "
                         f"{other.shape}")


def _rank_of(scores: jax.Array, index: jax.Array) -> jax.Array:
    """[Q] 0-based rank of candidate `index[q]` under the tie rule: the items that beat it, without a sort."""
    s = jnp.take_along_axis(scores, index[:, None], axis=1)
    cand = jnp.arange(scores.shape[1])[None, :]
    ahead = (scores > s) | ((scores == s) & (cand < index[:, None]))
    return jnp.sum(ahead, axis=1)


def _tie_groups(sorted_scores: jax.Array):
    """First and last position [Q, N] of the tie group that holds each position of a descending-sorted row."""
    q, n = sorted_scores.shape
    pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (q, n))
    differs = sorted_scores[:, 1:] != sorted_scores[:, :-1]
    is_start = jnp.concatenate([jnp.ones((q, 1), bool), differs], axis=1)
    is_end = jnp.concatenate([differs, jnp.ones((q, 1), bool)], axis=1)
    start = jax.lax.cummax(jnp.where(is_start, pos, 0), axis=1)
    end = jax.lax.cummin(jnp.where(is_end, pos, n - 1), axis=1, reverse=True)
    return start, end


def _discounts(k: int) -> jax.Array:
    return 1.0 / jnp.log2(jnp.arange(k, dtype=jnp.float32) + 2.0)


def _ndcg_sorted(sorted_scores, sorted_gains, gains, k: int) -> jax.Array:
    """NDCG@k from a ranked row (gains in ranking order) and the unordered gains for the ideal DCG."""
    kk = min(k, sorted_gains.shape[1])
    start, end = _tie_groups(sorted_scores)
    start, end = start[:, :kk], end[:, :kk]  # only ranks <= k carry a discount
    # Group sums as differences of prefix sums: exact for integer gains (sums below 2**24), else float32-close.
    inclusive = jnp.cumsum(sorted_gains, axis=1)
    exclusive = inclusive - sorted_gains
    group_sum = (jnp.take_along_axis(inclusive, end, axis=1) - jnp.take_along_axis(exclusive, start, axis=1))
    group_mean = group_sum / (end - start + 1).astype(jnp.float32)
    disc = _discounts(kk)
    dcg = jnp.sum(group_mean * disc, axis=1)
    ideal = jnp.sum(jax.lax.top_k(gains, kk)[0] * disc, axis=1)
    return jnp.where(ideal > 0, dcg / jnp.where(ideal > 0, ideal, 1.0), 0.0)


def _ap_sorted(sorted_scores, sorted_rel) -> jax.Array:
    """Average precision with tied scores as one threshold: each relevant item takes the precision at the last
    rank of its tie group."""
    _, end = _tie_groups(sorted_scores)
    hits = jnp.cumsum(sorted_rel, axis=1)
    precision_at_end = jnp.take_along_axis(hits, end, axis=1) / (end + 1).astype(jnp.float32)
    total = hits[:, -1]
    ap = jnp.sum(sorted_rel * precision_at_end, axis=1)
    return jnp.where(total > 0, ap / jnp.maximum(total, 1.0), 0.0)


def _r_metrics_sorted(sorted_rel):
    """(R-precision, MAP@R) of ranked binary relevance rows (float32 0/1)."""
    n = sorted_rel.shape[1]
    r = jnp.sum(sorted_rel, axis=1)
    hits = jnp.cumsum(sorted_rel, axis=1)
    r_int = r.astype(jnp.int32)
    rp = jnp.take_along_axis(hits, jnp.maximum(r_int - 1, 0)[:, None], axis=1)[:, 0]
    ranks = jnp.arange(1, n + 1, dtype=jnp.float32)
    within_r = jnp.arange(n)[None, :] < r_int[:, None]
    ap_r = jnp.sum(jnp.where(within_r, sorted_rel * hits / ranks, 0.0), axis=1)
    safe_r = jnp.maximum(r, 1.0)
    return jnp.where(r > 0, rp / safe_r, 0.0), jnp.where(r > 0, ap_r / safe_r, 0.0)


# --------------------------------------------------------------------------------------------- public metrics
# Views of `_sorted_metrics`, the one implementation (`_counted_metrics` is its fast path for few relevant items).


def _per_query(scores, relevance, name: str, ks: tuple = (), ndcg_k: int = 1) -> dict:
    scores, relevance = _as_f32(scores), jnp.asarray(relevance, jnp.float32)
    _check_2d(scores, relevance, name)
    return _sorted_metrics(scores, relevance, ks, ndcg_k)


@partial(jax.jit, static_argnames="k")
def recall_at_k(scores, relevant, k: int) -> jax.Array:
    """[Q] 1.0 when a relevant item is among the top k (stable descending order: ties go to the lower index)."""
    return _per_query(scores, relevant, "relevant", ks=(k,))[f"recall@{k}"]


@jax.jit
def precision_at_1(scores, relevant) -> jax.Array:
    """[Q] whether the top-ranked item (ties to the lower index) is relevant."""
    return _per_query(scores, relevant, "relevant")["precision@1"]


@partial(jax.jit, static_argnames="k")
def ndcg_at_k(scores, relevance, k: int) -> jax.Array:
    """[Q] NDCG@k with gains 2**rel - 1 and scikit-learn's tie averaging (module docstring)."""
    return _per_query(scores, relevance, "relevance", ndcg_k=k)[f"ndcg@{k}"]


@jax.jit
def average_precision(scores, relevant) -> jax.Array:
    """[Q] average precision, tied scores one threshold (= sklearn's average_precision_score); 0 without relevant."""
    return _per_query(scores, relevant, "relevant")["map"]


@jax.jit
def r_precision(scores, relevant) -> jax.Array:
    """[Q] relevant items among the first R of the ranking, over R (R = relevant count; ties to the lower index)."""
    return _per_query(scores, relevant, "relevant")["r_precision"]


@jax.jit
def map_at_r(scores, relevant) -> jax.Array:
    """[Q] MAP@R: (1/R) sum over the first R ranks of precision times relevance (ties to the lower index)."""
    return _per_query(scores, relevant, "relevant")["map@r"]


@partial(jax.jit, static_argnames="k")
def top_k_accuracy(logits, labels, k: int) -> jax.Array:
    """[B] 1.0 when labels[b] is among the k highest logits of row b (ties to the lower class index).

    Note scikit-learn's top_k_accuracy_score breaks ties the other way (higher index first)."""
    logits, labels = _as_f32(logits), jnp.asarray(labels, jnp.int32)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be [B, C] and labels [B], got {logits.shape} and {labels.shape}")
    return (_rank_of(logits, labels) < k).astype(jnp.float32)


def mean_per_class_recall(predictions, labels, num_classes: int) -> float:
    """Mean over the classes present in `labels` of each class's recall (host NumPy; sklearn's balanced accuracy).

    predictions, labels: [N] int; labels must lie in [0, num_classes), a prediction outside it is simply wrong."""
    predictions = np.asarray(predictions).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if predictions.shape != labels.shape or labels.size == 0:
        raise ValueError(f"predictions and labels must be non-empty [N], got {predictions.shape} and {labels.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes})")
    support = np.bincount(labels, minlength=num_classes)
    correct = np.bincount(labels[predictions == labels], minlength=num_classes)
    present = support > 0
    return float(np.mean(correct[present] / support[present]))


# --------------------------------------------------------------------------------------------- blocked retrieval

# Up to this many relevant candidates per query, `retrieval_metrics` ranks only the relevant items (a few counting
# passes over each score row); beyond it, it sorts each row. On one CPU core a block of 1024 x 25,000 takes ~0.3 s
# per 5 counted items against ~5 s for the sort.
_MAX_COUNTED = 32


def _counted_metrics(scores, relevant_idx, ks: tuple, ndcg_k: int) -> dict:
    """Binary-relevance metrics from the ranks of the relevant items alone, no sort.

    scores [B, N]; relevant_idx [B, R]: the relevant candidates of each query, -1 where a query has fewer than R.
    Relevant item j at 0-based rank rank_j (tie rule) and with ge_j items scoring >= s_j, eq_j of them equal:
    recall@k = any(rank_j < k); AP = mean_j (relevant scoring >= s_j) / ge_j (its tie group's end); NDCG gives j
    1 / eq_j of each discount of its group's ranks gt_j .. ge_j - 1 below k, as the tie-averaging does."""
    n = scores.shape[1]
    valid = relevant_idx >= 0
    idx = jnp.maximum(relevant_idx, 0)
    s_rel = jnp.take_along_axis(scores, idx, axis=1)
    x, y = scores[:, None, :], s_rel[:, :, None]  # [B, 1, N] against [B, R, 1]; each sum is one pass over N
    gt = jnp.sum(x > y, axis=-1)
    eq = jnp.sum(x == y, axis=-1)
    before = jnp.sum((x == y) & (jnp.arange(n)[None, None, :] < idx[:, :, None]), axis=-1)
    rank, ge = gt + before, gt + eq
    r = jnp.sum(valid, axis=1)
    safe_r = jnp.maximum(r, 1).astype(jnp.float32)
    both = valid[:, :, None] & valid[:, None, :]  # [B, R (item j), R (item l)]
    rel_ge = jnp.sum(both & (s_rel[:, None, :] >= s_rel[:, :, None]), axis=-1)
    rel_up_to = jnp.sum(both & (rank[:, None, :] <= rank[:, :, None]), axis=-1)  # ranks are distinct
    out = {}
    for k in ks:
        out[f"recall@{k}"] = jnp.any(valid & (rank < k), axis=1).astype(jnp.float32)
    kk = min(ndcg_k, n)
    disc_cum = jnp.concatenate([jnp.zeros(1), jnp.cumsum(_discounts(kk))])  # disc_cum[t]: ranks < t
    contrib = (disc_cum[jnp.minimum(ge, kk)] - disc_cum[jnp.minimum(gt, kk)]) / eq.astype(jnp.float32)
    ideal = disc_cum[jnp.minimum(r, kk)]
    dcg = jnp.sum(jnp.where(valid, contrib, 0.0), axis=1)
    out[f"ndcg@{ndcg_k}"] = jnp.where(r > 0, dcg / jnp.where(r > 0, ideal, 1.0), 0.0)
    out["map"] = jnp.sum(jnp.where(valid, rel_ge / ge.astype(jnp.float32), 0.0), axis=1) / safe_r
    in_r = valid & (rank < r[:, None])
    out["r_precision"] = jnp.sum(in_r, axis=1) / safe_r
    out["map@r"] = jnp.sum(jnp.where(in_r, rel_up_to / (rank + 1).astype(jnp.float32), 0.0), axis=1) / safe_r
    out["precision@1"] = jnp.any(valid & (rank == 0), axis=1).astype(jnp.float32)
    return out


def _sorted_metrics(scores, relevance, ks: tuple, ndcg_k: int) -> dict:
    """Every ranking metric from one stable sort of each row: scores [B, N] float32, relevance [B, N] float32 >= 0
    (NDCG's gains are 2**rel - 1; the other metrics count rel > 0 as relevant). Each value [B]."""
    gains = jnp.exp2(relevance) - 1.0
    neg, sorted_gains, sorted_rel = jax.lax.sort((-scores, gains, (relevance > 0).astype(jnp.float32)), dimension=1,
                                                 is_stable=True, num_keys=1)
    sorted_scores = -neg
    out = {}
    for k in ks:
        out[f"recall@{k}"] = jnp.max(sorted_rel[:, :k], axis=1)
    out[f"ndcg@{ndcg_k}"] = _ndcg_sorted(sorted_scores, sorted_gains, gains, ndcg_k)
    out["map"] = _ap_sorted(sorted_scores, sorted_rel)
    out["r_precision"], out["map@r"] = _r_metrics_sorted(sorted_rel)
    out["precision@1"] = sorted_rel[:, 0]
    return out


@partial(jax.jit, static_argnames=("block", "ks", "ndcg_k", "counted", "exclude_self", "rows", "replicated"))
def _retrieval_block(queries, query_side, candidates, candidate_groups, start, *, block: int, ks: tuple,
                     ndcg_k: int, counted: bool, exclude_self: bool, rows: Optional[NamedSharding],
                     replicated: Optional[NamedSharding]) -> dict:
    """Metrics [block] of queries start .. start + block - 1; rows past the end repeat the last query and are
    dropped by the caller (clipped indices keep one shape, hence one compile). query_side: [Q, R] relevant
    candidate indices when `counted` (without the query itself under exclude_self), else the query groups [Q].

    exclude_self: query i's own column is made irrelevant and scores -inf, so it ranks last, after every finite
    score and tied with none. An irrelevant item in last place changes no metric (each counts items ranked up to
    a relevant one, or in the top k, where this one adds gain 0), so the numbers are those of the row with the
    column deleted."""
    idx = jnp.minimum(start + jnp.arange(block), queries.shape[0] - 1)
    q = jnp.take(queries, idx, axis=0).astype(jnp.float32)
    side = jnp.take(query_side, idx, axis=0).astype(jnp.int32)
    if rows is not None:  # each device ranks its own rows of the block against all candidates
        q, side = jax.lax.with_sharding_constraint(q, rows), jax.lax.with_sharding_constraint(side, rows)
    # HIGHEST: the default float32 matmul on GPU/TPU rounds inputs (TF32/bf16), which reorders near-ties.
    scores = _as_f32(jnp.matmul(q, candidates.astype(jnp.float32).T, precision=jax.lax.Precision.HIGHEST))
    is_self = jnp.zeros(scores.shape, bool)
    if exclude_self:  # query idx[b] is candidate idx[b]
        is_self = jnp.arange(scores.shape[1])[None, :] == idx[:, None]
        scores = jnp.where(is_self, -jnp.inf, scores)
    if counted:
        out = _counted_metrics(scores, side, ks, ndcg_k)
    else:
        relevant = (side[:, None] == candidate_groups.astype(jnp.int32)[None, :]) & ~is_self
        out = _sorted_metrics(scores, relevant.astype(jnp.float32), ks, ndcg_k)
    if replicated is not None:  # every process can read a replicated result
        out = jax.lax.with_sharding_constraint(out, replicated)
    return out


def _mesh_of(*arrays) -> Optional[Mesh]:
    """The mesh of the first array with a NamedSharding over several devices, its axes made Auto: the block
    function places its rows with sharding constraints, which Explicit axes (jax.make_mesh's default) refuse."""
    for a in arrays:
        if isinstance(a, jax.Array) and isinstance(a.sharding, NamedSharding) and a.sharding.mesh.size > 1:
            mesh = a.sharding.mesh
            return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))
    return None


def _host(x) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _relevant_table(query_groups: np.ndarray, candidate_groups: np.ndarray) -> np.ndarray:
    """[Q, R] int32: the candidates of each query's group (ascending), -1 past their count; R = the size of the
    largest candidate group."""
    order = np.argsort(candidate_groups, kind="stable")
    groups, starts, counts = np.unique(candidate_groups[order], return_index=True, return_counts=True)
    pos = np.minimum(np.searchsorted(groups, query_groups), len(groups) - 1)
    count = np.where(groups[pos] == query_groups, counts[pos], 0)
    cols = np.arange(counts.max())[None, :]
    take = np.minimum(starts[pos][:, None] + cols, len(order) - 1)
    return np.where(cols < count[:, None], order[take], -1).astype(np.int32)


def retrieval_metrics(query_features, candidate_features, query_groups, candidate_groups, *,
                      ks: Sequence[int] = (1, 5, 10), ndcg_k: int = 10, block_size: int = 1024,
                      exclude_self: bool = False) -> dict:
    """Per-query retrieval metrics of query_features [Q, F] against candidate_features [N, F].

    Scores are query_features @ candidate_features.T (float32, full-precision matmul); candidate j is relevant to
    query i iff query_groups[i] == candidate_groups[j] (binary relevance, so NDCG gains are 1). Returns
    {"recall@k" for k in ks, "ndcg@<ndcg_k>", "map", "map@r", "r_precision", "precision@1"}: NumPy float32 [Q],
    with the definitions and tie rules of the module docstring.

    The queries are ranked `block_size` at a time, each block's scores and metrics in one jitted call on device (the
    last block padded to the same shape: a single compile); only the per-query numbers come back, the score matrix
    is never whole anywhere. When no query has more than _MAX_COUNTED relevant candidates (retrieval with a few
    captions per image), only the relevant items are ranked, by counting the scores above them: a block then holds
    its block_size x N scores and O(block_size x R) more. Otherwise each row is sorted: the sort and prefix sums keep
    about eight block_size x N arrays live (scores, relevance, their sorted copies, cumulative sums, tie-group
    bounds), at 1024 x 25,000 (COCO t2i) 100 MB each.

    exclude_self: queries and candidates are one set (the same features and groups, Q == N; the caller passes the
    same arrays on both sides, the shapes and groups are checked): query i's ranking leaves candidate i out
    entirely, so every metric is that of the N - 1 other candidates (leave-one-out, Musgrave et al. 2020). A query
    alone in its group has no relevant item and scores 0.

    Features may be NumPy or jax arrays. When one is a global array with a NamedSharding over a mesh of several
    devices, both feature arrays are replicated over that mesh once (the candidates stay there for every block)
    and each block's rows are split over all mesh axes, so every device ranks its share of the block; the block
    size is then rounded up to a multiple of the device count. Otherwise everything runs on one device. The groups
    (small integer vectors) are read on the host.
    """
    q_shape, c_shape = np.shape(query_features), np.shape(candidate_features)
    if len(q_shape) != 2 or len(c_shape) != 2 or q_shape[1] != c_shape[1]:
        raise ValueError(f"features must be [Q, F] and [N, F], got {q_shape} and {c_shape}")
    if np.shape(query_groups) != q_shape[:1] or np.shape(candidate_groups) != c_shape[:1]:
        raise ValueError(f"groups must be [Q] and [N], got {np.shape(query_groups)} and {np.shape(candidate_groups)}")
    if block_size < 1 or q_shape[0] == 0 or c_shape[0] == 0:
        raise ValueError(f"need queries, candidates and a positive block_size, got {q_shape}, {c_shape}, {block_size}")
    num_queries = q_shape[0]
    q_groups, c_groups = _host(query_groups), _host(candidate_groups)
    if exclude_self and (q_shape != c_shape or not np.array_equal(q_groups, c_groups)):
        raise ValueError(f"exclude_self needs the same set on both sides (Q == N, equal groups), got features "
                         f"{q_shape} and {c_shape}")
    mesh = _mesh_of(query_features, candidate_features, query_groups, candidate_groups)
    block = min(block_size, num_queries)
    if mesh is None:
        device = jax.local_devices()[0]  # jax.devices()[0] may belong to another process
        for a in (query_features, candidate_features):
            if isinstance(a, jax.Array) and len(a.sharding.device_set) == 1:
                device = next(iter(a.sharding.device_set))
                break
        place, rows, replicated = device, None, None
    else:
        place = replicated = NamedSharding(mesh, P())
        rows = NamedSharding(mesh, P(mesh.axis_names))
        block = -(-block // mesh.size) * mesh.size
    table = _relevant_table(q_groups, c_groups)
    if exclude_self:  # row i holds candidate i exactly once (its own group): drop it, the order of the rest kept
        table = table[table != np.arange(num_queries)[:, None]].reshape(num_queries, table.shape[1] - 1)
        table = np.pad(table, ((0, 0), (0, table.shape[1] == 0)), constant_values=-1)  # keep one column
    counted = table.shape[1] <= _MAX_COUNTED
    # Dense int32 ids for the sort path's comparison, whatever the groups' dtype and range.
    ids = np.unique(np.concatenate([q_groups, c_groups]), return_inverse=True)[1].astype(np.int32)
    query_side, c_ids = (table if counted else ids[:num_queries]), ids[num_queries:]
    queries, candidates, query_side, c_ids = (
        jax.device_put(a, place) for a in (query_features, candidate_features, query_side, c_ids))
    # Dispatch every block before reading any result back, so blocks run back to back.
    parts = [_retrieval_block(queries, query_side, candidates, c_ids, jnp.int32(start), block=block,
                              ks=tuple(int(k) for k in ks), ndcg_k=int(ndcg_k), counted=counted,
                              exclude_self=bool(exclude_self), rows=rows, replicated=replicated)
             for start in range(0, num_queries, block)]
    parts = jax.device_get(parts)
    return {name: np.concatenate([p[name] for p in parts])[:num_queries].astype(np.float32) for name in parts[0]}
