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
