"""Model FLOPs utilisation: the train step's FLOPs (XLA's cost analysis of the compiled step) per second, as a share
of the chips' dense bfloat16 peak. Only for chips whose peak is known (TPUs and NVIDIA data-centre GPUs); None on
CPUs and unknown devices."""
from typing import Optional

# Dense bfloat16 peak FLOP/s per device as JAX counts devices (one per chip since TPU v4), matched in this order
# against jax.Device.device_kind (e.g. "TPU v4", "TPU v5 lite", "NVIDIA H100 80GB HBM3").
PEAK_BF16_FLOPS = (
    ("TPU v6 lite", 918e12), ("TPU v5 lite", 197e12), ("TPU v5p", 459e12), ("TPU v5", 459e12),
    ("TPU v4", 275e12), ("TPU v3", 61.5e12), ("TPU v2", 22.5e12),
    ("B200", 2250e12), ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12),
    ("L4", 121e12), ("A10G", 70e12),
)


def peak_flops(device_kind: str) -> Optional[float]:
    """The device's dense bf16 peak FLOP/s, or None when it is not in the table (CPUs among them)."""
    for name, peak in PEAK_BF16_FLOPS:
        if name in device_kind:
            return peak
    return None


def step_flops(computation) -> Optional[float]:
    """FLOPs of one call of a lowered (jax.jit(...).lower(...): the whole program) or compiled (.compile(): one
    device's part) computation, from XLA's cost analysis; None when the backend reports none."""
    analysis = computation.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per partition
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def mfu(flops_per_step: Optional[float], seconds_per_step: float, device_kind: str) -> Optional[float]:
    """Achieved FLOP/s per device over the peak; None when either is unknown."""
    peak = peak_flops(device_kind)
    if flops_per_step is None or peak is None or seconds_per_step <= 0:
        return None
    return flops_per_step / seconds_per_step / peak
