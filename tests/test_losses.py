"""The objectives of wpce_jax.losses: float64 NumPy references, and sharded over 8 fake devices against the unsharded
losses."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from wpce_jax.losses import (MININGS, infonce_and_accuracy, margin_contrastive_loss, nce_loss, nt_xent,
                             sigmoid_loss, symmetric_infonce, triplet_loss)


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


# ---- The other objectives: float64 NumPy references written with plain loops, independent of the implementation.

def np_log_sigmoid(u):
    return -np.logaddexp(0.0, -u)


def np_nt_xent(x, y, temperature):
    z, b = np.concatenate([x, y]), len(x)
    total = 0.0
    for i in range(2 * b):
        logits = {j: z[i] @ z[j] / temperature for j in range(2 * b) if j != i}
        total += np.logaddexp.reduce(list(logits.values())) - logits[(i + b) % (2 * b)]
    return total / (2 * b)


def np_sigmoid(x, y, scale, bias):
    b = len(x)
    total = 0.0
    for i in range(b):
        for j in range(b):
            total -= np_log_sigmoid((1 if i == j else -1) * (scale * x[i] @ y[j] + bias))
    return total / b


def np_nce(x, y, scale):
    b = len(x)
    log_k, total = np.log(b - 1), 0.0
    for i in range(b):
        total -= np_log_sigmoid(scale * x[i] @ y[i] - log_k)
        for j in range(b):
            if j != i:
                total -= np_log_sigmoid(-(scale * x[i] @ y[j] - log_k))
    return total / b


def np_margin_contrastive(x, labels, margin):
    terms = []
    for i in range(len(x)):
        for j in range(len(x)):
            if i != j:
                dist = np.sqrt(np.sum((x[i] - x[j]) ** 2))
                terms.append(dist ** 2 / 2 if labels[i] == labels[j] else max(0.0, margin - dist) ** 2 / 2)
    return np.mean(terms) if terms else 0.0


def np_triplet(x, labels, margin, mining):
    b = len(x)
    d = [[np.sum((x[i] - x[j]) ** 2) for j in range(b)] for i in range(b)]
    terms = []
    for a in range(b):
        positives = [p for p in range(b) if p != a and labels[p] == labels[a]]
        negatives = [n for n in range(b) if labels[n] != labels[a]]
        if not positives or not negatives:
            continue
        if mining == "hard":
            terms.append(max(0.0, max(d[a][p] for p in positives) - min(d[a][n] for n in negatives) + margin))
        for p in positives if mining != "hard" else ():
            if mining == "all":
                terms += [max(0.0, d[a][p] - d[a][n] + margin) for n in negatives]
            else:
                farther = [d[a][n] for n in negatives if d[a][n] > d[a][p]]
                d_an = min(farther) if farther else max(d[a][n] for n in negatives)
                terms.append(max(0.0, d[a][p] - d_an + margin))
    return np.mean(terms) if terms else 0.0


def class_labels(rng, b=32, members=4):
    """`members` rows per class in a random order, so a row's positives sit on other devices when sharded."""
    return rng.permutation(np.repeat(np.arange(b // members), members)).astype(np.int32)


def f32(*arrays):
    """The arrays rounded to float32 (for the implementation) and back to float64 (for the reference)."""
    rounded = [np.asarray(a, np.float32) for a in arrays]
    return [jnp.asarray(a) for a in rounded], [a.astype(np.float64) for a in rounded]


# name -> (function, how many leading arguments are per-row (sharded), arguments from a seed, NumPy reference,
# argnums to differentiate). Scales keep the logits in a few units, margins make some hinges active and some not.
def _paired(rng):
    x, y = pair(rng, f=8)
    return x / 3, y / 3


OBJECTIVES = {
    "nt_xent": (nt_xent, 2, lambda rng: (*_paired(rng), 0.5), np_nt_xent, (0, 1, 2)),
    "sigmoid": (sigmoid_loss, 2, lambda rng: (*_paired(rng), 2.0, -1.5), np_sigmoid, (0, 1, 2, 3)),
    "nce": (nce_loss, 2, lambda rng: (*_paired(rng), 2.0), np_nce, (0, 1, 2)),
    "margin_contrastive": (margin_contrastive_loss, 2,
                           lambda rng: (rng.normal(size=(32, 8)), class_labels(rng), 4.0),
                           np_margin_contrastive, (0,)),
}
for _mining in MININGS:
    OBJECTIVES[f"triplet_{_mining}"] = (
        functools.partial(triplet_loss, mining=_mining), 2,
        lambda rng: (rng.normal(size=(32, 8)), class_labels(rng), 4.0),
        functools.partial(np_triplet, mining=_mining), (0,))


def _inputs(name, seed):
    fn, rows, make, reference, argnums = OBJECTIVES[name]
    args = make(np.random.default_rng(seed))
    if name.startswith(("margin", "triplet")):  # (x, labels, margin): labels stay integers
        (x,), (x64,) = f32(args[0])
        return fn, rows, (x, jnp.asarray(args[1]), args[2]), (x64, args[1], args[2]), reference, argnums
    (x, y), (x64, y64) = f32(*args[:2])
    return fn, rows, (x, y, *args[2:]), (x64, y64, *args[2:]), reference, argnums


@pytest.mark.parametrize("name", OBJECTIVES)
def test_objective_matches_numpy(name):
    fn, _, args, args64, reference, _ = _inputs(name, 10)
    loss = fn(*args)
    # float32 against float64: 1e-5 relative.
    np.testing.assert_allclose(float(loss), reference(*args64), rtol=1e-5)
    assert loss.dtype == jnp.float32 and float(loss) > 0


@pytest.mark.parametrize("name", OBJECTIVES)
def test_objective_gradient_matches_numpy_finite_differences(name):
    fn, _, args, args64, reference, _ = _inputs(name, 11)
    args, args64 = list(args), list(args64)
    small = 6  # rows; labels [0, 0, 0, 1, 1, 2] keep positives, negatives and a positive-less anchor
    args[0], args64[0] = args[0][:small], args64[0][:small]
    if name.startswith(("margin", "triplet")):
        args64[1] = np.array([0, 0, 0, 1, 1, 2], np.int32)
        args[1] = jnp.asarray(args64[1])
    else:
        args[1], args64[1] = args[1][:small], args64[1][:small]
    g = np.asarray(jax.grad(fn)(*args))
    eps, fd = 1e-6, np.zeros_like(args64[0])
    for idx in np.ndindex(*fd.shape):
        step = np.zeros_like(fd)
        step[idx] = eps
        fd[idx] = (reference(args64[0] + step, *args64[1:]) - reference(args64[0] - step, *args64[1:])) / (2 * eps)
    assert np.any(fd != 0)
    np.testing.assert_allclose(g, fd, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", OBJECTIVES)
def test_objective_sharded_value_and_gradients_equal_unsharded(name):
    fn, rows, args, _, _, argnums = _inputs(name, 12)
    mesh = jax.make_mesh((8,), ("data",))
    specs = (P("data"),) * rows + (P(),) * (len(args) - rows)
    placed = [jax.device_put(a, NamedSharding(mesh, spec)) for a, spec in zip(args, specs)]

    def sharded(*a):
        return jax.shard_map(functools.partial(fn, axis_name="data"), mesh=mesh, in_specs=specs, out_specs=P())(*a)

    loss, grads = jax.jit(jax.value_and_grad(sharded, argnums=argnums))(*placed)
    loss1, grads1 = jax.value_and_grad(fn, argnums=argnums)(*args)
    # Same float32 sums in a different order: 1e-5 relative, 1e-7 absolute.
    np.testing.assert_allclose(float(loss), float(loss1), rtol=1e-5, atol=1e-7)
    for g, g1 in zip(grads, grads1):
        assert np.any(np.asarray(g1) != 0)
        np.testing.assert_allclose(np.asarray(g), np.asarray(g1), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", OBJECTIVES)
def test_objective_bf16_inputs_give_a_float32_scalar(name):
    fn, _, args, _, _, _ = _inputs(name, 13)
    low = [a.astype(jnp.bfloat16) if isinstance(a, jax.Array) and a.dtype == jnp.float32 else a for a in args]
    loss = fn(*low)
    assert loss.shape == () and loss.dtype == jnp.float32
    # The computation is the float32 one on the (exactly representable) upcast inputs.
    upcast = [a.astype(jnp.float32) if isinstance(a, jax.Array) and a.dtype == jnp.bfloat16 else a for a in low]
    np.testing.assert_allclose(float(loss), float(fn(*upcast)), rtol=1e-6)


def test_semihard_falls_back_to_the_farthest_negative():
    # On a line: class 0 at 0 and 3, class 1 at 1 and 10; squared distances, margin 50. Pairs (a, p): d_ap; the
    # semi-hard negative (d_an > d_ap) or, where none is, the farthest one:
    #   (0, 3):  9; negatives at d 1, 100 -> 100, term 0
    #   (3, 0):  9; negatives at d 4, 49  -> 49,  term 10
    #   (1, 10): 81; negatives at d 1, 4  -> none farther, falls back to 4, term 127
    #   (10, 1): 81; negatives at d 100, 49 -> 100, term 31
    x = jnp.asarray([[0.0], [3.0], [1.0], [10.0]])
    labels = np.array([0, 0, 1, 1])
    assert np_triplet(np.asarray(x, np.float64), labels, 50.0, "semihard") == pytest.approx(42.0)
    assert float(triplet_loss(x, jnp.asarray(labels), 50.0, "semihard")) == pytest.approx(42.0)


def test_hard_excludes_anchors_without_a_positive():
    # Class 2 (the last row, at 4) has no positive: only the four other anchors count (a mean over 5 would be 29).
    #   anchor at 0: hardest positive d 9, nearest negative d 1 -> 9 - 1 + 1 = 9;  at 3: 9 - 1 + 1 = 9
    #   anchor at 1: 81 - 1 + 1 = 81;  at 10: 81 - 36 + 1 = 46   -> mean 145 / 4 = 36.25
    x = jnp.asarray([[0.0], [3.0], [1.0], [10.0], [4.0]])
    labels = np.array([0, 0, 1, 1, 2])
    assert np_triplet(np.asarray(x, np.float64), labels, 1.0, "hard") == pytest.approx(36.25)
    assert float(triplet_loss(x, jnp.asarray(labels), 1.0, "hard")) == pytest.approx(36.25)


@pytest.mark.parametrize("mining", MININGS)
@pytest.mark.parametrize("labels", [[0, 0, 0, 0], [0, 1, 2, 3]], ids=["no_negative", "no_positive"])
def test_no_valid_triplet_gives_zero(mining, labels):
    x = jnp.asarray(np.random.default_rng(14).normal(size=(4, 3)), jnp.float32)
    loss, grad = jax.value_and_grad(triplet_loss)(x, jnp.asarray(labels), 1.0, mining)
    assert float(loss) == 0.0 and np.all(np.asarray(grad) == 0)


def test_margin_contrastive_gradient_is_finite_for_identical_rows():
    rng = np.random.default_rng(15)
    random_rows = rng.normal(size=(6, 4))
    integer_rows = rng.integers(-3, 4, size=(6, 4)).astype(np.float64)  # distances exactly 0 in float32
    for rows in (random_rows, integer_rows):
        rows[1] = rows[0]
        rows[3] = rows[2]
        x = jnp.asarray(rows, jnp.float32)
        # Rows 0, 1 similar and rows 2, 3 dissimilar: both the D^2 and the max(0, m - D)^2 terms see D = 0.
        labels = jnp.asarray([0, 0, 1, 2, 1, 2])
        loss, grad = jax.value_and_grad(margin_contrastive_loss)(x, labels, 2.0)
        assert np.all(np.isfinite(np.asarray(grad)))
        np.testing.assert_allclose(float(loss), np_margin_contrastive(rows, np.asarray(labels), 2.0), rtol=1e-5)


def test_objective_errors():
    x = jnp.ones((4, 3))
    with pytest.raises(ValueError, match=r"\[B, F\] with the same shape"):
        nt_xent(x, jnp.ones((4, 2)), 0.5)
    with pytest.raises(ValueError, match=r"\[B, F\] with the same shape"):
        sigmoid_loss(x, jnp.ones((3, 3)), 1.0, 0.0)
    with pytest.raises(ValueError, match="at least 2"):
        nce_loss(jnp.ones((1, 3)), jnp.ones((1, 3)), 1.0)
    with pytest.raises(ValueError, match=r"x must be \[B, F\] and labels \[B\]"):
        margin_contrastive_loss(x, jnp.zeros(3, jnp.int32), 1.0)
    with pytest.raises(ValueError, match=r"x must be \[B, F\] and labels \[B\]"):
        triplet_loss(jnp.ones(4), jnp.zeros(4, jnp.int32), 1.0)
    with pytest.raises(ValueError, match="labels must be integers"):
        triplet_loss(x, jnp.zeros(4), 1.0)
    with pytest.raises(ValueError, match="semihard.*hard.*all"):
        triplet_loss(x, jnp.zeros(4, jnp.int32), 1.0, mining="easy")
