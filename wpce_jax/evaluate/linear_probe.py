"""Linear probe: multinomial logistic regression on frozen features, solved on device, and CLIP's C search.

Objective. `fit` returns the minimiser over W [F, K], b [K] of

    ||W||^2 / 2 + C * sum_n s_n * CE(softmax(x_n @ W + b), y_n)

with an unpenalised bias and sample weights s_n (1 by default): scikit-learn's `LogisticRegression(C=C)` objective
(multinomial, lbfgs, fit_intercept=True), so the probabilities agree with scikit-learn's. It is solved by optax's
L-BFGS (zoom line search) inside one jitted while loop, in float32 (float64 for float64 features under x64), until
the gradient norm is `tol` (1e-6) times its value at zero: on digits the probabilities are then within 1e-4 of
scikit-learn's float64 solution, whatever C. A class with no weighted training example has no minimiser for its
bias (it runs to -inf); it is left out of the softmax and gets probability 0, as scikit-learn, which fits only the
classes it sees, would never predict it.

Protocol (`evaluate`). A seeded, stratified `val_fraction` of the train split is held out for choosing C in
`C_GRID` (97 log-spaced values, 1e-6 .. 1e6): first every 16th grid point (indices 0, 16, ..., 96), then around the
best index so far at spacing 8, 4, 2 and 1 (best +- spacing, those in the grid and not yet scored). The score is
top-1 accuracy, or with `balanced=True` the mean per-class recall, the fits then weighted by
`class_balanced_weights`; ties go to the smaller C. The probe is refit with the best C on the whole train split
(train + validation) and scored on the test split.

Shapes: features [N, F] float (NumPy or JAX, on one device), labels [N] int in [0, num_classes).
"""
import time
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wpce_jax.evaluate import metrics

C_GRID = np.logspace(-6, 6, 97)
_STAGE_SPACINGS = (16, 8, 4, 2, 1)
# Float32 sums leave the gradient a little above zero at the minimum; this many steps without a decrease of the
# objective end the solve there instead of at max_iter.
_STALL_STEPS = 10


def _dot(a, b):
    # Full float32 matmuls: the default precision on GPUs (TF32) is far from the 1e-3 agreement asked of the solver.
    return jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST)


class Probe(NamedTuple):
    """A fitted probe: logits = features @ weights + bias, and how the solve ended."""

    weights: jax.Array  # [F, K]
    bias: jax.Array  # [K]; -inf for a class without training examples
    iterations: jax.Array  # L-BFGS steps taken
    grad_norm: jax.Array  # final gradient norm relative to the gradient at W = 0, b = 0
    converged: jax.Array  # grad_norm <= tol; False when max_iter or a float32 stall ended the solve

    def logits(self, features) -> jax.Array:
        x = jnp.asarray(features)
        if x.ndim != 2 or x.shape[1] != self.weights.shape[0]:
            raise ValueError(f"features must be [N, {self.weights.shape[0]}], got {x.shape}")
        return _dot(x.astype(self.weights.dtype), self.weights) + self.bias

    def predict_proba(self, features) -> jax.Array:
        """[N, K] class probabilities."""
        return jax.nn.softmax(self.logits(features), axis=-1)

    def predict(self, features) -> jax.Array:
        """[N] most probable class."""
        return jnp.argmax(self.logits(features), axis=-1)


def _check_labels(labels, num_classes: int, n: Optional[int] = None) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != (n or len(y)) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be [{n or 'N'}] integers, got {y.dtype} {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{y.min()}, {y.max()}]")
    return y


def _check_data(features, labels, num_classes: int):
    """-> (features as a float JAX array, labels as a NumPy int array), or a ValueError."""
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes}")
    x = jnp.asarray(features)
    if x.ndim != 2 or x.shape[0] == 0 or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"features must be a non-empty float [N, F] array, got {x.dtype} {x.shape}")
    if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError("features contain NaN or infinite values")
    return x.astype(jnp.promote_types(x.dtype, jnp.float32)), _check_labels(labels, num_classes, x.shape[0])


def class_balanced_weights(labels, num_classes: int) -> np.ndarray:
    """[N] sample weights n / (number of classes present * count[label]): scikit-learn's class_weight="balanced"."""
    y = _check_labels(labels, num_classes)
    counts = np.bincount(y, minlength=num_classes)
    return len(y) / (np.count_nonzero(counts) * counts[y])


