"""The one progress line of long work (conversion, encoding, training): count, rate, percent done, elapsed, ETA.

Plain lines when the stream is not a TTY (so logs stay readable), one rewritten line on a terminal. The rate is
measured over the window since the last printed line, and time spent inside `pause()` (an evaluation, a checkpoint
wait) counts neither in the rate nor in the ETA.
"""
from __future__ import annotations

import contextlib
import sys
import time


def format_duration(seconds: float) -> str:
    """H:MM:SS; "--:--:--" when there is no estimate (NaN, inf, negative)."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
        return "--:--:--"
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts items; prints "desc: count[/total] unit, rate unit/s, percent, elapsed, ETA[, note]".

    total: the item count when known (training steps); otherwise pass `fraction` to `update` (e.g. input bytes
    read), which gives the ETA when the count is not known in advance. start: items done before this session
    (a resumed run): they count in the position, not in the rate or ETA.
    """

    def __init__(self, desc: str, unit: str = "samples", total: int | None = None, *, start: int = 0, stream=None,
                 interval: float = 0.5, enabled: bool = True, delay: float = 0.0):
        """interval: seconds between lines (at least 10 s when not a TTY; inf: only forced lines);
        delay: seconds before the first line, so that work which ends sooner prints nothing at all."""
        self.desc, self.unit, self.total, self.start = desc, unit, total, start
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval if self.tty else max(interval, 10.0)
        self.delay = delay
        self.count = start
        self.fraction = 0.0
        self._began = time.monotonic()
        self._paused = 0.0                  # seconds spent paused since the start
        self.last_print: float | None = None
        self._window = (self._began, 0.0, start)  # (time, paused seconds, count) when the window opened

    @contextlib.contextmanager
    def pause(self):
        """Time inside does not count (an evaluation between training steps)."""
        began = time.monotonic()
        try:
            yield
        finally:
            self._paused += time.monotonic() - began

    def _active(self, since: float, paused_then: float) -> float:
        return time.monotonic() - since - (self._paused - paused_then)

    def update(self, delta: int = 0, fraction: float | None = None, force: bool = False, note: str = "") -> None:
        """Adds `delta` items; prints a line when one is due (or `force`), `note` appended to it."""
        self.count += delta
        if fraction is not None:
            self.fraction = min(max(fraction, 0.0), 1.0)
        elif self.total:
            self.fraction = self.count / self.total
        now = time.monotonic()
        due = self.interval != float("inf") and now >= (
            self._began + self.delay if self.last_print is None else self.last_print + self.interval)
        if self.enabled and (force or due):
            self.stream.write(("\r" if self.tty else "") + self.line(note) + ("" if self.tty else "\n"))
            self.stream.flush()
        if force or due:
            self.last_print = now
            self._window = (now, self._paused, self.count)

    def rate(self) -> float:
        """Items per second of active time since the last printed line."""
        since, paused_then, count_then = self._window
        return (self.count - count_then) / max(self._active(since, paused_then), 1e-9)

    def line(self, note: str = "") -> str:
        elapsed = self._active(self._began, 0.0)
        done = self.fraction
        # This session's share of its own work (a resumed run started at `start`) times its active time.
        session = (self.count - self.start) / max(self.total - self.start, 1) if self.total else done
        eta = elapsed * (1 - session) / session if session > 0 else float("nan")
        count = f"{self.count:,}" + (f"/{self.total:,}" if self.total else "")
        return (f"{self.desc}: {count} {self.unit}, {self.rate():,.2f} {self.unit}/s, {100 * done:5.1f}%, "
                f"elapsed {format_duration(elapsed)}, ETA {format_duration(eta)}" + (f", {note}" if note else ""))

    def close(self) -> None:
        if self.last_print is None and time.monotonic() - self._began < self.delay:
            return  # short work stays silent
        self.update(force=True)
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
