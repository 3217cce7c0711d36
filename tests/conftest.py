"""Test set-up: eight fake CPU devices, so sharded code runs here as it would on an 8-chip host; and one trained
digits run shared by every test that needs a checkpoint."""
import os

import pytest

# Must be set before JAX initialises its backends; a caller's own XLA_FLAGS win.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# gcsfs would otherwise probe every bucket over gRPC (60 s each against the test's fake GCS); read at its import.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
# The training subprocesses start with huge pages for their allocator, as the command line gives itself
# (wpce_jax/huge_pages.py), without re-executing.
os.environ.setdefault("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")


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