@jax.jit
def _solve(x, labels, weights, C, init_weights, init_bias, tol, max_iter):
    num_classes = init_bias.shape[0]
    total = jnp.sum(weights)
    present = jax.ops.segment_sum(weights, labels, num_segments=num_classes) > 0
    # Solved for V = scale * W and b' = b + mean @ W on the features x' = (x - mean) / scale, scale^2 the largest
    # eigenvalue of their covariance. Logits and penalty (||V||^2 / scale^2) are unchanged, so is the minimiser,
    # but the conditioning is not. Uncentred features couple the bias to every weight: on digits pixels * 10 + 5,
    # float32 L-BFGS stayed up to 4e-3 off scikit-learn's probabilities after 3000 steps. At this scale the stiffest
    # weight direction is as stiff as the bias whatever the features' units, which suits L-BFGS's one scalar
    # initial curvature: up to 10 times fewer steps than unscaled on digits pixels * 0.05 or * 30.
    mean = _dot(weights, x) / total
    centred = x - mean
    scale = jnp.sqrt(jnp.linalg.eigvalsh(_dot(centred.T * weights, centred) / total)[-1])
    scale = jnp.where(scale > 0, scale, 1.0)
    xs = centred / scale
    # The objective divided by C * sum(s): the mean cross-entropy has gradients of order one whatever C and N.
    penalty = 1.0 / (C * total * scale**2)

    def objective(params):
        v, b = params
        logits = jnp.where(present, _dot(xs, v) + b, -jnp.inf)
        ce = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
        return jnp.sum(weights * ce) / total + 0.5 * penalty * jnp.sum(v**2)

    def grad_norm(params):
        return optax.tree.norm(jax.grad(objective)(params))

    keep = present & jnp.isfinite(init_bias)
    init = (jnp.where(keep, init_weights * scale, 0.0),
            jnp.where(keep, init_bias + _dot(mean, init_weights), 0.0))
    # Tolerance relative to the gradient at zero, a fixed scale of the problem: a warm start then buys iterations
    # instead of a stricter stop.
    reference = grad_norm(optax.tree.zeros_like(init))
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry):
        params, state, _, stalled = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=objective)
        stalled = jnp.where(optax.tree.get(state, "value") < value, 0, stalled + 1)
        return optax.apply_updates(params, updates), state, optax.tree.norm(optax.tree.get(state, "grad")), stalled

    def keep_going(carry):
        _, state, norm, stalled = carry
        return (norm > tol * reference) & (optax.tree.get(state, "count") < max_iter) & (stalled < _STALL_STEPS)

    start = (init, solver.init(init), grad_norm(init), jnp.asarray(0))
    (v, b), state, norm, _ = jax.lax.while_loop(keep_going, step, start)
    w = v / scale
    relative = jnp.where(reference > 0, norm / reference, 0.0)
    return Probe(w, jnp.where(present, b - _dot(mean, w), -jnp.inf), optax.tree.get(state, "count"), relative,
                 relative <= tol)


def fit(features, labels, num_classes: int, C: float, *, sample_weight=None, init: Optional[Probe] = None,
        tol: float = 1e-6, max_iter: int = 1000) -> Probe:
    """The minimiser of ||W||^2 / 2 + C * sum_n s_n CE_n (module docstring), as a Probe.

    features [N, F], labels [N] int, sample_weight [N] >= 0 (default 1). init: a Probe to start from (same F and
    num_classes), e.g. the fit at a neighbouring C. Stops when the gradient norm is `tol` times that at zero.
    """
    x, y = _check_data(features, labels, num_classes)
    if not (np.isfinite(C) and C > 0):
        raise ValueError(f"C must be positive and finite, got {C}")
    if not (tol > 0 and max_iter >= 1):
        raise ValueError(f"tol must be > 0 and max_iter >= 1, got {tol} and {max_iter}")
    n, f = x.shape
    s = jnp.ones(n, x.dtype) if sample_weight is None else jnp.asarray(sample_weight, x.dtype)
    if s.shape != (n,) or not bool(jnp.all(jnp.isfinite(s) & (s >= 0))) or not bool(jnp.any(s > 0)):
        raise ValueError(f"sample_weight must be [{n}], finite, >= 0 and not all 0, got shape {s.shape}")
    if init is None:
        init_w, init_b = jnp.zeros((f, num_classes), x.dtype), jnp.zeros(num_classes, x.dtype)
    else:
        init_w, init_b = jnp.asarray(init.weights, x.dtype), jnp.asarray(init.bias, x.dtype)
        if init_w.shape != (f, num_classes) or init_b.shape != (num_classes,):
            raise ValueError(f"init must have weights [{f}, {num_classes}] and bias [{num_classes}], got "
                             f"{init_w.shape} and {init_b.shape}")
    return _solve(x, jnp.asarray(y, jnp.int32), s, jnp.asarray(C, x.dtype), init_w, init_b,
                  jnp.asarray(tol, x.dtype), jnp.asarray(max_iter, jnp.int32))


