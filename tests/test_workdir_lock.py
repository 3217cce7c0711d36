"""One run per workdir: a live holder stops a second run with its name; a dead or silent one is taken over; the
holder's heartbeat advances on its own while the run does anything else."""
import json
import os
import re
import subprocess
import sys
import time

import pytest

from wpce_jax import workdir_lock
from wpce_jax.workdir_lock import WorkdirLock, WorkdirLockedError


def write_lock(tmp_path, **holder):
    (tmp_path / workdir_lock.LOCK_NAME).write_text(json.dumps(holder))


def test_lock_is_taken_and_released(tmp_path):
    with WorkdirLock(tmp_path) as lock:
        held = json.loads((tmp_path / "run.lock").read_text())
        assert (held["host"], held["pid"]) == (lock.host, lock.pid)
    assert not (tmp_path / "run.lock").exists()


def test_a_live_run_on_this_host_keeps_the_workdir(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path, host=WorkdirLock(tmp_path).host, pid=other.pid, started="then", heartbeat=time.time())
        with pytest.raises(WorkdirLockedError, match=rf"in use by another run \(pid {other.pid} on .*delete .*run.lock"):
            WorkdirLock(tmp_path).__enter__()
    finally:
        other.kill()
        other.wait()
    lines = []
    with WorkdirLock(tmp_path, log=lines.append):  # its process is gone now: stale
        pass
    assert lines and "taking over the stale lock" in lines[0] and str(other.pid) in lines[0]
    assert "its process is gone" in lines[0]


def test_another_hosts_lock_is_live_while_its_heartbeat_is_fresh(tmp_path):
    write_lock(tmp_path, host="elsewhere", pid=1, started="then", heartbeat=time.time() - 5)
    with pytest.raises(WorkdirLockedError, match="on elsewhere"):
        WorkdirLock(tmp_path).__enter__()
    write_lock(tmp_path, host="elsewhere", pid=1, started="then", heartbeat=time.time() - 2 * workdir_lock.STALE_AFTER_S)
    with WorkdirLock(tmp_path, log=lambda line: None):
        assert json.loads((tmp_path / "run.lock").read_text())["host"] != "elsewhere"


def test_disabled_lock_touches_nothing(tmp_path):
    with WorkdirLock(tmp_path, enabled=False):
        assert not (tmp_path / "run.lock").exists()


def heartbeat(tmp_path) -> float:
    return json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())["heartbeat"]


def test_the_heartbeat_advances_while_the_holder_does_nothing(tmp_path):
    with WorkdirLock(tmp_path, heartbeat_every_s=0.02):
        first = heartbeat(tmp_path)
        deadline = time.time() + 10  # generous: a loaded machine may not schedule the thread at once
        while heartbeat(tmp_path) == first and time.time() < deadline:
            time.sleep(0.01)
        assert heartbeat(tmp_path) > first


def test_a_live_pid_with_an_old_heartbeat_is_taken_over(tmp_path):
    """On one host a dead run's pid may belong to another process by now: the old heartbeat decides."""
    alive = os.getppid()
    assert workdir_lock._alive(alive)
    write_lock(tmp_path, host=WorkdirLock(tmp_path).host, pid=alive, started="then", heartbeat=time.time() - 3)
    with pytest.raises(WorkdirLockedError, match=f"pid {alive} on"):  # fresh: live
        WorkdirLock(tmp_path, stale_after_s=60).__enter__()
    lines = []
    with WorkdirLock(tmp_path, log=lines.append, stale_after_s=2):
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    assert len(lines) == 1 and f"taking over the stale lock of a run that is gone (pid {alive} on" in lines[0]
    assert re.search(r"its heartbeat is \d+ s old \(stale after 2 s\)$", lines[0]), lines[0]


def test_the_heartbeat_thread_stops_at_release(tmp_path):
    lock = WorkdirLock(tmp_path, heartbeat_every_s=0.01)
    with lock:
        thread = lock._thread
        assert thread.is_alive()
    assert not thread.is_alive()
    time.sleep(0.05)  # a beat after the release would write the lock file again
    assert not (tmp_path / "run.lock").exists()


def test_a_holder_that_lost_the_lock_never_overwrites_the_new_holder(tmp_path):
    # A run frozen past the stale limit wakes up after another run took the workdir over: its heartbeat thread must
    # leave the new holder's lock alone, and its release must not delete it.
    lines = []
    with WorkdirLock(tmp_path, log=lines.append, heartbeat_every_s=0.02):
        taker = {"host": "other-host", "pid": 1, "started": "later", "heartbeat": time.time()}
        write_lock(tmp_path, **taker)
        time.sleep(0.2)  # ten heartbeat periods
        assert json.loads((tmp_path / "run.lock").read_text()) == taker
    assert json.loads((tmp_path / "run.lock").read_text()) == taker
    assert any("taken over by another run" in line for line in lines)
