"""wpce_jax.relevance against brute-force Python loops over random label tuples."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wpce_jax.relevance import RULES, max_grade, relevance


def brute_force(query, item, rule):
    """The grade of one pair of label tuples, from the definitions."""
    if rule == "exact":
        return float(tuple(query) == tuple(item))
    if rule == "positional":
        return float(sum(a == b for a, b in zip(query, item)))
    prefix = 0
    for a, b in zip(query, item):
        if a != b:
            break
        prefix += 1
    return float(prefix)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("rule", RULES)
def test_matches_brute_force(rule, k):
    rng = np.random.default_rng(k)
    # Labels in -1..1 (negative ones are labels too), few enough that every grade 0..k occurs among 6 x 40 pairs.
    queries = rng.integers(-1, 2, size=(6, k)).astype(np.int32)
    items = np.concatenate([queries, rng.integers(-1, 2, size=(34, k))]).astype(np.int32)
    got = jax.jit(relevance, static_argnums=2)(jnp.asarray(queries), jnp.asarray(items), rule)
    want = np.array([[brute_force(q, i, rule) for i in items] for q in queries])
    assert got.shape == (6, 40) and got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got), want)
    # Every grade occurs, the largest (each query against itself, the first items) being max_grade.
    assert set(np.unique(want)) == set(range(max_grade(rule, k) + 1))


def test_rules_differ_where_they_should():
    # (coarse, fine): same fine label under another coarse class is positional 1 but hierarchical 0.
    queries = jnp.asarray([[0, 1]], jnp.int32)
    items = jnp.asarray([[0, 1], [0, 2], [1, 1], [1, 2]], jnp.int32)
    assert relevance(queries, items, "exact").tolist() == [[1, 0, 0, 0]]
    assert relevance(queries, items, "positional").tolist() == [[2, 1, 1, 0]]
    assert relevance(queries, items, "hierarchical").tolist() == [[2, 1, 0, 0]]


def test_max_grade():
    assert [max_grade(rule, 3) for rule in RULES] == [1, 3, 3]
    assert [max_grade(rule, 1) for rule in RULES] == [1, 1, 1]


def test_errors():
    labels = jnp.zeros((4, 2), jnp.int32)
    with pytest.raises(ValueError, match="exact.*positional.*hierarchical"):
        relevance(labels, labels, "partial")
    with pytest.raises(ValueError, match="exact.*positional.*hierarchical"):
        max_grade("partial", 2)
    with pytest.raises(ValueError, match="at least one label"):
        max_grade("exact", 0)
    with pytest.raises(ValueError, match=r"\[b, K\] and \[B, K\] with the same K"):
        relevance(labels, jnp.zeros((4, 3), jnp.int32), "exact")
    with pytest.raises(ValueError, match=r"\[b, K\] and \[B, K\] with the same K"):
        relevance(jnp.zeros(4, jnp.int32), jnp.zeros(4, jnp.int32), "exact")
    with pytest.raises(ValueError, match="labels must be integers"):
        relevance(labels.astype(jnp.float32), labels, "exact")
