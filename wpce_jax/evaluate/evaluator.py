"""The evaluations a config names (eval.zeroshot, eval.linear_probe, eval.retrieval), run on a set of parameters.

Used by the trainer on its schedule and by `python -m wpce_jax.evaluate` on a checkpoint. Datasets are resolved
once (registry.py); one that is not on disk is skipped with one warning line, so a long run is never stopped by a
missing evaluation set. Images of a (dataset, split) are encoded once per evaluation and shared by the zero-shot
and linear-probe evaluations; with a cache directory the features are also written to disk, so a second
evaluation of the same checkpoint does not encode again.
"""
from __future__ import annotations

import io
import time
from functools import partial
from typing import Callable, Optional

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from wpce_jax.data.eval_sources import MissingDataError
from wpce_jax.evaluate import linear_probe, registry, retrieval, zeroshot
from wpce_jax.evaluate.encode import Encoders, ImageFeatures
from wpce_jax.models.towers import logit_scale_value
from wpce_jax.similarity import eval_rff_draws

PROBE_FEATURES = ("pooled", "compared")


def validate_eval_config(config: ConfigDict) -> None:
    """The eval fields, before any compute: ValueError naming the field."""
    e = config.eval
    for field in ("zeroshot", "linear_probe", "retrieval"):
        registry.parse_specs(e.get(field) or "")
    if not isinstance(e.rff_draws, int) or e.rff_draws < 1:
        raise ValueError(f"config field eval.rff_draws must be an int >= 1, got {e.rff_draws!r}")
    if e.probe_features not in PROBE_FEATURES:
        raise ValueError(f"config field eval.probe_features must be one of {PROBE_FEATURES}, "
                         f"got {e.probe_features!r}")


