"""Kernels and random Fourier features against float64 NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wpce_jax import kernels

KINDS = ["gaussian", "imq", "cauchy", "laplacian"]


def np_kernel(kind, scale, u, v):
    """float64 reference: the closed forms, written independently of the mixing-law derivation."""
    r = np.sqrt(np.sum((u[:, None, :] - v[None, :, :]) ** 2, -1))
    if kind == "gaussian":
        return np.exp(-r**2 / (2 * scale**2))
    if kind == "imq":
        return 1 / np.sqrt(1 + r**2 / scale**2)
    if kind == "cauchy":
        return 1 / (1 + r**2 / scale**2)
    if kind == "laplacian":
        return np.exp(-r / scale)
    if kind == "linear":
        return u @ v.T
    raise AssertionError(kind)


def unit(rng, shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("kind", KINDS + ["linear"])
def test_exact_kernel_matches_numpy(kind):
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=(9, 6)) * 0.4, rng.normal(size=(7, 6)) * 0.4
    got = kernels.exact_kernel(kind, 0.7)(jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32))
    assert got.shape == (9, 7)
    # float32 against float64: 1e-5 relative plus 1e-6 absolute.
    np.testing.assert_allclose(np.asarray(got), np_kernel(kind, 0.7, u, v), rtol=1e-5, atol=1e-6)


def test_exact_kernel_at_zero_distance_is_one_with_finite_gradient():
    u = jnp.asarray(unit(np.random.default_rng(2), (3, 5)), jnp.float32)
    for kind in KINDS:
        k = kernels.exact_kernel(kind, 0.5)
        np.testing.assert_allclose(np.diag(np.asarray(k(u, u))), 1.0, atol=1e-5)
        grad = jax.grad(lambda x: jnp.sum(k(x, x)))(u)
        assert np.all(np.isfinite(np.asarray(grad))), kind


def rff_estimates(kind, scale, u, v, num_features, seeds):
    """z(u_i) . z(v_i) for each pair i and each seed: [seeds, N]."""
    def one(key):
        rff = kernels.sample_rff(key, kind, u.shape[1], num_features, scale)
        return jnp.sum(kernels.rff_map(u, rff) * kernels.rff_map(v, rff), -1)
    keys = jax.random.split(jax.random.key(123), seeds)
    return np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)


@pytest.mark.parametrize("kind,scale", [("gaussian", 0.5), ("imq", 0.5), ("cauchy", 0.8), ("laplacian", 1.0)])
def test_rff_converges_at_monte_carlo_rate(kind, scale):
    rng = np.random.default_rng(3)
    u = unit(rng, (40, 8))
    # Partners at a spread of distances, so that the kernel values cover most of (0, 1].
    v = unit(rng, (40, 8)) * rng.uniform(0, 1.5, (40, 1)) + u
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    exact = np.diag(np_kernel(kind, scale, u, v))
    assert exact.min() < 0.5 < exact.max()
    u32, v32 = jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32)
    rms = {}
    for features in (256, 1024, 4096):
        est = rff_estimates(kind, scale, u32, v32, features, seeds=48)
        rms[features] = np.sqrt(np.mean((est - exact) ** 2))
        if features == 4096:
            # Unbiased: averaged over 48 draws (196k features) the estimate sits within ~0.003 (1 sd) of the kernel;
            # a wrong mixing law shifts it by 0.05 or more at these distances.
            assert np.max(np.abs(est.mean(0) - exact)) < 0.02, (kind, np.abs(est.mean(0) - exact).max())
    # Monte-Carlo rate: error ~ D^(-1/2), so 4x the features halves it. 48 draws x 40 pairs make each RMS
    # accurate to a few per cent; the band [1.6, 2.5] allows for that and fails for a rate of D^-1/4 or an error floor.
    for small, big in ((256, 1024), (1024, 4096)):
        assert 1.6 < rms[small] / rms[big] < 2.5, (kind, rms)


def test_sample_rff_shapes_dtype_and_jit():
    rff = kernels.sample_rff(jax.random.key(0), "imq", 16, 64, 0.5)
    assert rff.frequencies.shape == (64, 16) and rff.phases.shape == (64,)
    assert rff.frequencies.dtype == jnp.float32
    phases = np.asarray(rff.phases)
    assert phases.min() >= 0 and phases.max() < 2 * np.pi
    jitted = jax.jit(kernels.sample_rff, static_argnums=(1, 2, 3))(jax.random.key(0), "imq", 16, 64, 0.5)
    np.testing.assert_allclose(np.asarray(jitted.frequencies), np.asarray(rff.frequencies), rtol=1e-6)
    other = kernels.sample_rff(jax.random.key(1), "imq", 16, 64, 0.5)
    assert not np.allclose(np.asarray(other.frequencies), np.asarray(rff.frequencies))


def test_gaussian_frequencies_have_the_spectral_variance():
    # omega ~ N(0, 1/sigma^2 I): with sigma 0.5 the variance is 4 (20000 x 4 draws: standard error ~0.02).
    rff = kernels.sample_rff(jax.random.key(5), "gaussian", 4, 20000, 0.5)
    np.testing.assert_allclose(np.var(np.asarray(rff.frequencies, np.float64)), 4.0, rtol=0.03)


def test_rff_map_matches_numpy():
    rng = np.random.default_rng(4)
    rff = kernels.sample_rff(jax.random.key(2), "gaussian", 6, 32, 0.5)
    x = rng.normal(size=(3, 5, 6))
    w, b = np.asarray(rff.frequencies, np.float64), np.asarray(rff.phases, np.float64)
    want = np.sqrt(2 / 32) * np.cos(x @ w.T + b)
    got = kernels.rff_map(jnp.asarray(x, jnp.float32), rff)
    assert got.shape == (3, 5, 32)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-6)


@pytest.mark.parametrize("args,match", [
    (("laplace", 4, 8, 0.5), "kernel kind"),
    (("gaussian", 4, 8, 0.0), "scale must be > 0"),
    (("gaussian", 4, 8, -1.0), "scale must be > 0"),
    (("gaussian", 4, 0, 0.5), "num_features must be a positive int"),
    (("gaussian", 0, 8, 0.5), "dim_in must be a positive int"),
])
def test_sample_rff_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        kernels.sample_rff(jax.random.key(0), *args)


def test_bad_kernel_arguments():
    with pytest.raises(ValueError, match="kernel kind"):
        kernels.exact_kernel("polynomial", 1.0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        kernels.exact_kernel("imq", -2.0)
    rff = kernels.sample_rff(jax.random.key(0), "gaussian", 4, 8, 0.5)
    with pytest.raises(ValueError, match="dimension 5 but the RFF draw expects 4"):
        kernels.rff_map(jnp.ones((2, 5)), rff)
    with pytest.raises(ValueError, match="share their last dimension"):
        kernels.exact_kernel("gaussian", 1.0)(jnp.ones((2, 4)), jnp.ones((2, 5)))
