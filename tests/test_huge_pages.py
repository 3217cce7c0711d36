"""The command line re-executes itself once with glibc's huge-page tunable (wpce_jax/huge_pages.py)."""
import os
import subprocess
import sys

import pytest

SHOW = ("from wpce_jax.huge_pages import reexec_with_huge_pages; reexec_with_huge_pages(); import os, sys; "
        "print(os.getpid(), os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")


def run(env_changes):
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "WPCE_HUGE_PAGES")}
    env.update(env_changes)
    out = subprocess.run([sys.executable, "-c", SHOW, "--flag=1", "x y"], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    _, tunables, args = out.stdout.split(" ", 2)
    return tunables, args.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables are Linux's")
def test_reexec_adds_the_tunable_once_and_keeps_the_arguments():
    assert run({}) == ("glibc.malloc.hugetlb=1", "['--flag=1', 'x y']")
    # Other tunables are kept; a setting of its own is respected; WPCE_HUGE_PAGES=0 turns it off.
    assert run({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})[0] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert run({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})[0] == "glibc.malloc.hugetlb=0"
    assert run({"WPCE_HUGE_PAGES": "0"})[0] == "None"


@pytest.mark.skipif(not os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled") or "[madvise]" not in
                    open("/sys/kernel/mm/transparent_hugepage/enabled").read(), reason="THP not in madvise mode")
def test_the_tunable_gives_huge_pages_to_malloc():
    """256 MiB from glibc's malloc, written once: backed by huge pages with the tunable and not without it (the
    kernel's "madvise" mode, where only memory marked for them gets them; NumPy marks its own large arrays, so
    plain malloc is used here, as XLA's buffers are)."""
    code = ("import ctypes, re; libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p; "
            "p = libc.malloc(2**28); ctypes.memset(p, 1, 2**28); "
            "print(sum(int(n) for n in re.findall(r'AnonHugePages:\\s+(\\d+)', open('/proc/self/smaps').read())))")
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    huge = {value: int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                                      env={**env, "GLIBC_TUNABLES": f"glibc.malloc.hugetlb={value}"},
                                      check=True).stdout) for value in (0, 1)}
    assert huge[1] >= 128 * 1024 and huge[0] < 16 * 1024, huge  # kB
