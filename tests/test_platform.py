"""wpce_jax/platform.py: the start-up line, and the accelerator check's error and its hints (the probes of the
host are replaced, so these run the same on any machine)."""
import fnmatch

import jax
import pytest

from wpce_jax import platform


def no_hints():
    return []


@pytest.fixture
def bare_cpu_host(monkeypatch):
    """A host with no TPU/GPU device files, no accelerator plugin and no JAX_PLATFORMS."""
    monkeypatch.setattr(platform, "tpu_hints", no_hints)
    monkeypatch.setattr(platform, "gpu_hints", no_hints)
    monkeypatch.setattr(platform, "installed_plugins", no_hints)
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)


def test_describe_on_cpu():
    line = platform.describe()
    n = jax.device_count()  # 8 under tests/conftest.py's XLA_FLAGS
    assert line == f"jax {jax.__version__} on cpu: {n} x cpu ({n} local), process 0 of 1"
    assert "\n" not in line


def test_not_required_passes_on_cpu():
    assert jax.default_backend() == "cpu"
    platform.check_accelerator(False)


def test_required_on_a_bare_cpu_host_gives_the_install_hint(bare_cpu_host):
    with pytest.raises(platform.AcceleratorMissingError) as raised:
        platform.check_accelerator(True)
    message = str(raised.value)
    assert isinstance(raised.value, RuntimeError)
    assert "default backend: cpu" in message
    assert "pip install -r requirements-tpu.txt" in message and "pip install -r requirements-gpu.txt" in message
    assert "--config.require_accelerator=False" in message
    assert "JAX_PLATFORMS" not in message


def test_required_passes_on_an_accelerator():
    platform.check_accelerator(True, backend="gpu")
    platform.check_accelerator(True, backend="tpu")


def test_gpu_host_hint(bare_cpu_host, monkeypatch):
    """/dev/nvidia0 but a CPU-only JAX: the message names the GPU files and requirements-gpu.txt only."""
    monkeypatch.setattr(platform, "gpu_hints", lambda: ["/dev/nvidia0", "nvidia-smi on PATH"])
    with pytest.raises(platform.AcceleratorMissingError) as raised:
        platform.check_accelerator(True)
    message = str(raised.value)
    assert "NVIDIA GPU host (/dev/nvidia0, nvidia-smi on PATH)" in message
    assert "pip install -r requirements-gpu.txt" in message and ".[cuda12]" in message
    assert "requirements-tpu.txt" not in message
    assert "--config.require_accelerator=False" in message


def fake_dev(monkeypatch, files):
    """glob.glob over `files` instead of the real /dev."""
    monkeypatch.setattr(platform.glob, "glob", lambda pattern: fnmatch.filter(files, pattern))


def test_gpu_probe_finds_device_files(monkeypatch):
    """/dev/nvidia0 counts, /dev/nvidiactl (the driver's control file) does not; nvidia-smi on PATH counts."""
    fake_dev(monkeypatch, ["/dev/nvidiactl", "/dev/nvidia1", "/dev/nvidia0", "/dev/null"])
    monkeypatch.setattr(platform.shutil, "which", lambda name: None)
    assert platform.gpu_hints() == ["/dev/nvidia0", "/dev/nvidia1"]
    monkeypatch.setattr(platform.shutil, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    assert platform.gpu_hints() == ["/dev/nvidia0", "/dev/nvidia1", "nvidia-smi on PATH"]


def test_tpu_probe_ignores_the_generic_vfio_file(monkeypatch):
    fake_dev(monkeypatch, ["/dev/vfio/vfio", "/dev/vfio/1", "/dev/vfio/0", "/dev/null"])
    assert platform.tpu_hints() == ["/dev/vfio/0", "/dev/vfio/1"]
    fake_dev(monkeypatch, ["/dev/vfio/vfio", "/dev/accel0"])
    assert platform.tpu_hints() == ["/dev/accel0"]


def test_injected_probes_tpu_vm():
    with pytest.raises(platform.AcceleratorMissingError, match=r"TPU VM \(/dev/accel0.*requirements-tpu\.txt"):
        platform.check_accelerator(True, backend="cpu", tpu_probe=lambda: ["/dev/accel0"], gpu_probe=no_hints,
                                   plugin_probe=no_hints, environ={})


def test_installed_plugin_that_did_not_start():
    with pytest.raises(platform.AcceleratorMissingError) as raised:
        platform.check_accelerator(True, backend="cpu", tpu_probe=no_hints, gpu_probe=lambda: ["/dev/nvidia0"],
                                   plugin_probe=lambda: ["jax-cuda12-plugin 0.10.1"], environ={})
    assert "jax-cuda12-plugin 0.10.1 is installed but JAX did not start it" in str(raised.value)
    assert "requirements-gpu.txt" in str(raised.value)


def test_jax_platforms_cpu_is_named():
    with pytest.raises(platform.AcceleratorMissingError, match="JAX_PLATFORMS=cpu in the environment"):
        platform.check_accelerator(True, backend="cpu", tpu_probe=no_hints, gpu_probe=no_hints,
                                   plugin_probe=no_hints, environ={"JAX_PLATFORMS": "cpu"})
    # JAX_PLATFORMS that names an accelerator is not the cause
    message = platform.missing_accelerator_message("cpu", jax_platforms="cuda,cpu")
    assert "JAX_PLATFORMS" not in message


def test_installed_plugins_reads_package_metadata(monkeypatch):
    versions = {"libtpu": "0.0.42.1"}

    def version(name):
        if name not in versions:
            raise platform.importlib.metadata.PackageNotFoundError(name)
        return versions[name]

    monkeypatch.setattr(platform.importlib.metadata, "version", version)
    assert platform.installed_plugins() == ["libtpu 0.0.42.1"]
