"""Linear probe: multinomial logistic regression on frozen features, solved on the device mesh, and CLIP's C search.

Objective. `fit` returns the minimiser over W [F, K], b [K] of

    ||W||^2 / 2 + C * sum_n s_n * CE(softmax(x_n @ W + b), y_n)

with an unpenalised bias and sample weights s_n (1 by default): scikit-learn's `LogisticRegression(C=C)` objective
(multinomial, lbfgs, fit_intercept=True), so the probabilities agree with scikit-learn's. It is solved by optax's
L-BFGS (zoom line search) inside one jitted while loop, in float32 (float64 for float64 features under x64), until
the gradient norm is `tol` (1e-6) times its value at zero: on digits the probabilities are then within 1e-4 of
scikit-learn's float64 solution, whatever C. A class with no weighted training example has no minimiser for its
bias (it runs to -inf); it is left out of the softmax and gets probability 0, as scikit-learn, which fits only the
classes it sees, would never predict it.

Memory. The features stay on the host (a NumPy array or a memory-mapped .npy file, read a block at a time) until
`put_rows` copies them to the mesh, shard by shard: the rows are split over every device of the mesh (N rounded up
to a multiple of the device count with zero rows of weight 0), so a device holds N / devices rows, and XLA sums
the loss and gradient over the devices. The C search places the train split once and fits its 90% part by giving
the validation rows weight 0, so no fit copies the features.

Protocol (`evaluate`). A seeded, stratified `val_fraction` of the train split is held out for choosing C in
`C_GRID` (97 log-spaced values, 1e-6 .. 1e6): first every 16th grid point (indices 0, 16, ..., 96), then around the
best index so far at spacing 8, 4, 2 and 1 (best +- spacing, those in the grid and not yet scored). The score is
top-1 accuracy, or with `balanced=True` the mean per-class recall, the fits then weighted by
`class_balanced_weights`; ties go to the smaller C. The probe is refit with the best C on the whole train split
(train + validation) and scored on the test split.

Shapes: features [N, F] float (NumPy, a memmap, or JAX), labels [N] int in [0, num_classes).
"""
import functools
import time
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from wpce_jax.evaluate import metrics

C_GRID = np.logspace(-6, 6, 97)
_STAGE_SPACINGS = (16, 8, 4, 2, 1)
# Float32 sums leave the gradient a little above zero at the minimum; this many steps without a decrease of the
# objective end the solve there instead of at max_iter.
_STALL_STEPS = 10
_HOST_BLOCK = 1 << 16  # rows read from the host array at a time (a block of ImageNet's 1536-wide rows: 400 MB)


def _dot(a, b):
    # Full float32 matmuls: the default precision on GPUs (TF32) is far from the 1e-3 agreement asked of the solver.
    return jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST)


def default_mesh() -> Mesh:
    """A 1-D mesh over every device of every process."""
    return Mesh(np.asarray(jax.devices()), ("rows",))


