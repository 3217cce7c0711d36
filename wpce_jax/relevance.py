"""Graded relevance of items to queries from tuples of integer labels, for the ranking objectives.

A label tuple is K integers per example (e.g. (coarse, fine) classes). The grade of an item for a query is:
- "exact": 1 when the two tuples are equal, else 0 (largest grade 1);
- "positional": the number of positions where they agree (largest grade K);
- "hierarchical": the length of their common prefix, (coarse, fine) agreeing on the coarse class only scoring 1
  (largest grade K).
Pure jnp, jit-able, on device; the comparison is [b, B, K], never [B, B, B].
"""
import jax
import jax.numpy as jnp

RULES = ("exact", "positional", "hierarchical")


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


def relevance(query_labels: jax.Array, item_labels: jax.Array, rule: str) -> jax.Array:
    """The grades [b, B] float32 of the items item_labels [B, K] for the queries query_labels [b, K] (int).

    Raises ValueError for another `rule`, non-integer labels or shapes that are not [b, K] and [B, K].
    """
    _check_rule(rule)
    if query_labels.ndim != 2 or item_labels.ndim != 2 or query_labels.shape[1] != item_labels.shape[1]:
        raise ValueError(f"labels must be [b, K] and [B, K] with the same K, got {query_labels.shape} and "
                         f"{item_labels.shape}")
    for labels in (query_labels, item_labels):
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(f"labels must be integers, got {labels.dtype}")
    equal = query_labels[:, None, :] == item_labels[None, :, :]  # [b, B, K]
    if rule == "exact":
        grades = jnp.all(equal, axis=-1)
    elif rule == "positional":
        grades = jnp.sum(equal, axis=-1)
    else:  # the common prefix: positions up to the first disagreement
        grades = jnp.sum(jnp.cumprod(equal, axis=-1), axis=-1)
    return grades.astype(jnp.float32)


def max_grade(rule: str, k: int) -> int:
    """The largest grade of `rule` for tuples of k labels: 1 for "exact", k otherwise (to scale grades to [0, 1])."""
    _check_rule(rule)
    if k < 1:
        raise ValueError(f"label tuples need at least one label, got k = {k}")
    return 1 if rule == "exact" else k
