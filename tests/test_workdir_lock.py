"""One run per workdir: a live holder stops a second run with its name; a dead or silent one is taken over."""
import json
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
        write_lock(tmp_path, host=WorkdirLock(tmp_path).host, pid=other.pid, started="then", heartbeat=0)
        with pytest.raises(WorkdirLockedError, match=rf"in use by another run \(pid {other.pid} on .*delete .*run.lock"):
            WorkdirLock(tmp_path).__enter__()
    finally:
        other.kill()
        other.wait()
    lines = []
    with WorkdirLock(tmp_path, log=lines.append):  # its process is gone now: stale
        pass
    assert lines and "taking over the stale lock" in lines[0] and str(other.pid) in lines[0]


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