def row_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (row) axis split over every device of the mesh, the rest whole."""
    return NamedSharding(mesh, P(tuple(mesh.axis_names)))


class Rows:
    """Features on the mesh: x [P, F] = (features - shift) with rows sharded, P = N rounded up to a multiple of the
    mesh's device count (padding rows 0); shift [F] the features' float64 mean (centred rows make float32 sums of
    the gradient exact enough whatever the features' offset); len() is N."""

    def __init__(self, x: jax.Array, shift: np.ndarray, n: int):
        self.x, self.shift, self.n = x, shift, n

    def __len__(self) -> int:
        return self.n

    @property
    def mesh(self) -> Mesh:
        return self.x.sharding.mesh

    def rows(self, values, fill=0) -> jax.Array:
        """[N] host values -> [P] on the mesh like x's rows, the padding `fill`."""
        values = np.asarray(values)
        padded = np.concatenate([values, np.full(self.x.shape[0] - self.n, fill, values.dtype)])
        return jax.device_put(padded, NamedSharding(self.mesh, P(tuple(self.mesh.axis_names))))


def _float_dtype(dtype):
    # float32, or float64 for float64 features under x64 (where JAX keeps it).
    return jax.dtypes.canonicalize_dtype(np.promote_types(dtype, np.float32))


def put_rows(features, mesh: Optional[Mesh] = None) -> Rows:
    """Host features [N, F] (NumPy, np.memmap, or anything np.asarray takes) -> Rows on `mesh` (default: every
    device). Read `_HOST_BLOCK` rows at a time: once for the mean and the NaN check, once per device shard for the
    copy, so host memory holds one shard beside the input, never a second copy of it all. Every process places
    the shards of its own devices from its own copy of the features."""
    if isinstance(features, Rows):
        return features
    if isinstance(features, jax.Array):
        features = np.asarray(features)
    if not hasattr(features, "shape") or not hasattr(features, "dtype"):
        features = np.asarray(features)
    if len(features.shape) != 2 or features.shape[0] == 0 or not np.issubdtype(features.dtype, np.floating):
        raise ValueError(f"features must be a non-empty float [N, F] array, got {features.dtype} "
                         f"{tuple(features.shape)}")
    n, f = features.shape
    total = np.zeros(f, np.float64)
    for start in range(0, n, _HOST_BLOCK):
        block = np.asarray(features[start:start + _HOST_BLOCK], np.float64)
        if not np.all(np.isfinite(block)):
            raise ValueError("features contain NaN or infinite values")
        total += block.sum(0)
    shift = total / n
    mesh = default_mesh() if mesh is None else mesh
    sharding = row_sharding(mesh)
    shape = (-(-n // mesh.size) * mesh.size, f)
    dtype = _float_dtype(features.dtype)
    shards = []
    for device, index in sharding.addressable_devices_indices_map(shape).items():
        first, end, _ = index[0].indices(shape[0])
        block = np.zeros((end - first, f), dtype)
        for start in range(first, min(end, n), _HOST_BLOCK):
            stop = min(start + _HOST_BLOCK, end, n)
            block[start - first:stop - first] = features[start:stop] - shift
        # One shard in flight at a time: host memory holds one shard, not the whole padded copy.
        shards.append(jax.device_put(block, device).block_until_ready())
        del block
    x = jax.make_array_from_single_device_arrays(shape, sharding, shards)
    return Rows(x, shift, n)


class Probe(NamedTuple):
    """A fitted probe: logits = features @ weights + bias, and how the solve ended."""

    weights: jax.Array  # [F, K]
    bias: jax.Array  # [K]; -inf for a class without training examples
    iterations: jax.Array  # L-BFGS steps taken
    grad_norm: jax.Array  # final gradient norm relative to the gradient at W = 0, b = 0
    converged: jax.Array  # grad_norm <= tol; False when max_iter or a float32 stall ended the solve

    def logits(self, features) -> jax.Array:
        """[N, K] for features [N, F] (on one device), or [P, K] (padded, on the mesh) for Rows."""
        if isinstance(features, Rows):
            return _rows_logits(features.x, jnp.asarray(features.shift, features.x.dtype), self.weights, self.bias)
        x = jnp.asarray(features)
        if x.ndim != 2 or x.shape[1] != self.weights.shape[0]:
            raise ValueError(f"features must be [N, {self.weights.shape[0]}], got {x.shape}")
        return _dot(x.astype(self.weights.dtype), self.weights) + self.bias

    def predict_proba(self, features) -> jax.Array:
        """[N, K] class probabilities."""
        return jax.nn.softmax(self.logits(features), axis=-1)

    def predict(self, features) -> np.ndarray:
        """[N] most probable class (a NumPy array for Rows, whose logits never leave the mesh)."""
        if isinstance(features, Rows):
            if features.x.shape[1] != self.weights.shape[0]:
                raise ValueError(f"features must be [N, {self.weights.shape[0]}], got {features.x.shape}")
            classes = _rows_predict(features.mesh)(features.x, jnp.asarray(features.shift, features.x.dtype),
                                                   self.weights, self.bias)
            return np.asarray(classes)[:features.n]
        return jnp.argmax(self.logits(features), axis=-1)


@jax.jit
def _rows_logits(x, shift, weights, bias):
    return _dot(x, weights.astype(x.dtype)) + (bias + _dot(shift, weights.astype(x.dtype)))


@functools.lru_cache(maxsize=None)
def _rows_predict(mesh: Mesh):
    # Replicated [P] classes: every process can read them (the [P, K] logits stay sharded).
    return jax.jit(lambda *args: jnp.argmax(_rows_logits(*args), axis=-1), out_shardings=NamedSharding(mesh, P()))


def _check_labels(labels, num_classes: int, n: Optional[int] = None) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != (n or len(y)) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be [{n or 'N'}] integers, got {y.dtype} {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{y.min()}, {y.max()}]")
    return y


def _check_data(features, labels, num_classes: int, mesh: Optional[Mesh] = None):
    """-> (features as Rows on the mesh, labels as a NumPy int array), or a ValueError."""
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes}")
    rows = put_rows(features, mesh)
    return rows, _check_labels(labels, num_classes, rows.n)


def class_balanced_weights(labels, num_classes: int) -> np.ndarray:
    """[N] sample weights n / (number of classes present * count[label]): scikit-learn's class_weight="balanced"."""
    y = _check_labels(labels, num_classes)
    counts = np.bincount(y, minlength=num_classes)
    return len(y) / (np.count_nonzero(counts) * counts[y])


@jax.jit
def _solve(x, labels, weights, shift, C, init_weights, init_bias, tol, max_iter):
    # x [P, F] centred by `shift` [F] (Rows), labels and weights [P]: all three with rows sharded over the mesh.
    # Every sum over rows below is a sum over devices, which XLA inserts; parameters and solver state are
    # replicated.
    num_classes = init_bias.shape[0]
    total = jnp.sum(weights)
    present = jax.ops.segment_sum(weights, labels, num_segments=num_classes) > 0
    # Solved for V = scale * W and b' = b + (shift + mean) @ W, i.e. on the features x' = (x - mean) / scale, scale^2
    # the largest eigenvalue of their weighted covariance. Logits and penalty (||V||^2 / scale^2) are unchanged, so
    # is the minimiser, but the conditioning is not. Uncentred features couple the bias to every weight: on digits
    # pixels * 10 + 5, float32 L-BFGS stayed up to 4e-3 off scikit-learn's probabilities after 3000 steps. At this
    # scale the stiffest weight direction is as stiff as the bias whatever the features' units, which suits
    # L-BFGS's one scalar initial curvature: up to 10 times fewer steps than unscaled on digits pixels * 0.05 or
    # * 30. x' is never formed (it would be a second copy of the features): the logits are x @ (V / scale) +
    # b' - mean @ V / scale. The covariance is E_w[x x^T] - mean mean^T, accurate enough for a scale as x is
    # already centred by the unweighted mean (shift).
    mean = _dot(weights, x) / total
    covariance = _dot(x.T, x * weights[:, None]) / total - jnp.outer(mean, mean)
    scale = jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(covariance)[-1], 0.0))
    scale = jnp.where(scale > 0, scale, 1.0)
    # The objective divided by C * sum(s): the mean cross-entropy has gradients of order one whatever C and N.
    penalty = 1.0 / (C * total * scale**2)

    def objective(params):
        v, b = params
        u = v / scale
        logits = jnp.where(present, _dot(x, u) + (b - _dot(mean, u)), -jnp.inf)
        ce = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
        # Zero-weight rows (padding, held-out rows) may hold -inf - -inf = NaN: where, not a product, drops them.
        return jnp.sum(jnp.where(weights > 0, weights * ce, 0.0)) / total + 0.5 * penalty * jnp.sum(v**2)

    def grad_norm(params):
        return optax.tree.norm(jax.grad(objective)(params))

    offset = shift + mean
    keep = present & jnp.isfinite(init_bias)
    init = (jnp.where(keep, init_weights * scale, 0.0),
            jnp.where(keep, init_bias + _dot(offset, init_weights), 0.0))
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
    return Probe(w, jnp.where(present, b - _dot(offset, w), -jnp.inf), optax.tree.get(state, "count"), relative,
                 relative <= tol)


