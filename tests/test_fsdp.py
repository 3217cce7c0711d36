"""FSDP (`mesh.fsdp`): the sharding rule, training steps equal to replicated ones on 8 devices, checkpoints that
restore under another split, and a run resumed with another split."""
import os
import shutil
from functools import partial

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from wpce_jax import checkpoint
from wpce_jax.checkpoint import Checkpointer, abstract_like
from wpce_jax.config_validation import mode_settings
from wpce_jax.data import run_data
from wpce_jax.models.model_config import make_model
from wpce_jax.optimizer import make_optimizer
from wpce_jax.parallel import FSDP_AXIS, fsdp_spec, global_batch, make_mesh, state_shardings
from wpce_jax.train_step import initial_state, make_train_step
from runs import final_params, losses, tiny_config, train_here

K = jax.tree_util.DictKey


def test_fsdp_spec_splits_the_largest_divisible_axis_and_never_a_scanned_layer_axis():
    assert fsdp_spec((K("dense"), K("kernel")), (64, 256), 8) == P(None, FSDP_AXIS)
    assert fsdp_spec((K("dense"), K("kernel")), (256, 64), 8) == P(FSDP_AXIS, None)
    assert fsdp_spec((K("dense"), K("kernel")), (64, 64), 8) == P(None, FSDP_AXIS)     # equals: the last
    assert fsdp_spec((K("dense"), K("kernel")), (64, 36), 8) == P(FSDP_AXIS, None)     # 36 not divisible
    assert fsdp_spec((K("ln"), K("scale")), (36,), 8) == P()                          # nothing divisible
    assert fsdp_spec((K("logit_scale"),), (), 8) == P()
    assert fsdp_spec((K("blocks"), K("kernel")), (64, 32, 16), 8) == P(None, FSDP_AXIS, None)
    assert fsdp_spec((K("blocks"), K("bias")), (64, 36), 8) == P()                    # the layer axis stays whole
    assert fsdp_spec((K("dense"), K("kernel")), (64, 256), 1) == P()


def _setup(cache_dir, tmp_path, **overrides):
    data = run_data.resolve(tiny_config(cache_dir, **{"model.scan_blocks": True, **overrides}), str(tmp_path))
    config = data.config
    model, tx = make_model(config), make_optimizer(config)
    rng = np.random.default_rng(0)
    batches = [{"image": rng.normal(size=(32, 32, 32, 3)).astype(np.float32),
                "tokens": data.tokenizer([f"a handwritten {w}" for w in rng.choice(["one", "two", "seven"], 32)])}
               for _ in range(3)]
    return config, model, tx, batches


@pytest.mark.parametrize("accum,splits", [(1, (2, 8)), (2, (8,))])
def test_fsdp_steps_equal_replicated_steps(cache_dir, tmp_path, accum, splits):
    assert jax.device_count() == 8
    config, model, tx, batches = _setup(cache_dir, tmp_path, **{"optim.accum_steps": accum})
    state0 = initial_state(model, tx, config, jax.random.key(3))
    results = {}
    for fsdp in (1, *splits):
        mesh = make_mesh(fsdp=fsdp)
        shardings = state_shardings(state0, mesh)
        state = jax.device_put(state0, shardings)
        step = jax.jit(make_train_step(model, config, mesh, tx, mode_settings(config)), out_shardings=(shardings, None))
        step_losses = []
        for batch in batches:
            state, metrics = step(state, global_batch(batch, mesh))
            step_losses.append(float(metrics["train/loss"]))
        if fsdp == 8:  # the parameters and Adam's moments really are split: each device holds 1/8 of a kernel
            big = max(jax.tree.leaves(state.params), key=lambda a: a.size)
            assert big.addressable_shards[0].data.size == big.size // 8, big.sharding
            assert max(jax.tree.leaves(state.opt_state), key=lambda a: a.size).addressable_shards[0].data.size \
                == big.size // 8
        results[fsdp] = (step_losses, jax.tree.map(np.asarray, state.params))
    losses1, params1 = results[1]
    for fsdp in splits:
        got_losses, got_params = results[fsdp]
        np.testing.assert_allclose(got_losses, losses1, rtol=1e-5)
        jax.tree.map_with_path(partial(_assert_params_close, tol=1e-5, noise=1e-4), got_params, params1)


