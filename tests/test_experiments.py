"""Tiny instances of experiments/pmi_rank.py and experiments/rff_error.py, asserting their qualitative results."""
import importlib.util
import itertools
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from wpce_jax.losses import symmetric_infonce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
    """experiments/ is not a package: import a script by path."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pmi_rank = load("pmi_rank")
rff_error = load("rff_error")


def loop_loss(f, p):
    """L(f) written out term by term, straight from the definition."""
    n = p.shape[0]
    px, py = p.sum(1), p.sum(0)
    loss = -sum(p[x, y] * f[x, y] for x, y in itertools.product(range(n), range(n)))
    loss += 0.5 * sum(px[x] * math.log(sum(py[y] * math.exp(f[x, y]) for y in range(n))) for x in range(n))
    loss += 0.5 * sum(py[y] * math.log(sum(px[x] * math.exp(f[x, y]) for x in range(n))) for y in range(n))
    return loss


def test_closed_form_matches_the_definition():
    p = pmi_rank.make_joint(3, seed=1)
    f = np.random.default_rng(0).normal(size=(3, 3)) * 2
    assert pmi_rank.exact_loss_np(f, p) == pytest.approx(loop_loss(f, p), abs=1e-12)
    assert float(pmi_rank.exact_loss(jnp.asarray(f, jnp.float32), jnp.asarray(p, jnp.float32))) == pytest.approx(
        loop_loss(f, p), abs=1e-5)


def test_infimum_is_minus_mutual_information_at_pmi_plus_constant():
    p = pmi_rank.make_joint(5, seed=2)
    info = pmi_rank.mutual_information(p)
    assert info > 0
    for c in (0.0, 3.7, -2.0):
        assert pmi_rank.exact_loss_np(pmi_rank.pmi(p) + c, p) == pytest.approx(-info, abs=1e-12)
    rng = np.random.default_rng(3)
    for _ in range(20):
        assert pmi_rank.exact_loss_np(pmi_rank.pmi(p) + rng.normal(size=(5, 5)), p) > -info
    assert pmi_rank.pmi_spectrum(p).min() > 1e-3  # full rank


def test_closed_form_is_the_large_batch_limit_of_the_project_infonce():
    """Sampled batches through wpce_jax.losses.symmetric_infonce, minus log B, approach L(f)."""
    n, batch, batches = 4, 4000, 6
    p = pmi_rank.make_joint(n, seed=4)
    f = np.random.default_rng(5).normal(size=(n, n))
    rng = np.random.default_rng(6)
    estimates = []
    for _ in range(batches):
        cells = rng.choice(n * n, size=batch, p=p.ravel())
        xs, ys = cells // n, cells % n
        # Row x_i of f against the one-hot of y_j gives the logit f[x_i, y_j].
        x, y = jnp.asarray(f[xs], jnp.float32), jnp.asarray(np.eye(n)[ys], jnp.float32)
        estimates.append(float(symmetric_infonce(x, y, 1.0)) - math.log(batch))
    assert np.mean(estimates) == pytest.approx(pmi_rank.exact_loss_np(f, p), abs=0.02)


def test_pmi_rank_tiny():
    setting = dict(n=8, dims=(2, 4, 8), points=4, eq_points=(), steps=800, restarts=2)
    result = pmi_rank.run_experiment(setting, log=lambda *_: None)
    gaps = {(r["family"], r["dim"]): r["gap"] for r in result["rows"]}
    assert all(r["gap"] >= -1e-6 for r in result["rows"])
    clip = [gaps["clip", d] for d in setting["dims"]]
    assert clip[0] > clip[1] > clip[2]
    # At d = 2 the inner product is far from the PMI; four points on the circle with the kernel are not.
    assert clip[0] > 10 * gaps["equal_dim", 2] and clip[0] > 0.05


def test_rff_error_slope_is_minus_one_half():
    setting = dict(dims=3, pairs=32, points=3, draws=40, features=(16, 64, 256, 1024))
    result = rff_error.run_experiment(setting, log=lambda *_: None)
    assert set(result["kernels"]) == {"gaussian", "imq", "cauchy", "laplacian"}
    for kind, k in result["kernels"].items():
        assert -0.65 <= k["slope"] <= -0.35, (kind, k)
        assert -0.65 <= k["cloud_slope"] <= -0.35, (kind, k)
