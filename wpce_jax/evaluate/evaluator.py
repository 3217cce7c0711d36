"""The evaluations a config names (eval.zeroshot, eval.linear_probe, eval.retrieval, eval.image_retrieval), run
on a set of parameters.

Used by the trainer on its schedule and by `python -m wpce_jax.evaluate` on a checkpoint. Dataset names are checked
when the evaluator is made; the data itself is resolved at the first evaluation (registry.py), and a set that is
not on disk, is empty, or is not the same on every process is skipped with one warning line, so a long run is never
stopped by a missing evaluation set. Images of a dataset split are encoded once per evaluation and shared by the
zero-shot, linear-probe and image-retrieval evaluations. They are memory-mapped files (encode.FeatureFiles),
temporary, or with a local cache directory the cache itself (read back memory-mapped), so a second evaluation of
the same checkpoint does not encode again. During training the linear probes run
only when eval.linear_probe_in_training is set (a probe of a large set, e.g. ImageNet's 1.28M training images, is
work for `python -m wpce_jax.evaluate`).

The kinds are the entries of `KINDS` (name -> how its datasets resolve, how it runs, its metric prefix); the
trainer and `python -m wpce_jax.evaluate` both iterate that table, in its order. During training each kind runs
every `eval.<kind>_every_steps` steps (e.g. eval.zeroshot_every_steps; unset: `eval_every_steps`) and at the last
step; the evaluate command runs every kind.
"""
from __future__ import annotations

import json
import time
from functools import partial
from typing import Callable, NamedTuple, Optional

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from wpce_jax.config_fields import get as _get
from wpce_jax.data.eval_sources import MissingDataError
from wpce_jax.errors import ConfigError
from wpce_jax.evaluate import image_retrieval, linear_probe, registry, retrieval, zeroshot
from wpce_jax.evaluate.encode import Encoders, ImageFeatures
from wpce_jax.logit_scale import value as logit_scale_value
from wpce_jax.similarity import eval_rff_draws

PROBE_FEATURES = ("pooled", "compared")
_CACHE_VERSION = 2  # bump when the cached arrays change meaning (2: a directory of .npy files)
_ARRAYS = ("compared", "pooled", "labels")


class Kind(NamedTuple):
    """One evaluation kind: config field eval.<name> names its datasets (registry.parse_specs)."""
    resolve: Callable  # (spec, split, config.eval, digits data, digit-pairs data) -> its set (MissingDataError)
    size: Callable     # its set -> the number of images it encodes
    splits: tuple      # the splits an evaluation reads, each resolved (and skipped when missing) in this order
    run: str           # the Evaluator method: (spec, {split: set}, images, args) -> {metric: value}, or None
    prefix: str        # every metric it reports is named "<prefix>/<dataset>/..."


def _classes(spec, split, eval_config, digits_data, pairs_data):
    return registry.resolve_classification(spec, split, eval_config, digits_data)


def _captions(spec, split, eval_config, digits_data, pairs_data):
    return registry.resolve_captions(spec, eval_config, digits_data, pairs_data)


_CLASSES_SIZE = lambda data: len(data[0].source)  # noqa: E731 - (Classification, balanced)
KINDS = {
    "zeroshot": Kind(_classes, _CLASSES_SIZE, ("test",), "_zeroshot", "zeroshot"),
    "linear_probe": Kind(_classes, _CLASSES_SIZE, ("test", "train"), "_linear_probe", "linear_probe"),
    "retrieval": Kind(_captions, lambda data: len(data.images), ("test",), "_retrieval", "retrieval"),
    "image_retrieval": Kind(_classes, _CLASSES_SIZE, ("test",), "_image_retrieval", "image_retrieval"),
}
TASKS = tuple(KINDS)  # the eval.<task> fields naming datasets


def every_steps(config: ConfigDict, kind: str) -> int:
    """How often the trainer runs `kind`: eval.<kind>_every_steps, else eval_every_steps (older configs lack the
    per-kind fields)."""
    return _get(config, f"eval.{kind}_every_steps", None) or config.eval_every_steps


