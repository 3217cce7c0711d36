"""Linear probe: the L-BFGS fit against scikit-learn's LogisticRegression on digits, the C search's visiting order
(with a fake fit), the full protocol against a scikit-learn pipeline, input validation, rows sharded over 8 devices
against 1, and features memory-mapped from disk."""
import os
import tempfile

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.utils.class_weight import compute_sample_weight
from jax.sharding import Mesh
from threadpoolctl import threadpool_limits

from wpce_jax.evaluate import linear_probe as lp
from wpce_jax.evaluate.encode import FeatureFiles

# Probabilities agree within 1e-3 (the requirement); the solver's float32 stop (gradient 1e-6 of its value at zero)
# gives about 1e-4 on these problems.
PROBA_ATOL = 1e-3


def sklearn_fit(x, y, C, **kwargs):
    # float64 input, so scikit-learn solves in float64; one BLAS thread, as threads oversubscribe the shared cores.
    with threadpool_limits(1):
        return LogisticRegression(C=C, max_iter=10000, tol=1e-10, **kwargs).fit(np.asarray(x, np.float64), y)


def objective(probe, x, y, C, weights):
    """The float64 objective ||W||^2 / 2 + C * sum_n s_n CE_n of weights [F, K] and bias [K]."""
    w, b = (np.asarray(a, np.float64) for a in probe)
    logits = x @ w + b
    top = logits.max(1, keepdims=True)
    ce = np.log(np.exp(logits - top).sum(1)) + top[:, 0] - logits[np.arange(len(y)), y]
    return 0.5 * np.sum(w**2) + C * np.sum(weights * ce)


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return x / 16, y


@pytest.fixture(scope="module", params=["pixels", "projected"])
def features(request, digits):
    """Pixels in [0, 1], or a fixed random projection + tanh of them: dense, correlated, network-like features."""
    x, y = digits
    if request.param == "projected":
        x = np.tanh(x @ np.random.default_rng(0).normal(size=(64, 128)) / 4)
    return x, y


@pytest.fixture(scope="module")
def imbalanced(digits):
    """Classes 0..4 of digits with 150, 80, 40, 20 and 10 examples."""
    x, y = digits
    rows = np.concatenate([np.flatnonzero(y == c)[:n] for c, n in enumerate([150, 80, 40, 20, 10])])
    return x[rows], y[rows]


# 1e-6: the fit is near zero (probabilities near the class priors); 1e3: nearly unregularised, sklearn still
# converges. Objectives agree to 1e-6 relative up to C = 10; at 1e3 the objective is flat (far from its value at
# zero, little curvature): the float32 stop lands up to 6e-5 above the float64 optimum, probabilities within 1e-4.
@pytest.mark.parametrize("C, objective_rtol", [(1e-6, 1e-6), (1e-3, 1e-6), (1e-1, 1e-6), (10.0, 1e-6), (1e3, 3e-4)])
def test_fit_matches_sklearn(features, C, objective_rtol):
    x, y = features
    probe = lp.fit(x.astype(np.float32), y, 10, C)
    reference = sklearn_fit(x, y, C)
    assert probe.weights.shape == (x.shape[1], 10) and probe.bias.shape == (10,)
    np.testing.assert_allclose(np.asarray(probe.predict_proba(x)), reference.predict_proba(x), atol=PROBA_ATOL)
    assert (np.asarray(probe.predict(x)) == reference.predict(x)).mean() > 0.999
    ours = objective((probe.weights, probe.bias), x, y, C, 1.0)
    theirs = objective((reference.coef_.T, reference.intercept_), x, y, C, 1.0)
    assert ours <= theirs * (1 + objective_rtol)


@pytest.mark.parametrize("C", [1e-3, 1e-1, 10.0])
def test_balanced_fit_matches_sklearn(imbalanced, C):
    x, y = imbalanced
    weights = lp.class_balanced_weights(y, 5)
    np.testing.assert_allclose(weights, compute_sample_weight("balanced", y), rtol=1e-12)
    probe = lp.fit(x, y, 5, C, sample_weight=weights)
    reference = sklearn_fit(x, y, C, class_weight="balanced")
    np.testing.assert_allclose(np.asarray(probe.predict_proba(x)), reference.predict_proba(x), atol=PROBA_ATOL)
    ours = objective((probe.weights, probe.bias), x, y, C, weights)
    assert ours <= objective((reference.coef_.T, reference.intercept_), x, y, C, weights) * (1 + 1e-6)