def fit(features, labels, num_classes: int, C: float, *, sample_weight=None, init: Optional[Probe] = None,
        tol: float = 1e-6, max_iter: int = 1000, mesh: Optional[Mesh] = None) -> Probe:
    """The minimiser of ||W||^2 / 2 + C * sum_n s_n CE_n (module docstring), as a Probe (replicated).

    features [N, F] on the host (NumPy, np.memmap), or Rows from `put_rows` to reuse one placement over several
    fits; labels [N] int, sample_weight [N] >= 0 (default 1). init: a Probe to start from (same F and
    num_classes), e.g. the fit at a neighbouring C. mesh: where the rows go (default every device; Rows keep
    theirs). Stops when the gradient norm is `tol` times that at zero.
    """
    rows, y = _check_data(features, labels, num_classes, mesh)
    if not (np.isfinite(C) and C > 0):
        raise ValueError(f"C must be positive and finite, got {C}")
    if not (tol > 0 and max_iter >= 1):
        raise ValueError(f"tol must be > 0 and max_iter >= 1, got {tol} and {max_iter}")
    n, f = rows.n, rows.x.shape[1]
    dtype = rows.x.dtype
    s = np.ones(n, dtype) if sample_weight is None else np.asarray(sample_weight, dtype)
    if s.shape != (n,) or not np.all(np.isfinite(s) & (s >= 0)) or not np.any(s > 0):
        raise ValueError(f"sample_weight must be [{n}], finite, >= 0 and not all 0, got shape {s.shape}")
    if init is None:
        init_w, init_b = np.zeros((f, num_classes), dtype), np.zeros(num_classes, dtype)
    else:
        init_w, init_b = np.asarray(init.weights, dtype), np.asarray(init.bias, dtype)
        if init_w.shape != (f, num_classes) or init_b.shape != (num_classes,):
            raise ValueError(f"init must have weights [{f}, {num_classes}] and bias [{num_classes}], got "
                             f"{init_w.shape} and {init_b.shape}")
    replicated = NamedSharding(rows.mesh, P())
    small = jax.device_put((rows.shift.astype(dtype), np.asarray(C, dtype), init_w, init_b, np.asarray(tol, dtype),
                            np.asarray(max_iter, np.int32)), replicated)
    return _solve(rows.x, rows.rows(y.astype(np.int32)), rows.rows(s), *small)


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
    """x: Rows of the whole train split -> (best grid index, {index: validation score}, {index: Probe}).

    The fits see every row, the validation rows with weight 0: the same minimiser as a fit of the train part
    alone, without a second copy of its features on the mesh."""
    train, val = validation_split(y, val_fraction, seed)
    weights = np.zeros(len(y))
    weights[train] = class_balanced_weights(y[train], num_classes) if balanced else 1.0
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
            probes[i] = fit(x, y, num_classes, C_GRID[i], sample_weight=weights, init=probes.get(nearest))
            scores[i] = score(y[val], np.asarray(probes[i].predict(x))[val])
        best = min(scores, key=lambda i: (-scores[i], i))
        tried_text = ", ".join(f"C={C_GRID[i]:.3g}: {scores[i]:.4f}" for i in tried) or "nothing new"
        log(f"linear probe, C spacing {spacing}: {tried_text}; best C={C_GRID[best]:.3g} ({scores[best]:.4f}), "
            f"{time.perf_counter() - start:.1f}s")
    return best, scores, probes


