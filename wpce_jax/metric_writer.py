"""Metrics to DIR/metrics.jsonl (one JSON object per write, with "step") and TensorBoard; DIR local or gs://.

Only process 0 writes. On resume, lines for steps after the restored checkpoint are dropped first, so that the
file holds each step once, as an uninterrupted run would have written it; a run that starts from step 0 where a
metrics.jsonl exists keeps that file beside it, renamed metrics.<UTC time>.jsonl. Object stores cannot append: on gs://
the (small) file is rewritten whole at each write, and TensorBoard's event file is written locally and copied.
"""
import json
import os
import shutil
import tempfile
import time
from typing import Mapping

import numpy as np
from etils import epath

from wpce_jax.paths import is_remote, write_text


class MetricWriter:
    def __init__(self, workdir, enabled: bool = True):
        self.enabled = enabled
        self.path = epath.Path(workdir) / "metrics.jsonl"
        self._remote = is_remote(workdir)
        self._lines: list[str] = []  # the file's lines, kept for rewriting it on object stores
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter  # imported lazily: only the writing process needs it
            self._tb_dir = epath.Path(workdir) / "tensorboard"
            self._tb_local = tempfile.mkdtemp(prefix="wpce_tb_") if self._remote else os.fspath(self._tb_dir)
            self._tb = SummaryWriter(self._tb_local)

    def truncate_after(self, step: int) -> None:
        """Drops records of steps > `step` (written by a run that died after its last checkpoint), and a last line
        cut short by a kill in mid-write. TensorBoard shows the rewritten steps twice; the later value is right."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line + "\n")
            except ValueError:  # a partial line from a killed write
                continue
        self._lines = kept
        self._rewrite()

    def set_aside(self) -> "epath.Path | None":
        """For a run starting from step 0: renames an existing, non-empty metrics.jsonl (a run killed before its first
        checkpoint, or one whose checkpoints were all moved aside) to metrics.<UTC time>.jsonl beside it, rather than
        dropping its lines. Returns the new path, or None when there was nothing to keep."""
        if not self.enabled or not self.path.exists() or not self.path.read_text().strip():
            return None
        target = self.path.with_name(f"metrics.{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.jsonl")
        self.path.rename(target)
        return target

    def _rewrite(self) -> None:
        write_text(self.path, "".join(self._lines))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(np.asarray(v)) for k, v in metrics.items()}}
        line = json.dumps(record) + "\n"
        if self._remote:
            self._lines.append(line)
            self._rewrite()
        else:
            with self.path.open("a") as f:
                f.write(line)
        for name, value in record.items():
            if name != "step":
                self._tb.add_scalar(name, value, step)
        self._tb.flush()
        if self._remote:
            self._upload_tensorboard()

    def _upload_tensorboard(self) -> None:
        self._tb_dir.mkdir(parents=True, exist_ok=True)
        for name in os.listdir(self._tb_local):
            epath.Path(self._tb_local, name).copy(self._tb_dir / name, overwrite=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            if self._remote:
                self._upload_tensorboard()
                shutil.rmtree(self._tb_local, ignore_errors=True)


def write_eval_json(workdir, step: int, results: Mapping[str, float], enabled: bool = True) -> epath.Path:
    """DIR/eval/step_<step>.json: one flat object, metric name -> number. New values join (and replace) those
    already in the file, so evaluating one more dataset keeps the others' numbers. Written whole, then renamed."""
    path = epath.Path(workdir) / "eval" / f"step_{int(step)}.json"
    if enabled:
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = json.loads(path.read_text()) if path.exists() else {}
        merged.update({k: float(v) for k, v in results.items()})
        write_text(path, json.dumps(dict(sorted(merged.items())), indent=1))
    return path
