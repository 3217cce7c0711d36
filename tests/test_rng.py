"""wpce_jax/rng.py: the keys of every stream are the fold-in chains runs have always used (so checkpoints and
resumed runs keep their draws), and the streams are distinct."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from wpce_jax import rng
from wpce_jax.similarity import draw_rff, eval_rff, eval_rff_draws, train_rff


def data(key) -> np.ndarray:
    return np.asarray(jax.random.key_data(key))


@pytest.mark.parametrize("seed", [0, 7, 2**31 - 1])
def test_keys_are_the_original_fold_in_chains(seed):
    root = jax.random.key(seed)
    np.testing.assert_array_equal(data(rng.root_key(seed)), data(root))
    np.testing.assert_array_equal(data(rng.init_key(root)), data(jax.random.fold_in(root, 0)))
    np.testing.assert_array_equal(data(rng.eval_rff_key(root)), data(jax.random.fold_in(root, 2)))
    for step in (0, 1, 12345):
        np.testing.assert_array_equal(data(rng.train_rff_key(root, step)),
                                      data(jax.random.fold_in(jax.random.fold_in(root, 1), step)))
    for r in (1, 2, 5):
        np.testing.assert_array_equal(data(rng.eval_rff_draw_key(root, r)),
                                      data(jax.random.fold_in(jax.random.fold_in(root, 2), r)))
    assert (rng.INIT_STREAM, rng.TRAIN_RFF_STREAM, rng.EVAL_RFF_STREAM) == (0, 1, 2)


def test_train_key_under_jit_with_a_traced_step():
    root = jax.random.key(3)
    step = jnp.asarray(17, jnp.int32)
    jitted = jax.jit(lambda k, s: jax.random.key_data(rng.train_rff_key(jax.random.wrap_key_data(k), s)))
    np.testing.assert_array_equal(np.asarray(jitted(jax.random.key_data(root), step)),
                                  data(rng.train_rff_key(root, 17)))


def test_streams_are_distinct():
    root = jax.random.key(0)
    keys = {"root": root, "init": rng.init_key(root), "eval": rng.eval_rff_key(root)}
    keys.update({f"train{s}": rng.train_rff_key(root, s) for s in range(4)})
    keys.update({f"eval_draw{r}": rng.eval_rff_draw_key(root, r) for r in range(1, 4)})
    for (a, ka), (b, kb) in itertools.combinations(keys.items(), 2):
        assert not np.array_equal(data(ka), data(kb)), (a, b)


def test_draw_zero_is_not_an_extra_draw():
    with pytest.raises(ValueError, match="from 1"):
        rng.eval_rff_draw_key(jax.random.key(0), 0)


def rff_config() -> ConfigDict:
    return ConfigDict({"model": {"similarity": "wpce", "embed_dim": 8},
                       "wpce": {"kernel": "gaussian", "scale": 0.5, "num_features": 16, "a_lin": 0.5, "a_rff": 0.5}})


def assert_same_rff(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_similarity_draws_use_the_original_keys():
    """train_rff / eval_rff / eval_rff_draws draw exactly what the inline fold-ins drew before the move."""
    config, root = rff_config(), jax.random.key(5)
    assert_same_rff(train_rff(root, 9, config),
                    draw_rff(jax.random.fold_in(jax.random.fold_in(root, 1), 9), config))
    saved = eval_rff(root, config)
    assert_same_rff(saved, draw_rff(jax.random.fold_in(root, 2), config))
    stacked = eval_rff_draws(root, saved, config, 3)
    stream = jax.random.fold_in(root, 2)
    expected = [saved] + [draw_rff(jax.random.fold_in(stream, r), config) for r in (1, 2)]
    for r in range(3):
        assert_same_rff(jax.tree.map(lambda x, r=r: x[r], stacked), expected[r])