def validate_eval_config(config: ConfigDict) -> None:
    """The eval fields, before any compute: ValueError naming the field (dataset names included; whether their
    data is on disk is found out when it is read)."""
    e = config.eval
    for task in TASKS:
        registry.parse_specs(e.get(task) or "", task)
        every = e.get(f"{task}_every_steps")
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ConfigError(f"config field eval.{task}_every_steps must be an int >= 1 (or unset: "
                              f"eval_every_steps), got {every!r}")
    if isinstance(e.rff_draws, bool) or not isinstance(e.rff_draws, int) or e.rff_draws < 1:
        raise ConfigError(f"config field eval.rff_draws must be an int >= 1, got {e.rff_draws!r}")
    if e.get("image_retrieval_by", "similarity") not in image_retrieval.BY:
        raise ConfigError(f"config field eval.image_retrieval_by must be one of {image_retrieval.BY}, "
                          f"got {e.image_retrieval_by!r}")
    if e.probe_features not in PROBE_FEATURES:
        raise ConfigError(f"config field eval.probe_features must be one of {PROBE_FEATURES}, "
                          f"got {e.probe_features!r}")


def _same_everywhere(found: bool, size: int) -> bool:
    """Whether every process found the data with the same size (else some would wait in collectives forever)."""
    if jax.process_count() == 1:
        return found
    seen = multihost_utils.process_allgather(np.asarray([int(found), size]))
    return bool(np.all(seen[:, 0] == 1) and np.all(seen[:, 1] == size))


class _Scaled:
    """rows[i:j] * scale, computed a block at a time as linear_probe.put_rows reads them: no scaled host copy of
    memory-mapped features."""

    def __init__(self, rows: np.ndarray, scale: float):
        self.rows, self.scale, self.shape, self.dtype = rows, scale, rows.shape, rows.dtype

    def __getitem__(self, index) -> np.ndarray:
        return np.asarray(self.rows[index]) * np.asarray(self.scale, self.dtype)


