"""The XLA flags of every test program, in this process (conftest.py) and in its JAX subprocesses (runs.cpu_env).

The tiny test programs spend more time being compiled than running, so the compiler is told to spend less:
  --xla_backend_optimization_level=0   no LLVM optimisation of the machine code (test_fsdp.py: 150 s -> 102 s on 2
                                       cores);
  --xla_cpu_use_fusion_emitters=false  XLA's classic CPU emitters instead of the MLIR fusion emitters: the tiny train
                                       step compiles in 1.2-1.5 s instead of 2.5-3.0 s.
The programs compute the same things; only their machine code is less tuned. Real runs and benchmarks keep XLA's
defaults.
"""
COMPILE_FAST = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def cpu_flags(devices: int) -> str:
    """XLA_FLAGS for a test program with `devices` CPU devices."""
    return f"--xla_force_host_platform_device_count={devices} {COMPILE_FAST}"
