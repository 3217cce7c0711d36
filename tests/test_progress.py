"""The progress line: windowed rate, paused time left out of rate and ETA, formats."""
import io
import time

from wpce_jax.progress import Progress, format_duration


def test_format_duration():
    assert format_duration(0) == "0:00:00"
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(float("nan")) == format_duration(float("inf")) == format_duration(-1) == "--:--:--"


def test_paused_time_is_not_in_the_rate():
    stream = io.StringIO()
    progress = Progress("train", "steps", 100, start=10, stream=stream, interval=float("inf"))
    time.sleep(0.05)
    progress.update(5)
    with progress.pause():
        time.sleep(0.5)
    rate = progress.rate()
    assert 5 / 0.2 < rate < 5 / 0.05 + 1e-9  # about 5 steps in 0.05 s, not in 0.55 s
    assert stream.getvalue() == ""  # interval inf: nothing printed unless forced
    progress.update(force=True, note="loss 1.5")
    line = stream.getvalue()
    assert line.startswith("train: 15/100 steps, ") and line.rstrip().endswith("loss 1.5") and "15.0%" in line
    progress.update(1)
    time.sleep(0.1)
    assert 1 / 0.4 < progress.rate() <= 1 / 0.1  # a new window opened at the printed line: 1 step in 0.1 s


def test_fraction_gives_the_eta_when_the_count_is_unknown():
    stream = io.StringIO()
    progress = Progress("reading", stream=stream, interval=0.0)
    time.sleep(0.02)
    progress.update(10, fraction=0.5)
    assert "10 samples" in stream.getvalue() and "50.0%" in stream.getvalue()
    assert "ETA 0:00:00" in stream.getvalue()


def test_short_work_with_a_delay_prints_nothing():
    stream = io.StringIO()
    progress = Progress("encoding", stream=stream, delay=5.0)
    progress.update(3)
    progress.close()
    assert stream.getvalue() == ""