def top1(labels, predictions) -> float:
    return float(np.mean(np.asarray(labels) == np.asarray(predictions)))


def _mean_per_class_recall(labels, predictions) -> float:
    return metrics.mean_per_class_recall(predictions, labels, int(np.max(labels)) + 1)


def validation_split(labels, val_fraction: float, seed: int):
    """(train indices, validation indices): a seeded, stratified `val_fraction` of each class (rounded, at least
    one example of every class kept for training) held out."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        val.append(members[:min(int(np.floor(val_fraction * len(members) + 0.5)), len(members) - 1)])
    val = np.sort(np.concatenate(val))
    if len(val) == 0:
        raise ValueError(f"val_fraction {val_fraction} of {len(y)} examples leaves no validation example")
    return np.setdiff1d(np.arange(len(y)), val), val


def _search(x, y, num_classes, balanced, val_fraction, seed, score, log):
    """-> (best grid index, {index: validation score}, {index: Probe})."""
    train, val = validation_split(y, val_fraction, seed)
    x_train, y_train, x_val, y_val = x[train], y[train], x[val], y[val]
    weights = class_balanced_weights(y_train, num_classes) if balanced else None
    score = score or (_mean_per_class_recall if balanced else top1)
    scores, probes = {}, {}
    start = time.perf_counter()
    best = 0
    for spacing in _STAGE_SPACINGS:
        if spacing == _STAGE_SPACINGS[0]:
            candidates = range(0, len(C_GRID), spacing)
        else:
            candidates = (best - spacing, best + spacing)
        tried = [i for i in candidates if 0 <= i < len(C_GRID) and i not in scores]
        for i in tried:
            nearest = min(probes, key=lambda j: (abs(j - i), j), default=None)
            probes[i] = fit(x_train, y_train, num_classes, C_GRID[i], sample_weight=weights,
                            init=probes.get(nearest))
            scores[i] = score(y_val, probes[i].predict(x_val))
        best = min(scores, key=lambda i: (-scores[i], i))
        tried_text = ", ".join(f"C={C_GRID[i]:.3g}: {scores[i]:.4f}" for i in tried) or "nothing new"
        log(f"linear probe, C spacing {spacing}: {tried_text}; best C={C_GRID[best]:.3g} ({scores[best]:.4f}), "
            f"{time.perf_counter() - start:.1f}s")
    return best, scores, probes


def _print(line: str) -> None:
    print(line, flush=True)


def search_C(train_x, train_y, num_classes: int, *, balanced: bool = False, val_fraction: float = 0.1, seed: int = 0,
             score: Optional[Callable] = None, log: Callable[[str], None] = _print):
    """(best C, {C: validation score}) by the protocol of the module docstring.

    score(labels, predictions) -> float, higher is better; default top-1, or mean per-class recall if balanced.
    """
    x, y = _check_data(train_x, train_y, num_classes)
    best, scores, _ = _search(x, y, num_classes, balanced, val_fraction, seed, score, log)
    return float(C_GRID[best]), {float(C_GRID[i]): s for i, s in scores.items()}


def evaluate(train_x, train_y, test_x, test_y, num_classes: int, *, balanced: bool = False, val_fraction: float = 0.1,
             seed: int = 0, log: Callable[[str], None] = _print) -> dict[str, float]:
    """{"top1", "mean_per_class_recall", "C"} on the test split of the probe refit with the searched C."""
    x, y = _check_data(train_x, train_y, num_classes)
    x_test, y_test = _check_data(test_x, test_y, num_classes)
    if x_test.shape[1] != x.shape[1]:
        raise ValueError(f"train and test features differ in width: {x.shape[1]} and {x_test.shape[1]}")
    best, _, probes = _search(x, y, num_classes, balanced, val_fraction, seed, None, log)
    weights = class_balanced_weights(y, num_classes) if balanced else None
    probe = fit(x, y, num_classes, C_GRID[best], sample_weight=weights, init=probes[best])
    predictions = probe.predict(x_test)
    result = {"top1": top1(y_test, predictions), "mean_per_class_recall": metrics.mean_per_class_recall(predictions, y_test, num_classes),
              "C": float(C_GRID[best])}
    log(f"linear probe, refit on all {len(y)} train examples with C={result['C']:.3g}: top1 {result['top1']:.4f}, "
        f"mean per-class recall {result['mean_per_class_recall']:.4f}")
    return result
