"""`optim.accum_steps` (GradCache): the towers run on micro-batches, the objective on the whole global batch.

On 8 fake devices, for each mode, accumulation over 2 and 4 micro-batches gives the unsplit step's loss and metrics
and its gradient up to float32 rounding; the micro-batch layout keeps every device's own rows; the schedule and the
optimiser count train steps (one update and one RFF draw per step); the compiled step holds less temporary memory;
and a batch that does not split evenly is refused before any compute."""
import os

import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from runs import ROOT, tiny_config
from wpce_jax.config_validation import mode_settings, validate_config
from wpce_jax.data import run_data
from wpce_jax.models.model_config import make_model
from wpce_jax.optimizer import learning_rate_schedule, make_optimizer, num_updates
from wpce_jax.parallel import BATCH_AXES, global_batch, make_mesh, replicated
from wpce_jax.similarity import train_rff
from wpce_jax.train_step import (initial_state, join_micro_batches, make_grad_fn, make_train_step,
                                 split_micro_batches)

TWO_VIEW = os.path.join(ROOT, "configs", "digits_two_view.py")
LABELLED = os.path.join(ROOT, "configs", "digits_labelled.py")
VOCAB = {"model.text.vocab_size": 64, "model.text.eot_id": 1}  # stands in for the digits tokenizer's
BATCH = 64  # 8 devices x 4 micro-batches x 2 rows


def config_for(path=None, arg=None, **overrides):
    kwargs = {} if path is None else {"path": path}
    return tiny_config("unused", arg=arg, **kwargs, **{**VOCAB, "batch_size": BATCH, **overrides})


def random_batch(size=BATCH, seed=0):
    rng = np.random.default_rng(seed)
    length = config_for().model.text.context_length
    return {"image": rng.normal(size=(size, 32, 32, 3)).astype(np.float32),
            "image2": rng.normal(size=(size, 32, 32, 3)).astype(np.float32),
            "tokens": rng.integers(2, 64, size=(size, length)).astype(np.int32),
            "label": rng.integers(0, 5, size=size).astype(np.int32)}


def assert_gradients_close(got, want):
    """The whole gradient within 1e-5 relative (in norm), each parameter array too, each entry within 1e-5 of
    itself plus 2e-6 of the largest entry.

    Why the absolute term: the two ways add the same per-example terms in another order (over B rows at once, or k
    sums of B/k), and float32 addition is not associative. An entry's rounding error scales with the sum of its
    terms' magnitudes, not with the entry, so entries that are sums with cancellation (small next to their terms)
    differ by ~1e-4 of themselves; the attention key biases, whose true gradient is 0 (softmax ignores a shift), are
    rounding noise alone (~1e-9). Measured: at most 1.1e-6 of the largest entry (the position embeddings and class
    token, each a sum over every token of the batch); the norms agree to ~1e-6."""
    flat_got, flat_want = jax.tree.leaves(got), jax.tree.leaves(want)
    norm = lambda leaves: np.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in leaves))
    diff = [g.astype(np.float64) - w for g, w in zip(flat_got, flat_want)]
    assert norm(diff) <= 1e-5 * norm(flat_want), norm(diff) / norm(flat_want)
    largest = max(np.abs(w).max() for w in flat_want)
    for (path, w), g, d in zip(jax.tree_util.tree_flatten_with_path(want)[0], flat_got, diff):
        if norm([w]) > 1e-4 * norm(flat_want):  # not a rounding-noise leaf (the key biases)
            assert norm([d]) <= 1e-5 * norm([w]), (jax.tree_util.keystr(path), norm([d]) / norm([w]))
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-6 * largest, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("path,arg,objective", [
    (None, None, "infonce"), (None, None, "sigmoid"), (TWO_VIEW, "wpce", "infonce"),
    (LABELLED, "wpce,triplet", "infonce")])
def test_accumulated_gradient_equals_the_unsplit_one(path, arg, objective):
    assert jax.device_count() == 8
    mesh = make_mesh()
    key = jax.random.key(3)
    batch = global_batch(random_batch(), mesh)
    results = {}
    for k in (1, 2, 4):
        config = config_for(path, arg, objective=objective, **{"optim.accum_steps": k})
        settings = validate_config(config)
        model = make_model(config)
        params = jax.device_put(initial_state(model, make_optimizer(config), config, key).params, replicated(mesh))
        grad_fn = jax.jit(make_grad_fn(model, config, mesh, settings))
        (loss, metrics), grads = grad_fn(params, batch, train_rff(key, 0, config))
        results[k] = jax.tree.map(np.asarray, (loss, metrics, grads))
    loss1, metrics1, grads1 = results[1]
    assert np.isfinite(loss1) and loss1 > 0
    for k in (2, 4):
        loss, metrics, grads = results[k]
        # The objective sees the same vectors in the same row order: the loss and metrics agree to rounding.
        np.testing.assert_allclose(loss, loss1, rtol=1e-6)
        assert set(metrics) == set(metrics1)
        for name in metrics1:
            np.testing.assert_allclose(metrics[name], metrics1[name], rtol=1e-6, atol=1e-7, err_msg=name)
        assert_gradients_close(grads, grads1)
        if path is not None:  # image-only modes: the text tower still gets exactly nothing
            for name in ("text_encoder", "text_head", "logit_scale"):
                assert not any(np.asarray(g).any() for g in jax.tree.leaves(grads[name]))