def test_absent_classes_get_probability_zero(imbalanced):
    """Classes 5..9 have no example: they are left out of the softmax; the others fit as if they did not exist."""
    x, y = imbalanced
    probe = lp.fit(x, y, 10, 1.0)
    proba = np.asarray(probe.predict_proba(x))
    assert np.all(proba[:, 5:] == 0) and np.all(np.isneginf(np.asarray(probe.bias[5:])))
    np.testing.assert_allclose(proba[:, :5], sklearn_fit(x, y, 1.0).predict_proba(x), atol=PROBA_ATOL)
    # A class whose examples all weigh 0 is absent too.
    weights = (y != 4).astype(np.float64)
    assert np.all(np.asarray(lp.fit(x, y, 5, 1.0, sample_weight=weights).predict_proba(x))[:, 4] == 0)


def test_warm_start_from_the_neighbouring_grid_C(digits):
    x, y = digits
    C, neighbour = lp.C_GRID[56], lp.C_GRID[55]  # 10 and 10**0.875
    cold = lp.fit(x, y, 10, C)
    warm = lp.fit(x, y, 10, C, init=lp.fit(x, y, 10, neighbour))
    # L-BFGS rebuilds its curvature memory, so the saving is modest (82 -> 56 steps here), not a few steps.
    assert bool(cold.converged) and bool(warm.converged) and int(warm.iterations) < 0.8 * int(cold.iterations)
    np.testing.assert_allclose(np.asarray(warm.predict_proba(x)), np.asarray(cold.predict_proba(x)), atol=PROBA_ATOL)


class FakeProbe:
    def __init__(self, index):
        self.index = index

    def predict(self, features):
        return np.full(len(features), self.index)  # "predicts" its grid index, which the fake score reads


def search_with_fake_fit(monkeypatch, curve):
    """Runs search_C with fits that only record (grid index, warm-start index); the score of index i is curve[i]."""
    calls = []

    def fake_fit(features, labels, num_classes, C, *, sample_weight=None, init=None):
        index = int(np.argmin(np.abs(lp.C_GRID - C)))
        calls.append((index, None if init is None else init.index))
        return FakeProbe(index)

    monkeypatch.setattr(lp, "fit", fake_fit)
    x, y = np.zeros((40, 3)), np.arange(40) % 2
    lines = []
    best, scores = lp.search_C(x, y, 2, score=lambda labels, predictions: curve[predictions[0]], log=lines.append)
    assert len(lines) == 5  # one per stage
    return best, scores, calls


def test_search_visits_the_predicted_indices(monkeypatch):
    curve = -np.abs(np.arange(97) - 37.0)  # peak at index 37
    best, scores, calls = search_with_fake_fit(monkeypatch, curve)
    indices = [i for i, _ in calls]
    # Coarse 0..96 step 16 -> 32 best; spacing 8: 24, 40 -> 40; spacing 4: 36, 44 -> 36; spacing 2: 34, 38 -> 38
    # ties with 36, the smaller C wins; spacing 1: 35, 37 -> 37.
    assert indices == [0, 16, 32, 48, 64, 80, 96, 24, 40, 36, 44, 34, 38, 35, 37]
    assert best == lp.C_GRID[37] and scores == {lp.C_GRID[i]: curve[i] for i in indices}
    # Each fit starts from the nearest grid index fitted before it.
    for k, (i, init) in enumerate(calls):
        earlier = [j for j, _ in calls[:k]]
        assert (init is None) == (k == 0)
        assert k == 0 or abs(init - i) == min(abs(j - i) for j in earlier)


def test_search_ties_go_to_the_smaller_C(monkeypatch):
    best, _, calls = search_with_fake_fit(monkeypatch, np.zeros(97))
    assert [i for i, _ in calls] == [0, 16, 32, 48, 64, 80, 96, 8, 4, 2, 1] and best == lp.C_GRID[0]
    # Best at the top of the grid: the stages look below it only.
    best, _, calls = search_with_fake_fit(monkeypatch, np.arange(97.0))
    assert [i for i, _ in calls] == [0, 16, 32, 48, 64, 80, 96, 88, 92, 94, 95] and best == lp.C_GRID[96]


def test_validation_split_is_stratified_seeded_and_disjoint(digits):
    _, y = digits
    train, val = lp.validation_split(y, 0.1, seed=3)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(y)
    for c in range(10):
        assert abs(np.sum(y[val] == c) - 0.1 * np.sum(y == c)) <= 0.5
    assert np.array_equal(val, lp.validation_split(y, 0.1, seed=3)[1])
    assert not np.array_equal(val, lp.validation_split(y, 0.1, seed=4)[1])
    # A class of one example stays in training.
    assert 2 not in np.array([0, 0, 1, 1, 2])[lp.validation_split(np.array([0, 0, 1, 1, 2]), 0.5, 0)[1]]


