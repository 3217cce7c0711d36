"""Point-cloud feature maps and exact similarities against float64 NumPy brute force."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from test_kernels import np_kernel
from wpce_jax import kernels
from wpce_jax.pointcloud import PointCloud, exact_similarity, feature_map


def random_cloud(rng, b, m, d, masked=True):
    points = rng.normal(size=(b, m, d))
    weights = rng.normal(size=(b, m)) * 3
    mask = rng.random((b, m)) > 0.35 if masked else None
    if masked:
        mask[0, 0] = True  # at least one valid point in the first cloud; another cloud may be empty
    return points, weights, mask


def as_cloud(points, weights, mask):
    return PointCloud(jnp.asarray(points, jnp.float32), jnp.asarray(weights, jnp.float32),
                      None if mask is None else jnp.asarray(mask))


def np_unit(points):
    return points / np.maximum(np.linalg.norm(points, axis=-1, keepdims=True), 1e-6)


def np_feature_map(points, weights, mask, rff, a_lin, a_rff):
    w_freq, phase = np.asarray(rff.frequencies, np.float64), np.asarray(rff.phases, np.float64)
    out = []
    for b in range(points.shape[0]):
        valid = np.ones(points.shape[1], bool) if mask is None else mask[b]
        u, w = np_unit(points[b][valid]), weights[b][valid]
        n = max(valid.sum(), 1)
        lin = (w[:, None] * u).sum(0) / n
        z = np.sqrt(2 / len(phase)) * np.cos(u @ w_freq.T + phase)
        out.append(np.concatenate([np.sqrt(a_lin) * lin, np.sqrt(a_rff) * (w[:, None] * z).sum(0) / n]))
    return np.stack(out)


def np_exact_similarity(x, y, kind, scale, a_lin, a_rff):
    """The double sum written as loops over clouds: independent of the blocked implementation."""
    (px, wx, mx), (py, wy, my) = x, y
    out = np.zeros((px.shape[0], py.shape[0]))
    for i, j in itertools.product(range(px.shape[0]), range(py.shape[0])):
        vi = np.ones(px.shape[1], bool) if mx is None else mx[i]
        vj = np.ones(py.shape[1], bool) if my is None else my[j]
        ui, uj = np_unit(px[i][vi]), np_unit(py[j][vj])
        k = a_lin * (ui @ uj.T) + a_rff * np_kernel(kind, scale, ui, uj)
        out[i, j] = wx[i][vi] @ k @ wy[j][vj] / (max(vi.sum(), 1) * max(vj.sum(), 1))
    return out


@pytest.mark.parametrize("masked", [True, False])
def test_feature_map_matches_numpy(masked):
    rng = np.random.default_rng(0)
    x = random_cloud(rng, 6, 9, 5, masked)
    if masked:
        x[2][3] = False  # an empty cloud maps to zero
    rff = kernels.sample_rff(jax.random.key(0), "gaussian", 5, 48, 0.5)
    got = feature_map(as_cloud(*x), rff, 0.667, 0.333)
    assert got.shape == (6, 5 + 48) and got.dtype == jnp.float32
    # float32 against float64 on O(1) values: 2e-6 absolute.
    np.testing.assert_allclose(np.asarray(got), np_feature_map(*x, rff, 0.667, 0.333), atol=2e-6)
    if masked:
        assert not np.any(np.asarray(got)[3])


def test_masked_points_do_not_matter():
    rng = np.random.default_rng(1)
    points, weights, mask = random_cloud(rng, 4, 7, 6)
    rff = kernels.sample_rff(jax.random.key(1), "imq", 6, 32, 0.5)
    base = feature_map(as_cloud(points, weights, mask), rff, 0.5, 0.5)
    points2, weights2 = points.copy(), weights.copy()
    points2[~mask] = rng.normal(size=points2[~mask].shape) * 100
    weights2[~mask] = 1e4
    np.testing.assert_array_equal(np.asarray(feature_map(as_cloud(points2, weights2, mask), rff, 0.5, 0.5)),
                                  np.asarray(base))


def test_points_are_normalised_inside():
    rng = np.random.default_rng(2)
    points, weights, mask = random_cloud(rng, 3, 5, 4)
    rff = kernels.sample_rff(jax.random.key(2), "gaussian", 4, 16, 0.5)
    scaled = points * rng.uniform(0.1, 10, (3, 5, 1))
    np.testing.assert_allclose(np.asarray(feature_map(as_cloud(scaled, weights, mask), rff, 0.6, 0.4)),
                               np.asarray(feature_map(as_cloud(points, weights, mask), rff, 0.6, 0.4)), atol=2e-6)


@pytest.mark.parametrize("kind", ["gaussian", "imq", "cauchy", "laplacian"])
def test_exact_similarity_matches_brute_force(kind):
    rng = np.random.default_rng(3)
    x, y = random_cloud(rng, 5, 6, 4), random_cloud(rng, 7, 3, 4)
    # Tiny blocks force several blocks on both axes with padding (5 = 2+2+1 clouds, 7 = 2+2+2+1).
    got = exact_similarity(as_cloud(*x), as_cloud(*y), kind, 0.5, 0.667, 0.333, max_block_elements=2 * 6 * 3 * 2)
    assert got.shape == (5, 7)
    np.testing.assert_allclose(np.asarray(got), np_exact_similarity(x, y, kind, 0.5, 0.667, 0.333), atol=5e-6)
    whole = exact_similarity(as_cloud(*x), as_cloud(*y), kind, 0.5, 0.667, 0.333)
    np.testing.assert_allclose(np.asarray(whole), np.asarray(got), atol=1e-6)


def test_linear_only_path():
    rng = np.random.default_rng(4)
    x = random_cloud(rng, 5, 6, 8)
    cloud = as_cloud(*x)
    rff = kernels.sample_rff(jax.random.key(3), "gaussian", 8, 64, 0.5)
    no_rff = feature_map(cloud, None, 0.7, 0.3)
    zero_weight = feature_map(cloud, rff, 0.7, 0.0)
    assert no_rff.shape == zero_weight.shape == (5, 8)
    np.testing.assert_array_equal(np.asarray(no_rff), np.asarray(zero_weight))
    # The linear part is exact: phi . phi equals the exact similarity with a_rff = 0.
    exact = exact_similarity(cloud, cloud, "gaussian", 0.5, 0.7, 0.0)
    np.testing.assert_allclose(np.asarray(no_rff @ no_rff.T), np.asarray(exact), atol=2e-6)
    np.testing.assert_allclose(np.asarray(exact), np_exact_similarity(x, x, "gaussian", 0.5, 0.7, 0.0), atol=2e-6)


def test_feature_maps_estimate_the_exact_similarity():
    rng = np.random.default_rng(5)
    x, y = random_cloud(rng, 4, 6, 8), random_cloud(rng, 5, 4, 8)
    exact = np_exact_similarity(x, y, "gaussian", 0.5, 0.667, 0.333)
    rff = kernels.sample_rff(jax.random.key(4), "gaussian", 8, 65536, 0.5)
    est = feature_map(as_cloud(*x), rff, 0.667, 0.333) @ feature_map(as_cloud(*y), rff, 0.667, 0.333).T
    # Monte-Carlo error of the shift part: ~ a_rff * |w|^2 * sqrt(1/D) ~ 0.333 * 10 * 0.004 ~ 0.013 (1 sd).
    np.testing.assert_allclose(np.asarray(est), exact, atol=0.06)


def test_bf16_points_give_float32_maps():
    rng = np.random.default_rng(6)
    p, w, m = random_cloud(rng, 3, 4, 8)
    cloud = PointCloud(jnp.asarray(p, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16), jnp.asarray(m))
    rff = kernels.sample_rff(jax.random.key(5), "gaussian", 8, 16, 0.5)
    assert feature_map(cloud, rff, 0.5, 0.5).dtype == jnp.float32
    assert exact_similarity(cloud, cloud, "gaussian", 0.5, 0.5, 0.5).dtype == jnp.float32


def test_pointcloud_passes_through_jit_and_shard_map():
    rng = np.random.default_rng(7)
    rff = kernels.sample_rff(jax.random.key(6), "gaussian", 4, 16, 0.5)
    mesh = jax.make_mesh((8,), ("data",))
    for masked in (True, False):
        cloud = as_cloud(*random_cloud(rng, 16, 5, 4, masked))
        want = feature_map(cloud, rff, 0.5, 0.5)
        np.testing.assert_allclose(np.asarray(jax.jit(feature_map)(cloud, rff, 0.5, 0.5)), np.asarray(want),
                                   atol=1e-6)
        spec = PointCloud(P("data"), P("data"), None if cloud.mask is None else P("data"))
        placed = jax.device_put(cloud, jax.tree.map(lambda s: NamedSharding(mesh, s), spec))
        sharded = jax.shard_map(lambda c: feature_map(c, rff, 0.5, 0.5), mesh=mesh,
                                in_specs=(spec,), out_specs=P("data"))(placed)
        np.testing.assert_allclose(np.asarray(sharded), np.asarray(want), atol=1e-6)


def test_bad_clouds_are_rejected():
    rng = np.random.default_rng(8)
    p, w, m = random_cloud(rng, 3, 4, 8)
    rff = kernels.sample_rff(jax.random.key(7), "gaussian", 8, 16, 0.5)
    good = as_cloud(p, w, m)
    with pytest.raises(ValueError, match=r"cloud.weights must be \[B, M\]"):
        feature_map(as_cloud(p, w[:, :3], m), rff, 0.5, 0.5)
    with pytest.raises(ValueError, match=r"cloud.mask must be \[B, M\]"):
        feature_map(as_cloud(p, w, m[:2]), rff, 0.5, 0.5)
    with pytest.raises(ValueError, match=r"cloud.points must be \[B, M, d\]"):
        feature_map(PointCloud(jnp.ones((3, 8)), jnp.ones((3,))), rff, 0.5, 0.5)
    with pytest.raises(ValueError, match="expects 8"):
        feature_map(as_cloud(p[..., :6], w, m), rff, 0.5, 0.5)
    with pytest.raises(ValueError, match="a_rff is a kernel mixing weight"):
        feature_map(good, rff, 0.5, -0.5)
    with pytest.raises(ValueError, match="a_lin is a kernel mixing weight"):
        exact_similarity(good, good, "gaussian", 0.5, -1.0, 0.5)
    with pytest.raises(ValueError, match="share their dimension, got 8 and 6"):
        exact_similarity(good, as_cloud(p[..., :6], w, m), "gaussian", 0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="kernel kind"):
        exact_similarity(good, good, "rbf", 0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="scale must be > 0"):
        exact_similarity(good, good, "gaussian", 0.0, 0.5, 0.5)