def _print(line: str) -> None:
    print(line, flush=True)


def search_C(train_x, train_y, num_classes: int, *, balanced: bool = False, val_fraction: float = 0.1, seed: int = 0,
             score: Optional[Callable] = None, log: Callable[[str], None] = _print, mesh: Optional[Mesh] = None):
    """(best C, {C: validation score}) by the protocol of the module docstring.

    score(labels, predictions) -> float, higher is better; default top-1, or mean per-class recall if balanced.
    mesh: where the rows go (`fit`).
    """
    x, y = _check_data(train_x, train_y, num_classes, mesh)
    best, scores, _ = _search(x, y, num_classes, balanced, val_fraction, seed, score, log)
    return float(C_GRID[best]), {float(C_GRID[i]): s for i, s in scores.items()}


def evaluate(train_x, train_y, test_x, test_y, num_classes: int, *, balanced: bool = False, val_fraction: float = 0.1,
             seed: int = 0, log: Callable[[str], None] = _print, mesh: Optional[Mesh] = None) -> dict[str, float]:
    """{"top1", "mean_per_class_recall", "C"} on the test split of the probe refit with the searched C.

    Features [N, F] on the host (NumPy or np.memmap): each split is copied to `mesh` (`fit`) once."""
    x, y = _check_data(train_x, train_y, num_classes, mesh)
    x_test, y_test = _check_data(test_x, test_y, num_classes, x.mesh)
    if x_test.x.shape[1] != x.x.shape[1]:
        raise ValueError(f"train and test features differ in width: {x.x.shape[1]} and {x_test.x.shape[1]}")
    best, _, probes = _search(x, y, num_classes, balanced, val_fraction, seed, None, log)
    weights = class_balanced_weights(y, num_classes) if balanced else None
    probe = fit(x, y, num_classes, C_GRID[best], sample_weight=weights, init=probes[best])
    predictions = probe.predict(x_test)
    result = {"top1": top1(y_test, predictions),
              "mean_per_class_recall": metrics.mean_per_class_recall(predictions, y_test, num_classes),
              "C": float(C_GRID[best])}
    log(f"linear probe, refit on all {len(y)} train examples with C={result['C']:.3g}: top1 {result['top1']:.4f}, "
        f"mean per-class recall {result['mean_per_class_recall']:.4f}")
    return result