class Evaluator:
    """evaluator(params, root_key_data, eval_rff) -> {metric name: value}, identical on every process.

    `config` is validated by the entry point (train_and_evaluate, python -m wpce_jax.evaluate: validate_eval_config);
    relevance: the graded retrieval NDCG's rule, the run's data.relevance (config_validation.ModeSettings.relevance).

    training: the trainer's evaluator (linear probes only with eval.linear_probe_in_training); verbose: also log
    each stage of the linear probe's C search."""

    def __init__(self, model, config: ConfigDict, mesh, tokenizer, relevance: str, *, digits_data=None,
                 cache_dir: Optional[str] = None, log: Callable[[str], None] = partial(print, flush=True),
                 training: bool = True, verbose: bool = False):
        self.config, self.tokenizer, self.digits_data, self.cache_dir = config, tokenizer, digits_data, cache_dir
        self.encoders = Encoders(model, config, mesh)
        self.is_main = jax.process_index() == 0
        self._log, self.verbose = log, verbose
        self._resolved: dict = {}  # (task, spec, split) -> resolved set, or None once skipped
        self.pairs_data = None  # the built-in digit pairs, prepared when an evaluation names them
        self.relevance = relevance
        self.tasks = {task: registry.parse_specs(config.eval.get(task) or "", task) for task in TASKS}
        if training and not config.eval.get("linear_probe_in_training", True):
            self.tasks["linear_probe"] = []

    def __bool__(self) -> bool:
        return any(self.tasks.values())

    def log(self, line: str) -> None:
        if self.is_main:
            self._log(line)

    def _resolve(self, task: str, spec: registry.Spec, split: str):
        """The resolved set, or None (skipped, with one warning line the first time)."""
        key = (task, spec, split)
        if key not in self._resolved:
            if spec.kind == "digits" and self.digits_data is None:
                from wpce_jax.data.run_data import prepare_digits

                self.digits_data = prepare_digits(self.config)
            if spec.kind == "digit_pairs" and self.pairs_data is None:
                from wpce_jax.data.run_data import prepare_digit_pairs

                self.pairs_data = prepare_digit_pairs(self.config)
            data, problem, kind = None, "", KINDS[task]
            try:
                data = kind.resolve(spec, split, self.config.eval, self.digits_data, self.pairs_data)
            except MissingDataError as e:
                problem = str(e)
            size = kind.size(data) if data is not None else 0
            if data is not None and size == 0:
                data, problem = None, "it holds no images"
            if not _same_everywhere(data is not None, size) and data is not None:
                data, problem = None, "the processes do not all see the same data (each needs it at the same path)"
            if data is None:
                self.log(f"warning: skipping {task} on {spec.name} ({split}): {problem}")
            self._resolved[key] = data
        return self._resolved[key]

    def due(self, step: int, final: bool) -> tuple[str, ...]:
        """The kinds with datasets that the trainer runs at `step` (every kind at the last step)."""
        return tuple(kind for kind, specs in self.tasks.items()
                     if specs and (final or step % every_steps(self.config, kind) == 0))

    def __call__(self, params, root_key_data, eval_rff, kinds: Optional[tuple] = None) -> dict[str, float]:
        """Every kind of `KINDS` in order (only `kinds` when given) on each of its datasets."""
        rffs = eval_rff_draws(jax.random.wrap_key_data(root_key_data), eval_rff, self.config,
                              self.config.eval.rff_draws)
        args = dict(encoders=self.encoders, params=params, rffs=rffs, tokenizer=self.tokenizer)
        features: dict = {}  # (spec, split) -> ImageFeatures, shared by zero-shot, probe and image retrieval

        def images(spec, split, source) -> Optional[ImageFeatures]:
            """The split's features, or None (with a warning) when none of its images decodes."""
            if (spec, split) not in features:
                feats = self._cached(spec, split, source, lambda directory: self.encoders.images(
                    params, rffs, source, f"{spec.name} ({split})", directory))
                if feats.corrupt:
                    self.log(f"warning: {spec.name} ({split}): {feats.corrupt} images do not decode and are "
                             f"left out")
                if len(feats.labels) == 0:
                    feats = None
                    self.log(f"warning: skipping {spec.name} ({split}): no image decodes")
                features[(spec, split)] = feats
            return features[(spec, split)]

        results: dict[str, float] = {}
        for name, kind in KINDS.items():
            if kinds is not None and name not in kinds:
                continue
            for spec in self.tasks[name]:
                sets = {}
                for split in kind.splits:  # a missing split skips the rest
                    sets[split] = self._resolve(name, spec, split)
                    if not sets[split]:
                        break
                else:
                    started = time.perf_counter()
                    out = getattr(self, kind.run)(spec, sets, images, args)
                    if out is None:
                        continue
                    assert all(k.startswith(f"{kind.prefix}/") for k in out), (kind.prefix, list(out))
                    shown = "  ".join(f"{k} {v:.4g}" for k, v in out.items())
                    self.log(f"{shown}  ({time.perf_counter() - started:.1f}s)")
                    results.update(out)
        return results

    # Each kind's run: (spec, {split: resolved set}, images(spec, split, source), args) -> metrics, or None when
    # its images are missing (a warning already said so).

    def _zeroshot(self, spec, sets, images, args):
        data = sets["test"][0]
        feats = images(spec, "test", data.source)
        return feats and zeroshot.evaluate(spec.name, data, feats, similarity=self.config.model.similarity, **args)

    def _linear_probe(self, spec, sets, images, args):
        (test, balanced), (train, _) = sets["test"], sets["train"]
        if train.class_names != test.class_names:
            self.log(f"warning: skipping linear_probe on {spec.name}: its train and test splits name different "
                     f"classes")
            return None
        test_feats = images(spec, "test", test.source)
        train_feats = test_feats and images(spec, "train", train.source)
        return train_feats and self._probe(spec.name, args["params"], train_feats, test_feats,
                                           len(test.class_names), balanced=balanced)

    def _retrieval(self, spec, sets, images, args):
        data = sets["test"]
        feats = images(spec, "captions", data.images)
        return feats and retrieval.evaluate(spec.name, data, feats, rule=self.relevance, **args)

    def _image_retrieval(self, spec, sets, images, args):
        data = sets["test"][0]
        feats = images(spec, "test", data.source)
        return feats and image_retrieval.evaluate(spec.name, data, images=feats, mesh=self.encoders.mesh,
                                                  by=self.config.eval.get("image_retrieval_by", "similarity"),
                                                  rule=self.relevance)

    def _probe(self, name: str, params, train: ImageFeatures, test: ImageFeatures, num_classes: int,
               balanced: bool) -> dict[str, float]:
        """linear_probe/<name>/{top1, mean_per_class_recall, C} from frozen features, per eval.probe_features:
        "pooled" (the weighted token mean) or "compared" (draw 0's compared vector x sqrt(logit scale))."""
        if self.config.eval.probe_features == "pooled":
            train_x, test_x = train.pooled, test.pooled
        else:
            scale = np.sqrt(float(logit_scale_value(params, self.config.model.similarity)))
            train_x, test_x = _Scaled(train.compared[:, 0], scale), _Scaled(test.compared[:, 0], scale)
        out = linear_probe.evaluate(train_x, train.labels, test_x, test.labels, num_classes, balanced=balanced,
                                    log=self.log if self.verbose else lambda line: None, mesh=self.encoders.mesh)
        return {f"{KINDS['linear_probe'].prefix}/{name}/{k}": out[k] for k in ("top1", "mean_per_class_recall", "C")}

    def _cached(self, spec, split: str, source, compute: Callable[[Optional[str]], ImageFeatures]
                ) -> ImageFeatures:
        """compute(directory), or its saved result under cache_dir/<name>-<split>/ ({compared, pooled,
        labels}.npy and stamp.json, written last) when that was made from the same data (spec, split, size) with
        the same image size and draw count, and every process can read it (they must all take the same branch:
        they meet in collectives when encoding). A local cache is where process 0's encoder writes its
        memory-mapped files, and is read back memory-mapped; a remote one (gs://) is copied to and from."""
        if self.cache_dir is None:
            return compute(None)
        path = epath.Path(self.cache_dir) / f"{spec.name}-{split}"
        local = "://" not in str(self.cache_dir)
        stamp = {"version": _CACHE_VERSION, "spec": list(spec), "split": split, "size": len(source),
                 "image_size": self.config.data.image_size, "rff_draws": self.config.eval.rff_draws}
        saved = self._load(path, stamp, local)
        if _same_everywhere(saved is not None, 0):
            self.log(f"features of {spec.name} ({split}): read from {path}")
            return saved
        if self.is_main:
            (path / "stamp.json").unlink(missing_ok=True)  # no stale stamp over half-written arrays
        features = compute(str(path) if local and self.is_main else None)
        if local:
            self.log(f"features of {spec.name} ({split}): kept in {path}")
        if self.is_main:
            path.mkdir(parents=True, exist_ok=True)
            for name in _ARRAYS if not local else ("labels",):
                with (path / f"{name}.npy").open("wb") as f:
                    np.save(f, getattr(features, name))
            (path / "stamp.json").write_text(json.dumps({**stamp, "rows": len(features.labels),
                                                         "corrupt": features.corrupt}))
        return features

    @staticmethod
    def _load(path, stamp: dict, local: bool) -> Optional[ImageFeatures]:
        """The features saved at `path` with this stamp, or None (absent, other data, or unreadable)."""
        try:
            saved = json.loads((path / "stamp.json").read_text())
            if {k: saved.get(k) for k in stamp} != json.loads(json.dumps(stamp)):
                return None
            arrays = {}
            for name in _ARRAYS:
                if local:
                    arrays[name] = np.load(str(path / f"{name}.npy"), mmap_mode="r")[:saved["rows"]]
                else:
                    with (path / f"{name}.npy").open("rb") as f:
                        arrays[name] = np.load(f)[:saved["rows"]]
            return ImageFeatures(arrays["compared"], arrays["pooled"], arrays["labels"], int(saved["corrupt"]))
        except (OSError, ValueError, KeyError):  # missing, truncated or foreign file: encode again
            return None