def test_micro_batches_are_each_devices_own_rows():
    mesh = make_mesh()
    rows = jax.device_put(np.arange(64, dtype=np.int32), NamedSharding(mesh, P(BATCH_AXES)))
    micro = jax.jit(lambda r: split_micro_batches(r, 4, mesh))(rows)
    # Device d holds rows [8 d, 8 d + 8); micro-batch j takes its local rows [2 j, 2 j + 2).
    want = np.arange(64).reshape(8, 4, 2).transpose(1, 0, 2).reshape(4, 16)
    np.testing.assert_array_equal(np.asarray(micro), want)
    assert micro.sharding.is_equivalent_to(NamedSharding(mesh, P(None, BATCH_AXES)), 2)
    for shard in micro.addressable_shards:  # no row left its device
        d = shard.device.id
        assert set(np.asarray(shard.data).ravel()) <= set(range(8 * d, 8 * d + 8))
    back = jax.jit(lambda m: join_micro_batches(m, 4, mesh))(micro)
    np.testing.assert_array_equal(np.asarray(back), np.arange(64))


def test_schedule_and_optimiser_count_train_steps():
    mesh = make_mesh()
    key = jax.random.key(3)
    batch = global_batch(random_batch(), mesh)
    runs = {}
    for k in (1, 4):
        config = config_for(**{"optim.accum_steps": k, "total_steps": 30})
        assert num_updates(config) == 30
        model, tx = make_model(config), make_optimizer(config)
        schedule = learning_rate_schedule(config)
        step = jax.jit(make_train_step(model, config, mesh, tx, mode_settings(config)), out_shardings=replicated(mesh))
        state = jax.device_put(initial_state(model, tx, config, key), replicated(mesh))
        params0 = jax.tree.map(np.asarray, state.params)
        logged = []
        for s in range(3):
            state, metrics = step(state, batch)
            assert int(state.step) == s + 1
            # One optimiser update per step (optax's counters), at the step's own learning rate.
            counts = [int(c) for _, c in optax.tree.get_all_with_path(state.opt_state, "count")]
            assert counts == [s + 1] * 2  # Adam's and the schedule's
            np.testing.assert_allclose(float(metrics["train/learning_rate"]), float(schedule(s)), rtol=1e-7)
            logged.append(float(metrics["train/loss"]))
            if s == 0:
                moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(), state.params, params0)
                assert max(jax.tree.leaves(moved)) > 0  # the first step already updates
        runs[k] = logged, jax.tree.map(np.asarray, state.params)
    assert learning_rate_schedule(config_for())(1) == learning_rate_schedule(config_for(**{"optim.accum_steps": 4}))(1)
    (loss1, params1), (loss4, params4) = runs[1], runs[4]
    # Same state, batch and RFF draw of each step: the losses agree step by step (the second and third after
    # updates from gradients equal to rounding).
    np.testing.assert_allclose(loss4, loss1, rtol=1e-5)
    # After three AdamW steps (lr 1e-6, 2e-4, 4e-4): entries whose gradient is rounding noise (the key biases) move
    # by a noise-signed fraction of the step, hence 1e-4 absolute; a flipped update (~6e-4) would still show.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), params4, params1)


def temp_bytes(k: int, batch_size: int) -> int:
    """Temporary memory (per device) of the compiled train step with k micro-batches."""
    mesh = make_mesh()
    config = config_for(**{"optim.accum_steps": k, "batch_size": batch_size})
    model, tx = make_model(config), make_optimizer(config)
    state = jax.device_put(initial_state(model, tx, config, jax.random.key(0)), replicated(mesh))
    batch = global_batch({n: v for n, v in random_batch(batch_size).items() if n in ("image", "tokens")}, mesh)
    step = jax.jit(make_train_step(model, config, mesh, tx, mode_settings(config)), donate_argnums=0,
                   out_shardings=replicated(mesh))
    analysis = step.lower(state, batch).compile().memory_analysis()
    if analysis is None:
        pytest.skip("this backend reports no memory analysis")
    return analysis.temp_size_in_bytes


def test_accumulation_keeps_less_in_memory():
    """A global batch of 1024 (128 rows per device): with 4 micro-batches only a quarter of the towers' activations
    is alive at once (the compared vectors [B, F] and the objective's [B/n, B] logits stay whole)."""
    whole, quarter = temp_bytes(1, 1024), temp_bytes(4, 1024)
    print(f"compiled step temp memory per device, batch 1024: accum 1 {whole / 2**20:.1f} MiB, "
          f"accum 4 {quarter / 2**20:.1f} MiB")
    assert quarter < 0.6 * whole


@pytest.mark.parametrize("overrides,match", [
    ({"optim.accum_steps": 4, "batch_size": 48},
     r"config fields batch_size = 48 and optim.accum_steps = 4: batch_size must be divisible by "
     r"optim.accum_steps x the number of devices \(4 x 8 = 32\)"),
    ({"optim.accum_steps": 0}, "optim.accum_steps must be a positive int"),
])
def test_bad_accumulation_configs(overrides, match):
    with pytest.raises(ValueError, match=match):
        validate_config(config_for(**overrides))


def test_steps_need_not_be_a_multiple_of_accum_steps():
    validate_config(config_for(**{"optim.accum_steps": 4, "total_steps": 30}))
    config = config_for(**{"optim.accum_steps": 4, "epochs": 2.5, "warmup_epochs": 0.5})
    # 1000 examples at batch 64: 15 steps an epoch; 37.5 -> 38 steps (no rounding to whole groups of 4).
    assert run_data.schedule(config, 1000) == (round(2.5 * 15), round(0.5 * 15))
