"""wpce_jax.losses.ranking_loss against rax 0.4.0 (the learning-to-rank library of JAX) and float64 NumPy loops,
and sharded over 8 fake devices against the unsharded loss."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rax
from jax.sharding import NamedSharding, PartitionSpec as P

from wpce_jax.losses import RANKING_KINDS, ranking_loss
from wpce_jax.parallel import BATCH_AXES, make_mesh

SCALE = 2.0


def np_softplus(u):
    return np.logaddexp(0.0, u)


# ---- float64 NumPy references, one query (list) at a time, written from the definitions.

def np_softmax(s, rel):
    return np.mean([np.sum(rel[i] * (np.logaddexp.reduce(s[i]) - s[i])) for i in range(len(s))])


def np_pairwise_logistic(s, rel):
    terms = [np_softplus(-(s[i, j] - s[i, k])) for i in range(len(s)) for j in range(s.shape[1])
             for k in range(s.shape[1]) if rel[i, j] > rel[i, k]]
    return np.mean(terms) if terms else 0.0


def np_approx_ndcg(s, rel):
    values = []
    for i in range(len(s)):
        n = s.shape[1]
        ranks = [1 + sum(1 / (1 + np.exp(-(s[i, k] - s[i, j]))) for k in range(n) if k != j) for j in range(n)]
        gains = 2.0 ** rel[i] - 1
        dcg = sum(gains[j] / np.log2(1 + ranks[j]) for j in range(n))
        ideal = sum(g / np.log2(2 + r) for r, g in enumerate(sorted(gains, reverse=True)))
        values.append(dcg / ideal if ideal > 0 else 0.0)  # rax: a query without a relevant item scores 0
    return -np.mean(values)


def np_pointwise_sigmoid(s, rel):
    label = np.clip(rel, 0, 1)
    return np.mean(label * np_softplus(-s) + (1 - label) * np_softplus(s))


NUMPY = {"softmax": np_softmax, "pairwise_logistic": np_pairwise_logistic, "approx_ndcg": np_approx_ndcg,
         "pointwise_sigmoid": np_pointwise_sigmoid}


def rax_approx_ndcg(scores, labels):
    # rax.approx_t12n(rax.ndcg_metric) is exactly this (rax/_src/t12n.py: the metric's rank_fn and cutoff_fn
    # replaced by their sigmoid approximations at temperature 1, negated), but it calls jax.util.wraps, which
    # JAX 0.10 removed; so the test composes the same rax pieces.
    step = jax.nn.sigmoid
    return -rax.ndcg_metric(scores, labels, rank_fn=functools.partial(rax.utils.approx_ranks, step_fn=step),
                            cutoff_fn=functools.partial(rax.utils.approx_cutoff, step_fn=step))


RAX = {"softmax": rax.softmax_loss, "pairwise_logistic": rax.pairwise_logistic_loss,
       "approx_ndcg": rax_approx_ndcg, "pointwise_sigmoid": rax.pointwise_sigmoid_loss}


def inputs(seed, b=32, f=8):
    """float32 x, y [b, f] (correlated, scores of a few units) and graded relevance [b, b] in {0, 1, 2}, with two
    queries without any relevant item and one whose items are all equally relevant (no pair); pointwise_sigmoid
    gets the grades divided by 2 (probabilities)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, f))
    y = 0.6 * x + rng.normal(size=(b, f))
    rel = rng.choice(3, size=(b, b), p=[0.6, 0.25, 0.15]).astype(np.float32)
    rel[[1, b - 3]] = 0  # on the first and last device when sharded
    rel[b // 2] = 1
    return jnp.asarray(x / 3, jnp.float32), jnp.asarray(y / 3, jnp.float32), jnp.asarray(rel)


def relevance_for(kind, rel):
    return rel / 2 if kind == "pointwise_sigmoid" else rel


def rax_loss(kind):
    return lambda x, y, rel, scale: RAX[kind](scale * (x @ y.T), rel)


@pytest.mark.parametrize("kind", RANKING_KINDS)
def test_matches_rax_and_numpy(kind):
    x, y, rel = inputs(0)
    rel = relevance_for(kind, rel)
    # jit: eager dispatch of every small op of the two gradients takes longer than compiling them.
    loss, grads = jax.jit(jax.value_and_grad(functools.partial(ranking_loss, kind=kind), argnums=(0, 1, 3)))(
        x, y, rel, SCALE)
    want, want_grads = jax.jit(jax.value_and_grad(rax_loss(kind), argnums=(0, 1, 3)))(x, y, rel, SCALE)
    assert loss.shape == () and loss.dtype == jnp.float32 and float(loss) != 0
    # Both float32, the same formulas summed in other orders: 1e-5 relative; gradients 1e-5 relative, 1e-6
    # absolute (entries near 0).
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
    for g, w in zip(grads, want_grads):
        assert np.any(np.asarray(w) != 0)
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)
    # float32 against float64 loops on the float32 inputs: 1e-5 relative.
    s64 = SCALE * np.asarray(x, np.float64) @ np.asarray(y, np.float64).T
    np.testing.assert_allclose(float(loss), NUMPY[kind](s64, np.asarray(rel, np.float64)), rtol=1e-5)