def _assert_params_close(path, got, want, tol, noise):
    """Within `tol`, except the attention key biases: softmax ignores a shift of the keys, so their exact gradient
    is zero and AdamW (which divides by the gradient's own size) moves them by rounding-noise-signed steps of the
    learning rate, whatever the reduction order; they are only checked to stay below `noise`."""
    name = jax.tree_util.keystr(path)
    if "key" in name and name.endswith("['bias']"):
        assert np.abs(got).max() < noise and np.abs(want).max() < noise, name
    else:
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=name)


def test_fsdp_step_holds_a_share_of_the_state_and_no_more_temporaries(cache_dir, tmp_path):
    """XLA's own accounting of the compiled step per device (scanned blocks): with fsdp 8 the state arguments
    shrink to about 1/8, and the temporaries do not grow (they would if XLA gathered the batch's activations, or
    the scanned stack of layers, instead of one layer's weights at a time: 2.7x the temporaries without
    parallel.gather_fsdp)."""
    config, model, tx, batches = _setup(cache_dir, tmp_path, **{"batch_size": 128, "model.image.depth": 2})
    batches = [{k: np.concatenate([v] * 4) for k, v in batches[0].items()}]
    abstract = jax.eval_shape(lambda: initial_state(model, tx, config, jax.random.key(0)))
    stats = {}
    for fsdp in (1, 8):
        mesh = make_mesh(fsdp=fsdp)
        shardings = state_shardings(abstract, mesh)
        step = jax.jit(make_train_step(model, config, mesh, tx, mode_settings(config)), donate_argnums=0,
                       out_shardings=(shardings, None))
        stats[fsdp] = step.lower(abstract_like(abstract, shardings),
                                 global_batch(batches[0], mesh)).compile().memory_analysis()
    batch_bytes = sum(v.nbytes for v in batches[0].values()) // 8
    state_1, state_8 = (stats[f].argument_size_in_bytes - batch_bytes for f in (1, 8))
    assert state_8 < state_1 / 6, (state_8, state_1)
    assert stats[8].temp_size_in_bytes <= stats[1].temp_size_in_bytes, (stats[8], stats[1])


def test_checkpoint_saved_split_restores_under_another_split(cache_dir, tmp_path):
    config, model, tx, _ = _setup(cache_dir, tmp_path)
    rng = np.random.default_rng(5)
    # Random values in every float array (Adam's moments start at zero), saved from an fsdp-2 placement.
    state = jax.tree.map(lambda x: x + rng.normal(size=x.shape).astype(x.dtype) if np.issubdtype(x.dtype, np.floating)
                         else x, initial_state(model, tx, config, jax.random.key(5)))
    state = jax.device_put(state, state_shardings(state, make_mesh(fsdp=2)))
    saver = Checkpointer(tmp_path / "run", max_to_keep=1, async_save=False)
    saver.save(1, state, 32, config)
    saver.close()
    want = jax.tree.map(np.asarray, state)
    for fsdp in (8, 1):
        mesh = make_mesh(fsdp=fsdp)
        shardings = state_shardings(state, mesh)
        loader = Checkpointer(tmp_path / "run", max_to_keep=1)
        restored, examples = loader.restore(1, abstract_like(state, shardings))
        loader.close()
        assert examples == 32
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, restored), want)
        jax.tree.map(lambda a, s: a.sharding.is_equivalent_to(s, a.ndim) or pytest.fail(f"{a.sharding} != {s}"),
                     restored, shardings)


def test_run_resumed_with_another_split_follows_the_replicated_run(tmp_path, cache_dir, digits_run, capsys):
    """The shared run (fsdp 1) cut back to its step-20 checkpoint and resumed with fsdp 4 to step 30: the same
    losses and parameters up to float32 reduction order."""
    workdir = str(tmp_path / "run")
    shutil.copytree(digits_run, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "30"))
    train_here(workdir, cache_dir, **{"mesh.fsdp": 4})
    out = capsys.readouterr().out
    assert "resumed from the step-20 checkpoint" in out
    assert "changed since the step-20 checkpoint: mesh.fsdp: 1 -> 4" in out
    want, got = losses(digits_run), losses(workdir)
    assert sorted(got) == list(range(1, 31))
    np.testing.assert_allclose([got[s] for s in range(21, 31)], [want[s] for s in range(21, 31)], rtol=1e-5)
    # 10 steps of float32 reduction-order differences, amplified by Adam on small gradients: 1e-4.
    jax.tree.map_with_path(partial(_assert_params_close, tol=1e-4, noise=2e-3), final_params(workdir),
                           final_params(digits_run))
    assert checkpoint.load(workdir).step == 30
