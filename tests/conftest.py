"""Test set-up: eight fake CPU devices, so sharded code runs here as it would on an 8-chip host; and one trained
digits run shared by every test that needs a checkpoint, in every pytest-xdist worker (README: `-n 3`)."""
import atexit
import os
import shutil
import tempfile

import pytest

from xla_flags import cpu_flags

# Must be set before JAX initialises its backends; a caller's own XLA_FLAGS win. Flags that make compiling cheaper:
# xla_flags.py.
os.environ.setdefault("XLA_FLAGS", cpu_flags(8))
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


def _shared(tmp_path_factory, name: str, build) -> str:
    """A directory built once for the whole test session, whatever the number of pytest-xdist workers: the first
    worker to get here builds it under the session's common temporary root while holding a file lock, the others wait
    and reuse it (with one process, the same thing without waiting)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # each worker has its own basetemp below the session's
    path, done = root / f"shared_{name}", root / f"shared_{name}.done"
    with FileLock(str(root / f"shared_{name}.lock")):
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)  # a build that failed part-way
            path.mkdir()
            build(str(path))
            done.touch()
    return str(path)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """Where the built-in digits are written once for the whole session (data.digits.cached_build is safe from
    several processes at once)."""
    return _shared(tmp_path_factory, "cache", lambda path: None)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory, cache_dir):
    """The workdir of one uninterrupted 30-step tiny digits run (tests must not modify it)."""
    from runs import run_cli

    return _shared(tmp_path_factory, "digits_run", lambda workdir: run_cli(workdir, cache_dir))


# The files that take longest go first: with `-n 3 --dist loadfile` (README) a file runs whole on one worker, so a long
# file that started last would leave the other workers idle at the end. The order within each file is kept.
# Measured: the sum of each file's test durations under `-n 3`, longest first (the 12 files over 45 s).
SLOW_FIRST = ("test_train.py", "test_ranking_mode.py", "test_fsdp.py", "test_evaluate.py", "test_accumulation.py",
              "test_training_modes.py", "test_models.py", "test_linear_probe.py", "test_data_pipeline.py",
              "test_objectives_training.py", "test_device_check.py", "test_multiprocess.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
