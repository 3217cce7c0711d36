"""metrics.jsonl after a kill: later steps dropped on resume, a line cut mid-write ignored."""
import json

from wpce_jax.metric_writer import MetricWriter


def test_truncate_after_drops_later_steps_and_partial_lines(tmp_path):
    writer = MetricWriter(str(tmp_path))
    for step in range(1, 6):
        writer.write(step, {"train/loss": 1.0 / step})
    writer.write(4, {"zeroshot/digits/top1": 0.5})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "train/lo')  # SIGKILL in mid-write
    writer.truncate_after(3)
    writer.write(4, {"train/loss": 0.25})
    writer.close()
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [(r["step"], r["train/loss"]) for r in records] == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.25)]


def test_truncate_to_zero_when_killed_before_the_first_checkpoint(tmp_path):
    writer = MetricWriter(str(tmp_path))
    writer.write(1, {"train/loss": 2.0})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "train/loss": 1.5}')  # complete JSON, newline never written
    writer.truncate_after(0)
    writer.write(1, {"train/loss": 2.0})
    writer.close()
    assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == [1]


def test_disabled_writer_writes_nothing(tmp_path):
    writer = MetricWriter(str(tmp_path), enabled=False)
    writer.write(1, {"train/loss": 1.0})
    writer.truncate_after(0)
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "tensorboard").exists()


def test_set_aside_keeps_the_old_file_beside_the_new_one(tmp_path):
    writer = MetricWriter(str(tmp_path))
    assert writer.set_aside() is None  # nothing to keep
    for step in (1, 2):
        writer.write(step, {"train/loss": 1.0 / step})
    kept = writer.set_aside()
    assert kept.parent == tmp_path and kept.name.startswith("metrics.") and kept.name.endswith(".jsonl")
    assert len(kept.name) == len("metrics.20261205-041500.jsonl")
    assert [json.loads(line)["step"] for line in open(kept)] == [1, 2]
    writer.write(1, {"train/loss": 3.0})
    writer.close()
    assert [json.loads(line)["train/loss"] for line in open(tmp_path / "metrics.jsonl")] == [3.0]