def sklearn_protocol(train_x, train_y, test_x, test_y, balanced):
    """The protocol with scikit-learn fits: the same validation split, staged search and refit."""
    train, val = lp.validation_split(train_y, 0.1, seed=0)
    metric = balanced_accuracy_score if balanced else accuracy_score
    extra = {"class_weight": "balanced"} if balanced else {}
    scores = {}

    def score(i):
        model = sklearn_fit(train_x[train], train_y[train], lp.C_GRID[i], **extra)
        scores[i] = metric(train_y[val], model.predict(train_x[val]))

    for i in range(0, 97, 16):
        score(i)
    for spacing in (8, 4, 2, 1):
        best = min(scores, key=lambda i: (-scores[i], i))
        for i in (best - spacing, best + spacing):
            if 0 <= i < 97 and i not in scores:
                score(i)
    best = min(scores, key=lambda i: (-scores[i], i))
    predictions = sklearn_fit(train_x, train_y, lp.C_GRID[best], **extra).predict(test_x)
    return {"top1": accuracy_score(test_y, predictions), "mean_per_class_recall":
            balanced_accuracy_score(test_y, predictions), "C": lp.C_GRID[best]}, scores


@pytest.mark.parametrize("balanced", [False, True])
def test_evaluate_matches_a_sklearn_pipeline(digits, imbalanced, balanced):
    """All of digits by top-1; the imbalanced classes 0..4 by mean per-class recall with balanced weights."""
    x, y = imbalanced if balanced else digits
    num_classes = 5 if balanced else 10
    train_x, test_x, train_y, test_y = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    lines = []
    result = lp.evaluate(train_x, train_y, test_x, test_y, num_classes, balanced=balanced, log=lines.append)
    assert len(lines) == 6 and all("C=" in line for line in lines)  # five stages and the refit
    assert set(result) == {"top1", "mean_per_class_recall", "C"}
    # Pixels suffice for > 0.9 on all of digits; the imbalanced test split has only 3 to 45 examples per class.
    assert result["top1"] > (0.85 if balanced else 0.9) and result["mean_per_class_recall"] > 0.85
    reference, reference_scores = sklearn_protocol(train_x, train_y, test_x, test_y, balanced)
    # Validation scores at the C values both searched may differ by one borderline example (1e-3 in
    # probabilities), the chosen C then by a few grid steps, test scores by a couple of examples.
    _, ours = lp.search_C(train_x, train_y, num_classes, balanced=balanced, log=lambda line: None)
    val_y = train_y[lp.validation_split(train_y, 0.1, 0)[1]]
    counts = np.bincount(val_y)[np.unique(val_y)]
    one_example = 1 / (len(counts) * counts.min()) if balanced else 1 / len(val_y)
    common = [i for i in reference_scores if lp.C_GRID[i] in ours]
    assert len(common) >= 10
    for i in common:
        assert abs(ours[lp.C_GRID[i]] - reference_scores[i]) <= one_example + 1e-12
    for name in ("top1", "mean_per_class_recall"):
        assert result[name] == pytest.approx(reference[name], abs=0.02)


def test_input_validation(imbalanced):
    x, y = imbalanced
    bad_fits = [
        ((x[0], y, 5, 1.0), {}, "features"),
        ((x, y[:-1], 5, 1.0), {}, "labels"),
        ((x, y.astype(float), 5, 1.0), {}, "labels"),
        ((x, y, 4, 1.0), {}, r"\[0, 4\)"),
        ((x, y - 1, 5, 1.0), {}, r"\[0, 5\)"),
        ((x, y, 1, 1.0), {}, "num_classes"),
        ((x, y, 5, 0.0), {}, "C must be positive"),
        ((x, y, 5, np.nan), {}, "C must be positive"),
        ((np.where(x == 0, np.nan, x), y, 5, 1.0), {}, "NaN"),
        ((x, y, 5, 1.0), {"sample_weight": -np.ones(len(y))}, "sample_weight"),
        ((x, y, 5, 1.0), {"sample_weight": np.ones(3)}, "sample_weight"),
        ((x, y, 5, 1.0), {"tol": 0.0}, "tol"),
    ]
    for args, kwargs, match in bad_fits:
        with pytest.raises(ValueError, match=match):
            lp.fit(*args, **kwargs)
    probe = lp.fit(x, y, 5, 1.0)
    with pytest.raises(ValueError, match="init"):
        lp.fit(x, y, 6, 1.0, init=probe)
    with pytest.raises(ValueError, match="features"):
        probe.predict(x[:, :10])
    with pytest.raises(ValueError, match="val_fraction"):
        lp.search_C(x, y, 5, val_fraction=1.0)
    with pytest.raises(ValueError, match="width"):
        lp.evaluate(x, y, x[:, :10], y, 5)
    with pytest.raises(ValueError, match="labels"):
        lp.class_balanced_weights(y, 3)