class Evaluator:
    """evaluator(params, root_key_data, eval_rff) -> {metric name: value}, identical on every process."""

    def __init__(self, model, config: ConfigDict, mesh, tokenizer, *, digits_data=None,
                 cache_dir: Optional[str] = None, log: Callable[[str], None] = partial(print, flush=True), verbose: bool = False):
        """verbose: also log each stage of the linear probe's C search (the trainer keeps one line a dataset)."""
        validate_eval_config(config)
        self.config, self.tokenizer, self.digits_data, self.cache_dir = config, tokenizer, digits_data, cache_dir
        self.encoders = Encoders(model, config, mesh)
        self.is_main = jax.process_index() == 0
        self._log, self.verbose = log, verbose
        self._resolved: dict = {}  # (task, name, split) -> resolved set, or None once skipped
        self.tasks = {task: registry.parse_specs(config.eval.get(task) or "")
                      for task in ("zeroshot", "linear_probe", "retrieval")}

    def __bool__(self) -> bool:
        return any(self.tasks.values())

    def log(self, line: str) -> None:
        if self.is_main:
            self._log(line)

    def _resolve(self, task: str, spec: registry.Spec, split: str):
        key = (task, spec.name, split)
        if key not in self._resolved:
            if spec.kind == "digits" and self.digits_data is None:
                from wpce_jax.datasets import prepare_digits

                self.digits_data = prepare_digits(self.config)
            try:
                if task == "retrieval":
                    self._resolved[key] = registry.resolve_captions(spec, self.config.eval, self.digits_data)
                else:
                    self._resolved[key] = registry.resolve_classification(spec, split, self.config.eval,
                                                                          self.digits_data)
            except MissingDataError as e:
                self.log(f"warning: skipping {task} on {spec.name}: {e}")
                self._resolved[key] = None
        return self._resolved[key]

    def __call__(self, params, root_key_data, eval_rff) -> dict[str, float]:
        rffs = eval_rff_draws(jax.random.wrap_key_data(root_key_data), eval_rff, self.config,
                              self.config.eval.rff_draws)
        args = dict(encoders=self.encoders, params=params, rffs=rffs, tokenizer=self.tokenizer)
        features: dict = {}  # (name, split) -> ImageFeatures, shared by zero-shot and linear probe

        def images(name, split, source, desc):
            if (name, split) not in features:
                features[(name, split)] = self._cached(f"{name}-{split}", lambda: self.encoders.images(
                    params, rffs, source, desc))
                if features[(name, split)].corrupt:
                    self.log(f"warning: {name} ({split}): {features[(name, split)].corrupt} images do not decode "
                             f"and are left out")
            return features[(name, split)]

        results: dict[str, float] = {}
        for spec in self.tasks["zeroshot"]:
            resolved = self._resolve("zeroshot", spec, "test")
            if resolved:
                data, _ = resolved
                started = time.perf_counter()
                out = zeroshot.evaluate(spec.name, data, similarity=self.config.model.similarity,
                                        images=images(spec.name, "test", data.source, f"zero-shot {spec.name}"), **args)
                self._report(out, started)
                results.update(out)
        for spec in self.tasks["linear_probe"]:
            train, test = self._resolve("linear_probe", spec, "train"), self._resolve("linear_probe", spec, "test")
            if train and test:
                started = time.perf_counter()
                out = self._probe(spec.name, params,
                                  images(spec.name, "train", train[0].source, f"probe {spec.name} train"),
                                  images(spec.name, "test", test[0].source, f"probe {spec.name} test"),
                                  len(test[0].class_names), balanced=test[1])
                self._report(out, started)
                results.update(out)
        for spec in self.tasks["retrieval"]:
            data = self._resolve("retrieval", spec, "test")
            if data:
                started = time.perf_counter()
                out = retrieval.evaluate(spec.name, data, **args,
                                         images=images(spec.name, "captions", data.images, f"retrieval {spec.name}"))
                self._report(out, started)
                results.update(out)
        return results

    def _report(self, out: dict[str, float], started: float) -> None:
        shown = "  ".join(f"{k} {v:.4f}" for k, v in out.items())
        self.log(f"{shown}  ({time.perf_counter() - started:.1f}s)")

    def _probe(self, name: str, params, train: ImageFeatures, test: ImageFeatures, num_classes: int,
               balanced: bool) -> dict[str, float]:
        """linear_probe/<name>/top1 (and mean_per_class_recall) from frozen features, per eval.probe_features:
        "pooled" (the weighted token mean) or "compared" (draw 0's compared vector x sqrt(logit scale))."""
        if self.config.eval.probe_features == "pooled":
            train_x, test_x = train.pooled, test.pooled
        else:
            scale = np.sqrt(float(logit_scale_value(params, self.config.model.similarity)))
            train_x, test_x = train.compared[:, 0] * scale, test.compared[:, 0] * scale
        out = linear_probe.evaluate(train_x, train.labels, test_x, test.labels, num_classes, balanced=balanced,
                                    log=self.log if self.verbose else lambda line: None)
        return {f"linear_probe/{name}/top1": out["top1"],
                f"linear_probe/{name}/mean_per_class_recall": out["mean_per_class_recall"],
                f"linear_probe/{name}/C": out["C"]}

    def _cached(self, key: str, compute: Callable[[], ImageFeatures]) -> ImageFeatures:
        """compute(), or its saved result under cache_dir/<key>.npz when it was made with the same image size
        and draw count. Process 0 decides, so that every process takes the same branch (they meet in
        collectives when encoding)."""
        if self.cache_dir is None:
            return compute()
        path = epath.Path(self.cache_dir) / f"{key}.npz"
        stamp = np.asarray([self.config.data.image_size, self.config.eval.rff_draws])
        saved = None
        if self.is_main and path.exists():
            with np.load(io.BytesIO(path.read_bytes())) as f:
                if np.array_equal(f["stamp"], stamp):
                    saved = ImageFeatures(f["compared"], f["pooled"], f["labels"], int(f["corrupt"]))
        hit = bool(multihost_utils.broadcast_one_to_all(np.asarray(saved is not None))) \
            if jax.process_count() > 1 else saved is not None
        if hit:
            if saved is None:  # another process: read the file process 0 found
                with np.load(io.BytesIO(path.read_bytes())) as f:
                    saved = ImageFeatures(f["compared"], f["pooled"], f["labels"], int(f["corrupt"]))
            self.log(f"features of {key}: read from {path}")
            return saved
        features = compute()
        if self.is_main:
            buffer = io.BytesIO()
            np.savez(buffer, stamp=stamp, **features._asdict())
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".{path.name}.tmp"
            tmp.write_bytes(buffer.getvalue())
            tmp.rename(path)
        return features
