"""Test set-up: eight fake CPU devices, so sharded code runs here as it would on an 8-chip host; and one trained
digits run shared by every test that needs a checkpoint."""
import atexit
import os
import shutil
import tempfile

import pytest

# Must be set before JAX initialises its backends; a caller's own XLA_FLAGS win.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# gcsfs would otherwise probe every bucket over gRPC (60 s each against the test's fake GCS); read at its import.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
# The training subprocesses start with huge pages for their allocator, as the command line gives itself
# (wpce_jax/huge_pages.py), without re-executing.
os.environ.setdefault("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
# One persistent compilation cache for the session, shared by this process and every training or evaluation
# subprocess: the tiny runs compile the same programs again and again, and on 2 cores compiling is most of a run's
# time. A loaded executable is the compiled one, so results are bit-identical (the exact-resume tests compare runs
# compiled fresh with runs read from the cache). Every program is cached, however fast it compiled. Without
# jax_compilation_cache_max_size JAX takes no file lock: a process reading an entry while another writes it gets a
# warning and compiles itself.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="wpce_jax_tests_jax_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """Where the built-in digits are written once for the whole session."""
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory, cache_dir):
    """The workdir of one uninterrupted 30-step tiny digits run (tests must not modify it)."""
    from runs import run_cli

    workdir = str(tmp_path_factory.mktemp("digits_run"))
    run_cli(workdir, cache_dir)
    return workdir
