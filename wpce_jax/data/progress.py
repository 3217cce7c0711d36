"""A one-line progress display with rate and ETA (no dependency; safe in logs: plain lines when not a TTY)."""

from __future__ import annotations

import sys
import time


def format_duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):  # NaN or inf: no estimate yet
        return "--:--:--"
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts items and a fraction of work done; prints "desc: items, items/s, percent, ETA".

    ETA comes from the done fraction (e.g. input bytes read), which is known in advance when the item
    count (samples in a tar) is not.
    """

    def __init__(self, desc: str, unit: str = "samples", stream=None, interval: float = 0.5,
                 enabled: bool = True, delay: float = 0.0):
        """delay: seconds before the first line; work that ends sooner prints nothing at all."""
        self.desc, self.unit = desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()
        self.delay = delay
        self.last_print = None  # when the last line was written
        self.count = 0
        self.fraction = 0.0
        if not self.tty:
            self.interval = max(interval, 10.0)  # a line every 10 s in log files, not a flood

    def update(self, count_delta: int = 0, fraction: float | None = None, force: bool = False) -> None:
        self.count += count_delta
        if fraction is not None:
            self.fraction = min(max(fraction, 0.0), 1.0)
        now = time.monotonic()
        due = now - (self.start + self.delay if self.last_print is None else self.last_print + self.interval) >= 0
        if self.enabled and (force or due):
            self.last_print = now
            self.stream.write(("\r" if self.tty else "") + self.line() + ("" if self.tty else "\n"))
            self.stream.flush()

    def rate(self) -> float:
        return self.count / max(time.monotonic() - self.start, 1e-9)

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        eta = elapsed * (1 - self.fraction) / self.fraction if self.fraction > 0 else float("nan")
        return (f"{self.desc}: {self.count:,} {self.unit}, {self.rate():,.1f} {self.unit}/s, "
                f"{100 * self.fraction:5.1f}%, elapsed {format_duration(elapsed)}, ETA {format_duration(eta)}")

    def close(self) -> None:
        if self.last_print is None and time.monotonic() - self.start < self.delay:
            return  # short work stays silent
        self.update(fraction=self.fraction, force=True)
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
