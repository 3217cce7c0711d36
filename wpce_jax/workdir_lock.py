"""One run per workdir: DIR/run.lock names the run that holds it.

Two trainers on one workdir would both train and interleave their metrics and checkpoints. The lock file holds the
holder's host, pid and start time, and a heartbeat the holder refreshes while it runs. A lock is stale, and is
taken over with one line saying so, when its process is gone (same host) or its heartbeat is older than
STALE_AFTER_S (another host, e.g. a preempted VM whose run could not release it). Only process 0 of a run takes it.
"""
import datetime
import json
import os
import socket
import time

from etils import epath

from wpce_jax.errors import UserError
from wpce_jax.paths import write_text

LOCK_NAME = "run.lock"
STALE_AFTER_S = 600.0
HEARTBEAT_EVERY_S = 60.0


class WorkdirLockedError(UserError, RuntimeError):
    """Another live run holds the workdir."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class WorkdirLock:
    """Context manager: takes DIR/run.lock on enter (WorkdirLockedError if a live run holds it), releases it on
    exit; `heartbeat()` refreshes it (call it often; it writes at most every HEARTBEAT_EVERY_S)."""

    def __init__(self, workdir, enabled: bool = True, log=print):
        self.path = epath.Path(workdir) / LOCK_NAME
        self.enabled, self.log = enabled, log
        self.host, self.pid = socket.gethostname(), os.getpid()
        self._started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self._last_beat = 0.0

    def _write(self) -> None:
        self._last_beat = time.time()
        record = {"host": self.host, "pid": self.pid, "started": self._started, "heartbeat": self._last_beat}
        write_text(self.path, json.dumps(record))

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # a lock file cut short: nobody can be sure of it, treat as stale
            return {}

    def __enter__(self):
        if not self.enabled:
            return self
        holder = self._holder()
        if holder is not None and (holder.get("host"), holder.get("pid")) != (self.host, self.pid):
            same_host = holder.get("host") == self.host
            age = time.time() - float(holder.get("heartbeat", 0))
            live = _alive(int(holder["pid"])) if same_host and "pid" in holder else age < STALE_AFTER_S
            who = f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
            if live:
                raise WorkdirLockedError(
                    f"{self.path.parent} is in use by another run ({who}); stop that run or pick another --workdir "
                    f"(if that run is gone, delete {self.path})")
            self.log(f"taking over the stale lock of a run that is gone ({who})")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write()
        return self

    def heartbeat(self) -> None:
        if self.enabled and time.time() - self._last_beat >= HEARTBEAT_EVERY_S:
            self._write()

    def __exit__(self, *exc):
        if self.enabled and (self._holder() or {}).get("pid") == self.pid:
            self.path.unlink(missing_ok=True)
