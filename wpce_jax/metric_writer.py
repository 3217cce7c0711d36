"""Metrics to DIR/metrics.jsonl (one JSON object per write, with "step"), TensorBoard, and the console.

Only process 0 writes. On resume, lines for steps after the restored checkpoint are dropped first, so that the
file holds each step once, as an uninterrupted run would have written it.
"""
import json
import os
import time
from typing import Mapping

import numpy as np


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


class MetricWriter:
    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter  # imported lazily: only the writing process needs it
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drops records of steps > `step` (written by a run that died after its last checkpoint), and a last line
        cut short by a kill in mid-write. TensorBoard shows the rewritten steps twice; the later value is right."""
        if not self.enabled or not os.path.exists(self.path):
            return
        kept = []
        with open(self.path) as f:
            for line in f:
                try:
                    if json.loads(line)["step"] <= step:
                        kept.append(line.rstrip("\n") + "\n")
                except ValueError:  # a partial line from a killed write
                    continue
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(np.asarray(v)) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in record.items():
            if name != "step":
                self._tb.add_scalar(name, value, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class Progress:
    """A console line with steps/s, examples/s and ETA, measured over the steps since the last report."""

    def __init__(self, total_steps: int, start_step: int, batch_size: int, enabled: bool = True):
        self.total, self.batch_size, self.enabled = total_steps, batch_size, enabled
        self._last_step, self._last_time = start_step, time.perf_counter()

    def rates(self, step: int) -> tuple[float, float]:
        """(steps/s, examples/s) since the previous call; resets the window."""
        now = time.perf_counter()
        steps_per_s = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        return steps_per_s, steps_per_s * self.batch_size

    def report(self, step: int, steps_per_s: float, metrics: Mapping[str, float]):
        if not self.enabled:
            return
        eta = _format_eta((self.total - step) / steps_per_s) if steps_per_s > 0 else "?"
        shown = "  ".join(f"{k.split('/')[-1]} {float(v):.4g}" for k, v in metrics.items()
                          if k in ("train/loss", "train/logit_scale", "train/learning_rate"))
        print(f"step {step}/{self.total}  {shown}  {steps_per_s:.2f} steps/s  "
              f"{steps_per_s * self.batch_size:.0f} ex/s  ETA {eta}", flush=True)


def write_eval_json(workdir: str, step: int, results: Mapping[str, float], enabled: bool = True) -> str:
    """DIR/eval/step_<step>.json: one flat object, metric name -> number. New values join (and replace) those
    already in the file, so evaluating one more dataset keeps the others' numbers. Written whole, then renamed."""
    path = os.path.join(workdir, "eval", f"step_{int(step)}.json")
    if enabled:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        merged = {}
        if os.path.exists(path):
            with open(path) as f:
                merged = json.load(f)
        merged.update({k: float(v) for k, v in results.items()})
        with open(path + ".tmp", "w") as f:
            json.dump(dict(sorted(merged.items())), f, indent=1)
        os.replace(path + ".tmp", path)
    return path
