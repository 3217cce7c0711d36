"""MFU: XLA's FLOP count of a compiled computation and the peak table."""
import jax
import jax.numpy as jnp
import pytest

from wpce_jax import mfu


def test_step_flops_counts_a_matmul():
    m, k, n = 64, 128, 32
    compiled = jax.jit(jnp.matmul).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
    assert mfu.step_flops(compiled) == pytest.approx(2 * m * k * n, rel=0.01)


@pytest.mark.parametrize("kind,peak", [("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5p", 459e12),
                                       ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                       ("NVIDIA A100-SXM4-40GB", 312e12), ("cpu", None)])
def test_peak_flops(kind, peak):
    assert mfu.peak_flops(kind) == peak


def test_mfu():
    assert mfu.mfu(275e12 * 0.5, 1.0, "TPU v4") == pytest.approx(0.5)
    assert mfu.mfu(1e12, 1.0, "cpu") is None and mfu.mfu(None, 1.0, "TPU v4") is None


def test_train_step_flops_count_the_model_once_whatever_the_accumulation(cache_dir, tmp_path):
    """Accumulation re-runs the forward pass and XLA counts a loop body once: MFU uses the unsplit step's FLOPs."""
    import numpy as np

    from wpce_jax import train
    from wpce_jax.config_validation import mode_settings
    from wpce_jax.data import run_data
    from wpce_jax.models.model_config import make_model
    from wpce_jax.optimizer import make_optimizer
    from wpce_jax.parallel import global_batch, make_mesh, replicated
    from wpce_jax.train_step import initial_state
    from runs import tiny_config

    flops = []
    for accum in (1, 4):
        config = run_data.resolve(tiny_config(cache_dir, **{"optim.accum_steps": accum}), str(tmp_path)).config
        mesh = make_mesh()
        model, tx = make_model(config), make_optimizer(config)
        state = jax.device_put(initial_state(model, tx, config, jax.random.key(0)), replicated(mesh))
        rng = np.random.default_rng(0)
        batch = global_batch({"image": rng.integers(0, 255, (32, 32, 32, 3)).astype(np.float32) / 255,
                              "tokens": rng.integers(0, 50, (32, config.model.text.context_length)).astype(np.int32)},
                             mesh)
        flops.append(train._compile(model, config, mesh, tx, mode_settings(config), state, batch)[1])
    assert flops[0] > 0 and flops[1] == pytest.approx(flops[0], rel=1e-6)