def test_two_processes_fit_as_one(digits, tmp_path):
    """The rows split over 2 processes x 4 devices (gloo collectives, as a multi-host evaluation runs the probe)
    against one process's 8 devices: the same probe to the C search's tolerance, the same predictions."""
    import sys

    from runs import ROOT, cpu_env, run_two_processes

    C, script = 1e-2, os.path.join(ROOT, "tests", "probe_two_processes.py")
    env = {**cpu_env(4), "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    run_two_processes(lambda port, i: [sys.executable, script, str(port), str(i), str(tmp_path / "probe.npz"), str(C)],
                      env, timeout=300)
    two = np.load(tmp_path / "probe.npz")
    assert int(two["devices"]) == 8
    x, y = digits
    one = lp.fit(x, y, 10, C, mesh=mesh_of(8))
    got = jax.nn.softmax(x @ two["weights"] + two["bias"], axis=-1)
    np.testing.assert_allclose(got, np.asarray(one.predict_proba(x)), atol=2e-4)
    np.testing.assert_array_equal(two["predicted"], np.asarray(one.predict(x)))


def mesh_of(count):
    return Mesh(np.asarray(jax.devices()[:count]), ("rows",))


@pytest.mark.parametrize("C", [1e-2, 10.0])
def test_eight_devices_equal_one(digits, C):
    """Rows over 8 devices (1797 = 8 * 224 + 5: three padding rows of weight 0) against 1 device (no padding)."""
    x, y = digits
    rows = lp.put_rows(x, mesh_of(8))
    assert rows.x.shape == (1800, 64) and len(rows.x.sharding.device_set) == 8 and len(rows) == 1797
    eight, one = lp.fit(rows, y, 10, C), lp.fit(x, y, 10, C, mesh=mesh_of(1))
    assert len(one.weights.sharding.device_set) == 1 and eight.weights.sharding.is_fully_replicated
    # Sums in another order: the two solves stop at slightly different points, both 1e-4 from scikit-learn's.
    np.testing.assert_allclose(np.asarray(eight.predict_proba(x)), np.asarray(one.predict_proba(x)), atol=2e-4)
    np.testing.assert_allclose(np.asarray(eight.predict_proba(x)), sklearn_fit(x, y, C).predict_proba(x),
                               atol=PROBA_ATOL)
    assert np.array_equal(eight.predict(rows), np.asarray(eight.predict(x)))


def test_zero_weight_rows_are_left_out(digits):
    """The C search's fits of the train part: every row on the mesh, the held-out ones with weight 0."""
    x, y = digits
    train, _ = lp.validation_split(y, 0.1, 0)
    weights = np.zeros(len(y))
    weights[train] = lp.class_balanced_weights(y[train], 10)
    masked = lp.fit(x, y, 10, 1.0, sample_weight=weights)
    subset = lp.fit(x[train], y[train], 10, 1.0, sample_weight=weights[train])
    np.testing.assert_allclose(np.asarray(masked.predict_proba(x)), np.asarray(subset.predict_proba(x)), atol=2e-4)


def test_memmapped_features_round_trip_and_fit(digits, tmp_path, monkeypatch):
    """FeatureFiles: rows written at shuffled positions in batches, some never written (undecodable images), come
    back in position order; kept in a directory or in deleted temporary files; a fit reading the memmap a few rows
    at a time equals the fit of the array."""
    x, y = digits
    x = x.astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    keep = np.sort(order[:-40])  # 40 positions never written
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    os.makedirs(tmp_path / "tmp")
    for directory in (str(tmp_path / "kept"), None):
        files = FeatureFiles(len(x), directory)
        for batch in np.array_split(order[:-40], 7):
            files.write("pooled", batch, x[batch])
        pooled = files.finish(keep)["pooled"]
        assert isinstance(pooled, np.memmap) and not pooled.flags.writeable
        np.testing.assert_array_equal(pooled, x[keep])
    assert os.listdir(tmp_path / "tmp") == []  # the temporary file is gone, its rows still mapped
    saved = np.load(tmp_path / "kept" / "pooled.npy", mmap_mode="r")[:len(keep)]
    np.testing.assert_array_equal(saved, x[keep])
    monkeypatch.setattr(lp, "_HOST_BLOCK", 100)  # put_rows reads 100 rows at a time, across shard boundaries
    from_file, from_array = lp.fit(saved, y[keep], 10, 1.0), lp.fit(x[keep], y[keep], 10, 1.0)
    np.testing.assert_array_equal(np.asarray(from_file.weights), np.asarray(from_array.weights))
