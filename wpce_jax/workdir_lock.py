"""One run per workdir: DIR/run.lock names the run that holds it.

Two trainers on one workdir would both train and interleave their metrics and checkpoints. The lock file holds the
holder's host, pid and start time, and a heartbeat that a background thread of the holder refreshes every
HEARTBEAT_EVERY_S, whatever the run is doing (a long evaluation included). A lock is stale, and is taken over with one
line saying so, when its heartbeat is older than STALE_AFTER_S (a preempted VM whose run could not release it, or on
this host a dead run whose pid was reused) or, on this host, when its process is gone. Only process 0 of a run takes
it.
"""
import datetime
import json
import os
import socket
import threading
import time

from etils import epath

from wpce_jax.errors import UserError
from wpce_jax.paths import write_text

LOCK_NAME = "run.lock"
STALE_AFTER_S = 600.0
HEARTBEAT_EVERY_S = 60.0  # well under STALE_AFTER_S: a slow write or a busy host does not make a live lock stale


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
    """Context manager: takes DIR/run.lock on enter (WorkdirLockedError if a live run holds it), refreshes its
    heartbeat from a daemon thread while held, and stops that thread and releases the lock on exit."""

    def __init__(self, workdir, enabled: bool = True, log=print, heartbeat_every_s: float = HEARTBEAT_EVERY_S,
                 stale_after_s: float = STALE_AFTER_S):
        self.path = epath.Path(workdir) / LOCK_NAME
        self.enabled, self.log = enabled, log
        self.heartbeat_every_s, self.stale_after_s = heartbeat_every_s, stale_after_s
        self.host, self.pid = socket.gethostname(), os.getpid()
        self._started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self._stop = threading.Event()
        self._thread = None

    def _write(self) -> None:
        record = {"host": self.host, "pid": self.pid, "started": self._started, "heartbeat": time.time()}
        write_text(self.path, json.dumps(record))

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # a lock file cut short: nobody can be sure of it, treat as stale
            return {}

    def _stale_because(self, holder: dict) -> str | None:
        """Why the holder's lock is stale, or None while it is live."""
        age = time.time() - float(holder.get("heartbeat", 0))
        if age >= self.stale_after_s:  # checked first on this host too: a dead run's pid may have been reused
            return f"its heartbeat is {age:.0f} s old (stale after {self.stale_after_s:.0f} s)"
        if holder.get("host") == self.host and "pid" in holder and not _alive(int(holder["pid"])):
            return "its process is gone"
        return None

    def __enter__(self):
        if not self.enabled:
            return self
        holder = self._holder()
        if holder is not None and (holder.get("host"), holder.get("pid")) != (self.host, self.pid):
            who = f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
            reason = self._stale_because(holder)
            if reason is None:
                raise WorkdirLockedError(
                    f"{self.path.parent} is in use by another run ({who}); stop that run or pick another --workdir "
                    f"(if that run is gone, delete {self.path})")
            self.log(f"taking over the stale lock of a run that is gone ({who}): {reason}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write()
        self._thread = threading.Thread(target=self._beat, name="workdir-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _ours(self, holder: dict | None) -> bool:
        return holder is not None and (holder.get("host"), holder.get("pid"), holder.get("started")) == (
            self.host, self.pid, self._started)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_every_s):
            try:
                # A run that was frozen past the stale limit may have lost the lock to another: never overwrite it.
                if not self._ours(self._holder()):
                    self.log(f"{self.path} was taken over by another run; this run no longer holds the workdir")
                    return
                self._write()
            except Exception as e:  # noqa: BLE001 - e.g. an object store's hiccup: the next beat retries
                self.log(f"could not refresh the heartbeat of {self.path}: {e}")

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self.enabled and self._ours(self._holder()):
            self.path.unlink(missing_ok=True)
