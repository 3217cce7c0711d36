"""Which accelerator JAX runs on: a one-line report for the start-up log, and a check that stops a run meant for
accelerators before it falls back to the CPU without a word (what `pip install -r requirements.txt` alone gives:
a CPU-only JAX, even on a TPU VM or a GPU host).

    check_accelerator(config.get("require_accelerator", False))
    print(describe())   # jax 0.10.2 on gpu: 8 x NVIDIA H100 80GB HBM3 (8 local), process 0 of 1

Both start JAX's backends, so in a multi-process run call them after jax.distributed.initialize().

The accelerator builds: `pip install -r requirements-tpu.txt` (libtpu) or `pip install -r requirements-gpu.txt`
(JAX's CUDA 12 plugin), or the extras `pip install -e ".[tpu]"` / `".[cuda12]"` / `".[cuda13]"`.
"""
import glob
import importlib.metadata
import os
import shutil
from typing import Callable, Optional, Sequence

import jax

from wpce_jax.errors import UserError

# pip distributions that give JAX an accelerator backend: if one is installed and JAX still runs on the CPU, the
# plugin failed to start (JAX logged why), which is a different fix from installing it.
ACCELERATOR_PLUGINS = ("libtpu", "libtpu-nightly", "jax-cuda12-plugin", "jax-cuda13-plugin")


class AcceleratorMissingError(UserError, RuntimeError):
    """The config requires an accelerator (`require_accelerator`) but JAX's default backend is the CPU."""


def describe() -> str:
    """One line for the start-up log: jax version, platform, device kind and count (global and local), process."""
    devices = jax.devices()
    kinds = ", ".join(sorted({d.device_kind for d in devices}))
    return (f"jax {jax.__version__} on {jax.default_backend()}: {len(devices)} x {kinds} "
            f"({jax.local_device_count()} local), process {jax.process_index()} of {jax.process_count()}")


def tpu_hints() -> list[str]:
    """What suggests TPU chips on this host: TPU VM device files (/dev/accel* on v2-v4, /dev/vfio/N on v5e and
    later; /dev/vfio/vfio alone is the generic VFIO control file, not a chip)."""
    return sorted(glob.glob("/dev/accel*")) + sorted(p for p in glob.glob("/dev/vfio/*") if p != "/dev/vfio/vfio")


def gpu_hints() -> list[str]:
    """What suggests NVIDIA GPUs on this host: the driver's device files, nvidia-smi on PATH."""
    found = sorted(glob.glob("/dev/nvidia[0-9]*"))
    if shutil.which("nvidia-smi"):
        found.append("nvidia-smi on PATH")
    return found


def installed_plugins() -> list[str]:
    """The accelerator plugins installed in this environment, as "name version"."""
    found = []
    for name in ACCELERATOR_PLUGINS:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def _listing(items: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _message(backend: str, causes: Sequence[str]) -> str:
    return (f"JAX {jax.__version__} found no accelerator (default backend: {backend}) but the config requires one: "
            f"{'; also '.join(causes)}. To run on the CPU anyway, pass --config.require_accelerator=False.")


def missing_accelerator_message(backend: str, *, tpu: Sequence[str] = (), gpu: Sequence[str] = (),
                                plugins: Sequence[str] = (), jax_platforms: Optional[str] = None) -> str:
    """Why JAX runs on `backend` rather than an accelerator, and the fix, from what the probes found."""
    causes = []
    if jax_platforms and not {"tpu", "cuda", "gpu", "rocm"} & {p.strip().lower() for p in jax_platforms.split(",")}:
        causes.append(f"JAX_PLATFORMS={jax_platforms} in the environment keeps JAX off the accelerators: unset it")
        if plugins:  # the plugin was never tried: unsetting JAX_PLATFORMS is the whole fix
            return _message(backend, causes)
    if plugins:
        kind = "gpu" if any(p.startswith("jax-cuda") for p in plugins) else "tpu"
        causes.append(
            f"{_listing(plugins)} is installed but JAX did not start it: its warning above says why (a plugin "
            f"version other than jax {jax.__version__}? an NVIDIA driver too old for its CUDA? the device held "
            f"by another process?); reinstall the matching build with `pip install -r requirements-{kind}.txt`")
    elif tpu:
        causes.append(f"this looks like a TPU VM ({_listing(tpu)}) but JAX sees no TPU: install its TPU build "
                      f"with `pip install -r requirements-tpu.txt` (or `pip install -e \".[tpu]\"`)")
    elif gpu:
        causes.append(f"this looks like an NVIDIA GPU host ({_listing(gpu)}) but JAX sees no GPU: install its CUDA "
                      f"build with `pip install -r requirements-gpu.txt` (or `pip install -e \".[cuda12]\"`, "
                      f"\".[cuda13]\" for a CUDA 13 driver)")
    else:
        causes.append("install JAX's accelerator build: `pip install -r requirements-tpu.txt` on a TPU VM, "
                      "`pip install -r requirements-gpu.txt` on an NVIDIA GPU host (no TPU or NVIDIA device "
                      "files were found on this host)")
    return _message(backend, causes)


def check_accelerator(required: bool, *, backend: Optional[str] = None,
                      tpu_probe: Optional[Callable[[], list[str]]] = None,
                      gpu_probe: Optional[Callable[[], list[str]]] = None,
                      plugin_probe: Optional[Callable[[], list[str]]] = None,
                      environ: Optional[dict] = None) -> None:
    """Raise AcceleratorMissingError when `required` and JAX's default backend is the CPU; nothing otherwise.

    The keyword arguments replace what is probed (for tests): the backend name, the TPU / GPU / plugin probes
    (default: this module's tpu_hints, gpu_hints, installed_plugins, looked up at call time) and the environment.
    """
    if not required:
        return
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return
    environ = os.environ if environ is None else environ
    raise AcceleratorMissingError(missing_accelerator_message(
        backend, tpu=(tpu_probe or tpu_hints)(), gpu=(gpu_probe or gpu_hints)(),
        plugins=(plugin_probe or installed_plugins)(), jax_platforms=environ.get("JAX_PLATFORMS")))


__all__ = ["AcceleratorMissingError", "describe", "check_accelerator", "missing_accelerator_message", "tpu_hints",
           "gpu_hints", "installed_plugins"]
