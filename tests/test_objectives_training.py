"""config.objective: InfoNCE, SigLIP's sigmoid loss (learned bias) and NCE in the sharded training step.

Each objective's loss on 8 fake devices equals its float64 NumPy value from the same towers' outputs, the top-1
metrics are logged for all three, and a few steps on one digits batch lower its loss. The sigmoid
objective adds the "logit_bias" parameter (SigLIP's init: scale 10, bias -10), which is not weight-decayed; the
other objectives keep the old parameter tree."""
import math

import jax
import numpy as np
import pytest

from runs import tiny_config
from wpce_jax.data import run_data
from wpce_jax.config_validation import validate, validate_config
from wpce_jax.data.pipeline import TrainDataOptions, make_train_dataset
from wpce_jax.logit_scale import value as logit_scale_value
from wpce_jax.models.model_config import init_params, make_model
from wpce_jax.models.towers import OBJECTIVES
from wpce_jax.optimizer import decay_mask, make_optimizer
from wpce_jax.parallel import global_batch, make_mesh, replicated
from wpce_jax.similarity import embed, train_rff
from wpce_jax.train_step import initial_state, make_loss_fn, make_train_step


def numpy_objective(objective, x, y, scale, bias=None):
    """The objective in float64 from x, y [B, F]: the reference for the sharded float32 one."""
    logits = scale * (x @ y.T)
    batch = len(x)
    if objective == "infonce":
        diag = np.diag(logits)
        lse = lambda axis: np.log(np.sum(np.exp(logits - logits.max()), axis=axis)) + logits.max()
        return (np.mean(lse(1) - diag) + np.mean(lse(0) - diag)) / 2
    bias = bias if objective == "sigmoid" else -math.log(batch - 1)
    signs = 2 * np.eye(batch) - 1  # +1 for the pairs, -1 for every other (i, j)
    return np.sum(np.logaddexp(0, -signs * (logits + bias))) / batch


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_objective_matches_numpy_and_lowers_the_loss(cache_dir, tmp_path, objective):
    assert jax.device_count() == 8
    config = tiny_config(cache_dir, objective=objective)
    settings = validate_config(config)
    data = run_data.resolve(config, str(tmp_path))
    config = data.config
    model, tx = make_model(config), make_optimizer(config)
    key = jax.random.key(0)
    state = initial_state(model, tx, config, key)
    stream = iter(make_train_dataset(data.train_dir, TrainDataOptions(
        tokenizer=data.tokenizer, image_size=config.data.image_size, batch_size=config.batch_size, seed=0,
        crop_scale=tuple(config.data.crop_scale))))
    held = next(stream)

    # Float64 reference from the same towers on the held batch, with step 0's RFF draw (what step 1 uses).
    rff = train_rff(key, 0, config)
    params = jax.tree.map(np.asarray, state.params)
    clouds = jax.jit(model.apply)({"params": params}, held["image"], held["tokens"])
    x, y = (np.asarray(embed(c, rff, config), np.float64) for c in clouds)
    scale = float(logit_scale_value(params, config.model.similarity))
    bias = float(params["logit_bias"]) if objective == "sigmoid" else None
    want = numpy_objective(objective, x, y, scale, bias)
    logits = x @ y.T
    want_i2t = np.mean(np.argmax(logits, axis=1) == np.arange(len(x)))
    want_t2i = np.mean(np.argmax(logits, axis=0) == np.arange(len(x)))

    mesh = make_mesh()
    step = jax.jit(make_train_step(model, config, mesh, tx, settings), out_shardings=replicated(mesh))
    held_loss = jax.jit(lambda p: make_loss_fn(model, config, mesh, settings)(p, global_batch(held, mesh), rff)[0])
    state = jax.device_put(state, replicated(mesh))
    state, metrics = step(state, global_batch(held, mesh))
    metrics = jax.tree.map(np.asarray, metrics)
    np.testing.assert_allclose(metrics["train/loss"], want, rtol=1e-5)
    np.testing.assert_allclose(held_loss(jax.device_put(params, replicated(mesh))), want, rtol=1e-5)
    assert metrics["train/i2t_top1"] == pytest.approx(want_i2t) and metrics["train/t2i_top1"] == pytest.approx(want_t2i)
    assert ("train/logit_bias" in metrics) == (objective == "sigmoid")
    if objective == "sigmoid":
        assert metrics["train/logit_bias"] == -10.0 and metrics["train/logit_scale"] == pytest.approx(10.0)

    # A few more steps on the same digits batch (a fresh RFF draw each): its loss, at step 0's draw, goes down.
    # (The tiny model needs far more than 20 steps before fresh batches show it; memorising one batch is quick.)
    for _ in range(19):
        state, metrics = step(state, global_batch(held, mesh))
    assert int(state.bad_step) == -1
    after = float(held_loss(state.params))
    print(f"{objective}: held-batch loss {want:.4f} -> {after:.4f}")
    assert after < 0.95 * want
    if objective == "sigmoid":  # the bias is trained
        assert float(state.params["logit_bias"]) != -10.0


@pytest.mark.parametrize("similarity", ["wpce", "clip"])
def test_parameter_trees_and_decay_mask(cache_dir, similarity):
    trees = {}
    for objective in OBJECTIVES:
        config = tiny_config(cache_dir, objective=objective, **{"model.similarity": similarity,
                                                                "model.text.vocab_size": 64, "model.text.eot_id": 1})
        trees[objective] = init_params(make_model(config), jax.random.key(0), config)
    sigmoid = trees.pop("sigmoid")
    assert float(sigmoid["logit_bias"]) == -10.0 and sigmoid["logit_bias"].shape == ()
    assert float(logit_scale_value(sigmoid, similarity)) == pytest.approx(10.0, rel=1e-6)
    raw = 10.0 if similarity == "wpce" else math.log(10.0)
    assert float(sigmoid["logit_scale"]) == pytest.approx(raw, rel=1e-6)
    for tree in trees.values():  # infonce, nce: the parameter tree (and checkpoints) of before
        assert "logit_bias" not in tree
        assert float(logit_scale_value(tree, similarity)) == pytest.approx(1 / 0.07, rel=1e-6)
        assert jax.tree.structure(tree) == jax.tree.structure({k: v for k, v in sigmoid.items() if k != "logit_bias"})
    # Not decayed: the mask excludes it, and a zero-gradient AdamW update moves the kernels (decay) but not it.
    assert decay_mask(sigmoid)["logit_bias"] is False
    config.optim.weight_decay = 0.5
    tx = make_optimizer(config)
    updates, _ = tx.update(jax.tree.map(np.zeros_like, sigmoid), tx.init(sigmoid), sigmoid)
    assert float(updates["logit_bias"]) == 0.0
    assert max(float(np.abs(u).max()) for u in jax.tree.leaves(updates)) > 0


def test_bad_objective_fails_validation_naming_the_field(cache_dir):
    config = tiny_config(cache_dir, objective="hinge", **{"model.text.vocab_size": 64, "model.text.eot_id": 1})
    for check in (validate, make_model):
        with pytest.raises(ValueError, match=r"config field objective must be one of .*'infonce'.*'sigmoid'.*'nce'"):
            check(config)
    # A config without the field (saved before it existed) means InfoNCE.
    with config.unlocked():
        del config["objective"]
    validate_config(config)
    assert make_model(config).objective == "infonce"
