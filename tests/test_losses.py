"""Symmetric InfoNCE: float64 NumPy reference, and sharded over 8 fake devices against the unsharded loss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from wpce_jax.losses import infonce_and_accuracy, symmetric_infonce


def np_infonce(x, y, scale):
    logits = scale * x @ y.T

    def ce(l):
        m = l.max(1, keepdims=True)
        return np.mean(np.log(np.exp(l - m).sum(1)) + m[:, 0] - np.diag(l))

    labels = np.arange(len(x))
    return (ce(logits) + ce(logits.T)) / 2, np.mean(logits.argmax(1) == labels), np.mean(logits.argmax(0) == labels)


def pair(rng, b=32, f=12):
    x = rng.normal(size=(b, f))
    return x, 0.6 * x + rng.normal(size=(b, f))  # correlated, so accuracies are neither 0 nor 1


def test_matches_numpy():
    x, y = pair(np.random.default_rng(0))
    loss, metrics = infonce_and_accuracy(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), 3.0)
    want, i2t, t2i = np_infonce(x, y, 3.0)
    assert 0 < i2t < 1 and i2t != t2i
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert float(metrics["i2t_top1"]) == pytest.approx(i2t) and float(metrics["t2i_top1"]) == pytest.approx(t2i)
    assert float(symmetric_infonce(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), 3.0)) == float(loss)


def test_sharded_loss_and_gradients_equal_unsharded():
    x, y = (jnp.asarray(a, jnp.float32) for a in pair(np.random.default_rng(1), b=64))
    mesh = jax.make_mesh((8,), ("data",))
    batch = NamedSharding(mesh, P("data"))
    xs, ys = jax.device_put(x, batch), jax.device_put(y, batch)

    def sharded(x, y, scale):
        return jax.shard_map(lambda a, b, s: infonce_and_accuracy(a, b, s, axis_name="data"), mesh=mesh,
                             in_specs=(P("data"), P("data"), P()), out_specs=P())(x, y, scale)

    def loss_sharded(x, y, s):
        return sharded(x, y, s)[0]

    (loss, metrics), (loss1, metrics1) = jax.jit(sharded)(xs, ys, 2.5), infonce_and_accuracy(x, y, 2.5)
    np.testing.assert_allclose(float(loss), float(loss1), rtol=1e-6)
    for name in metrics1:
        assert float(metrics[name]) == float(metrics1[name])
    grads = jax.jit(jax.grad(loss_sharded, argnums=(0, 1, 2)))(xs, ys, 2.5)
    grads1 = jax.grad(symmetric_infonce, argnums=(0, 1, 2))(x, y, 2.5)
    # Same float32 sums in a different order: 1e-5 relative, 1e-7 absolute.
    for g, g1 in zip(grads, grads1):
        np.testing.assert_allclose(np.asarray(g), np.asarray(g1), rtol=1e-5, atol=1e-7)
    want, _, _ = np_infonce(np.asarray(x, np.float64), np.asarray(y, np.float64), 2.5)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_gradient_matches_numpy_finite_differences():
    rng = np.random.default_rng(2)
    x, y = pair(rng, b=6, f=4)
    g = np.asarray(jax.grad(symmetric_infonce)(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), 2.0))
    eps, fd = 1e-6, np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        d = np.zeros_like(x)
        d[idx] = eps
        fd[idx] = (np_infonce(x + d, y, 2.0)[0] - np_infonce(x - d, y, 2.0)[0]) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=1e-4, atol=1e-6)


def test_bf16_inputs_give_a_float32_loss():
    x, y = pair(np.random.default_rng(3))
    loss = symmetric_infonce(jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16), jnp.bfloat16(3.0))
    assert loss.dtype == jnp.float32
    xb, yb = (np.asarray(jnp.asarray(a, jnp.bfloat16), np.float64) for a in (x, y))
    np.testing.assert_allclose(float(loss), np_infonce(xb, yb, 3.0)[0], rtol=1e-5)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\[B, F\] with the same shape"):
        symmetric_infonce(jnp.ones((4, 3)), jnp.ones((4, 2)), 1.0)
    with pytest.raises(ValueError, match=r"\[B, F\] with the same shape"):
        symmetric_infonce(jnp.ones((4, 3, 1)), jnp.ones((4, 3, 1)), 1.0)