def test_pointwise_sigmoid_clips_grades_to_probabilities():
    x, y, rel = inputs(1)  # grades 0..2: 2 is taken as 1, as rax does
    loss = ranking_loss(x, y, rel, SCALE, "pointwise_sigmoid")
    np.testing.assert_allclose(float(loss), float(rax_loss("pointwise_sigmoid")(x, y, rel, SCALE)), rtol=1e-5)
    np.testing.assert_allclose(float(loss), float(ranking_loss(x, y, jnp.minimum(rel, 1), SCALE,
                                                                "pointwise_sigmoid")), rtol=1e-6)


@pytest.mark.parametrize("kind", RANKING_KINDS)
def test_sharded_value_and_gradients_equal_unsharded(kind):
    x, y, rel = inputs(2)
    rel = relevance_for(kind, rel)
    mesh = make_mesh(fsdp=2)  # the training mesh: ("data", "fsdp") = (4, 2), the batch over both
    rows = NamedSharding(mesh, P(BATCH_AXES))
    placed = [jax.device_put(a, rows) for a in (x, y, rel)]

    def sharded(x, y, rel, scale):
        return jax.shard_map(functools.partial(ranking_loss, kind=kind, axis_name=BATCH_AXES), mesh=mesh,
                             in_specs=(P(BATCH_AXES),) * 3 + (P(),), out_specs=P())(x, y, rel, scale)

    loss, grads = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 3)))(*placed, SCALE)
    loss1, grads1 = jax.value_and_grad(ranking_loss, argnums=(0, 1, 3))(x, y, rel, SCALE, kind)
    # Same float32 sums in a different order: 1e-5 relative, 1e-7 absolute.
    np.testing.assert_allclose(float(loss), float(loss1), rtol=1e-5, atol=1e-7)
    for g, g1 in zip(grads, grads1):
        assert np.any(np.asarray(g1) != 0)
        np.testing.assert_allclose(np.asarray(g), np.asarray(g1), rtol=1e-5, atol=1e-7)


def test_queries_without_a_relevant_item_count_zero_in_the_mean():
    # Scores s = x (y the identity, scale 1) of two queries over two items; query 1 has no relevant item. As in
    # rax, it stays in the mean over queries: softmax (log 2 + 0) / 2; ApproxNDCG with equal scores ranks both items
    # 1 + sigmoid(0) = 1.5, so NDCG_0 = 1 / log2(2.5) and the loss -(NDCG_0 + 0) / 2.
    x, y = jnp.zeros((2, 2)), jnp.eye(2)
    rel = jnp.asarray([[1.0, 0.0], [0.0, 0.0]])
    assert float(ranking_loss(x, y, rel, 1.0, "softmax")) == pytest.approx(np.log(2) / 2)
    assert float(ranking_loss(x, y, rel, 1.0, "approx_ndcg")) == pytest.approx(-0.5 / np.log2(2.5))
    # Pairwise: the one pair (query 0: item 0 over item 1), log(1 + e^0); the mean over pairs, not queries.
    assert float(ranking_loss(x, y, rel, 1.0, "pairwise_logistic")) == pytest.approx(np.log(2))


def test_no_preferred_pair_gives_zero_and_zero_gradients():
    x, y, _ = inputs(3, b=8)
    rel = jnp.ones((8, 8))  # every item equally relevant: no pair with rel_j > rel_k
    loss, grads = jax.jit(jax.value_and_grad(functools.partial(ranking_loss, kind="pairwise_logistic"),
                                             argnums=(0, 1)))(x, y, rel, SCALE)
    assert float(loss) == 0.0 and all(np.all(np.asarray(g) == 0) for g in grads)
    assert float(rax.pairwise_logistic_loss(SCALE * x @ y.T, rel)) == 0.0


@pytest.mark.parametrize("kind", RANKING_KINDS)
def test_bf16_inputs_give_a_float32_scalar(kind):
    x, y, rel = inputs(4, b=8)
    rel = relevance_for(kind, rel)[:, :8]
    low = [a.astype(jnp.bfloat16) for a in (x, y)]
    loss = ranking_loss(*low, rel, SCALE, kind)
    assert loss.shape == () and loss.dtype == jnp.float32
    # The computation is the float32 one on the (exactly representable) upcast inputs.
    np.testing.assert_allclose(float(loss), float(ranking_loss(*(a.astype(jnp.float32) for a in low), rel, SCALE,
                                                               kind)), rtol=1e-6)


def test_errors():
    x = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="softmax.*pairwise_logistic.*approx_ndcg.*pointwise_sigmoid"):
        ranking_loss(x, x, jnp.ones((4, 4)), 1.0, "listnet")
    with pytest.raises(ValueError, match=r"relevance must be \[queries, global items\]"):
        ranking_loss(x, x, jnp.ones((4, 3)), 1.0, "softmax")
    with pytest.raises(ValueError, match=r"\[B, F\] with the same shape"):
        ranking_loss(x, jnp.ones((4, 2)), jnp.ones((4, 4)), 1.0, "softmax")
