"""Huge pages for the host allocator: the command re-executes itself once with GLIBC_TUNABLES=glibc.malloc.hugetlb=1.

XLA:CPU allocates and frees a step's buffers (hundreds of MB of temporaries) every step. With 4 KiB pages the
kernel then faults every page in again, step after step: 5.8 million minor faults in 7 ViT-Ti/16 steps on 2 cores,
half a core spent in the kernel. With glibc's `hugetlb=1` tunable, malloc marks its memory for transparent huge
pages (2 MiB, madvise), which cuts the faults 25x and that train step from 1.79 s to 1.23 s
(benchmarks/train_step.py --preset=ti16). On accelerators it only touches host memory.

glibc reads tunables when a process starts, hence the re-execution (same interpreter, options and arguments, same
process id). Nothing happens when GLIBC_TUNABLES already sets the tunable (to anything), when WPCE_HUGE_PAGES=0, or
off Linux. glibc older than 2.35 ignores the tunable, and a kernel with transparent huge pages set to "never" too.
"""
import os
import sys

TUNABLE = "glibc.malloc.hugetlb"


def reexec_with_huge_pages() -> None:
    """Replaces this process by the same command with the tunable set; returns when there is nothing to do.
    Call it first thing, before imports that take time: everything done before it is done twice."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if TUNABLE in tunables or os.environ.get("WPCE_HUGE_PAGES") == "0" or not sys.platform.startswith("linux"):
        return
    env = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, (tunables, f"{TUNABLE}=1"))))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
