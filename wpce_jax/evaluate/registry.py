"""Which data an evaluation names: dataset specs, the built-in registry, and where each set is read from.

`eval.zeroshot`, `eval.linear_probe` and `eval.retrieval` are comma-separated specs, so that
`--config.eval.zeroshot=cifar10,mine=folder:/data/mine` works as an ml_collections flag. A spec is

    NAME                  a registry dataset (below), read from the config's data-directory fields
    NAME=tfds:BUILDER     a TFDS dataset prepared in eval.tfds_data_dir (array_record format)
    NAME=folder:ROOT      class folders: ROOT/{train,test}/<class>/*.jpg (or ROOT/<class>/*.jpg: test only)
    NAME=arrayrecord:DIR  converted sets: DIR/{train,test}/ (or DIR itself: test only), labels and captions
                          from the records, class names and templates from classes.json
    NAME=karpathy:JSON    retrieval: Karpathy's split json; images beside it (JSON's folder, or its images/ or
                          flickr30k-images/ subfolder), under each entry's filepath
    digits                the built-in digits (zero-shot, linear probe, retrieval by digit)
    digit_pairs           retrieval: the built-in digit pairs' held-out pairs (data/digit_pairs.py), binary
                          relevance by pair, graded by the pairs' label tuples

Registry (the reference release's 13 zero-shot / linear-probe sets, and retrieval):
    cifar10 cifar100 imagenet stl10 food101 cars eurosat caltech101 pets flowers dtd sun397  (TFDS)
    aircraft  (class folders in eval.aircraft_dir: {train,test}/<variant>/, FGVC-Aircraft has no TFDS builder)
    coco      (TFDS coco_captions, Karpathy's 5k test split; building it needs TensorFlow installed)
    flickr30k (eval.flickr30k_dir/dataset_flickr30k.json + the images; Karpathy's 1k test split)
Data that is not there makes `resolve_*` raise MissingDataError; the evaluator turns it into one warning line.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from etils import epath

from wpce_jax.data import eval_sources
from wpce_jax.data.eval_sources import CaptionSet, ClassificationSet, MissingDataError
from wpce_jax.errors import ConfigError, DataError

KINDS = ("tfds", "folder", "arrayrecord", "karpathy", "digits", "digit_pairs")
BUILT_IN = ("digits", "digit_pairs")  # names that are their own kind


class TFDSEntry(NamedTuple):
    builder: str
    test_split: str
    train_split: str
    mean_per_class: bool = False  # the paper reports mean per-class recall for this set


# Splits: the test split the reference evaluates; EuroSAT ships one split, of which TFDS users hold out 20%.
CLASSIFICATION = {
    "cifar10": TFDSEntry("cifar10", "test", "train"),
    "cifar100": TFDSEntry("cifar100", "test", "train"),
    "imagenet": TFDSEntry("imagenet2012", "validation", "train"),
    "stl10": TFDSEntry("stl10", "test", "train"),
    "food101": TFDSEntry("food101", "validation", "train"),
    "cars": TFDSEntry("cars196", "test", "train"),
    "eurosat": TFDSEntry("eurosat/rgb", "train[80%:]", "train[:80%]"),
    "caltech101": TFDSEntry("caltech101", "test", "train", True),
    "pets": TFDSEntry("oxford_iiit_pet", "test", "train", True),
    "flowers": TFDSEntry("oxford_flowers102", "test", "train+validation", True),
    "dtd": TFDSEntry("dtd", "test", "train+validation"),
    "sun397": TFDSEntry("sun397", "test", "train"),
}
FOLDER_DATASETS = {"aircraft": "aircraft_dir"}  # name -> config field eval.<field> holding its root
MEAN_PER_CLASS = {name for name, e in CLASSIFICATION.items() if e.mean_per_class} | {"aircraft"}
RETRIEVAL_TFDS = {"coco": ("coco_captions", "test")}
RETRIEVAL_KARPATHY = {"flickr30k": ("flickr30k_dir", "dataset_flickr30k.json")}


class Spec(NamedTuple):
    name: str
    kind: str       # one of KINDS, or "registry"
    location: str   # builder name, path, or "" for registry/digits


CLASSIFICATION_KINDS = ("registry", "digits", "tfds", "folder", "arrayrecord")
RETRIEVAL_KINDS = ("registry", "digits", "digit_pairs", "tfds", "arrayrecord", "karpathy")


def parse_specs(text: str, task: str = "zeroshot") -> list[Spec]:
    """"a,b=folder:/x" -> [Spec("a", "registry", ""), Spec("b", "folder", "/x")] for `task` ("retrieval" or a
    classification task); ValueError naming a bad spec, an unknown registry name, or a kind the task cannot use.
    Checks names only: whether the data is on disk is found out when it is read."""
    specs = []
    for item in (s.strip() for s in (text or "").split(",")):
        if not item:
            continue
        if "=" not in item:
            kind = item if item in BUILT_IN else "registry"
            specs.append(Spec(item, kind, ""))
            continue
        name, _, rest = item.partition("=")
        kind, _, location = rest.partition(":")
        if kind not in KINDS or not name or (kind not in BUILT_IN and not location):
            raise ConfigError(f"evaluation dataset spec {item!r}: expected NAME, or NAME=KIND:LOCATION with KIND "
                              f"in {KINDS}")
        specs.append(Spec(name.strip(), kind, location.strip()))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"evaluation dataset names must be unique, got {names}")
    retrieval = task == "retrieval"
    known = sorted(RETRIEVAL_TFDS) + sorted(RETRIEVAL_KARPATHY) if retrieval else \
        sorted(CLASSIFICATION) + sorted(FOLDER_DATASETS)
    for spec in specs:
        if spec.kind == "registry" and spec.name not in known:
            raise ConfigError(f"eval.{task}: unknown dataset {spec.name!r}; registry names: {known}, or "
                              f"NAME=KIND:LOCATION")
        if spec.kind not in (RETRIEVAL_KINDS if retrieval else CLASSIFICATION_KINDS):
            raise ConfigError(f"eval.{task}: {spec.name}={spec.kind}:... is not a "
                              f"{'caption' if retrieval else 'labelled'} set")
    return specs


def _field(eval_config, field: str, name: str) -> str:
    value = eval_config.get(field)
    if not value:
        raise MissingDataError(f"{name}: config field eval.{field} is not set")
    return value


def _split_dir(root: str, split: str) -> str:
    """ROOT/train, or for the test side ROOT/test, ROOT/val(idation), else ROOT itself."""
    base = epath.Path(root)
    candidates = ("train",) if split == "train" else ("test", "val", "validation")
    for c in candidates:
        if (base / c).is_dir():
            return str(base / c)
    if split == "train":
        raise MissingDataError(f"{root}: no train/ folder (a linear probe needs a train split)")
    if (base / "train").is_dir():
        raise MissingDataError(f"{root}: a train/ folder but no test/ (or val/) beside it")
    return root


def resolve_classification(spec: Spec, split: str, eval_config, digits_data=None) -> tuple[ClassificationSet, bool]:
    """(the labelled set, whether its headline metric is mean per-class recall) of `split` ("train"/"test")."""
    from wpce_jax.evaluate import prompts

    if spec.kind == "digits":
        if digits_data is None:
            raise MissingDataError("digits: the built-in digits are prepared by a digits run only")
        directory = digits_data.train_dir if split == "train" else digits_data.test_dir
        data = ClassificationSet(eval_sources.Records(directory), digits_data.class_names,
                                 digits_data.zeroshot_templates)
        return data, False
    if spec.kind == "registry":
        if spec.name in CLASSIFICATION:
            entry = CLASSIFICATION[spec.name]
            data = eval_sources.tfds_source(entry.builder, entry.test_split if split == "test" else entry.train_split,
                                            _field(eval_config, "tfds_data_dir", spec.name))
        elif spec.name in FOLDER_DATASETS:
            root = _field(eval_config, FOLDER_DATASETS[spec.name], spec.name)
            data = eval_sources.folder_source(_split_dir(root, split), prompts.class_names(spec.name))
        else:
            raise ValueError(f"unknown evaluation dataset {spec.name!r}; registry names: "
                             f"{sorted(CLASSIFICATION) + sorted(FOLDER_DATASETS)}, or NAME=KIND:LOCATION")
        names = prompts.class_names(spec.name)
        if len(names) != len(data.class_names):
            raise DataError(f"{spec.name}: the data has {len(data.class_names)} classes, the shipped class names "
                            f"{len(names)}")
        templates = data.templates or prompts.templates(spec.name)
        return ClassificationSet(data.source, names, templates), spec.name in MEAN_PER_CLASS
    if spec.kind == "tfds":
        entry = next((e for e in CLASSIFICATION.values() if e.builder == spec.location), None)
        splits = (entry.test_split, entry.train_split) if entry else ("test", "train")
        data = eval_sources.tfds_source(spec.location, splits[0] if split == "test" else splits[1],
                                        _field(eval_config, "tfds_data_dir", spec.name))
    elif spec.kind == "folder":
        data = eval_sources.folder_source(_split_dir(spec.location, split))
    elif spec.kind == "arrayrecord":
        data = eval_sources.records_source(_split_dir(spec.location, split))
    else:
        raise ValueError(f"{spec.name}: a {spec.kind!r} dataset is not a classification set")
    # A set of the user's own without templates (class folders, a TFDS builder, classes.json without "templates"):
    # CLIP's generic prompt.
    return data._replace(templates=data.templates or list(prompts.DEFAULT_TEMPLATES)), False


def _captions_grouped_by_label(test_dir: str, group_tuples=None) -> CaptionSet:
    """A built-in set's test records as a caption set whose retrieval groups are the records' labels."""
    records = eval_sources.Records(test_dir)
    headers = records.headers()
    return CaptionSet(records, [h["caption"] for h in headers], np.asarray([h["label"] for h in headers], np.int64),
                      group_tuples)


def resolve_captions(spec: Spec, eval_config, digits_data=None, pairs_data=None) -> CaptionSet:
    """The image-caption set of a retrieval spec (test split); pairs_data: data.digit_pairs.DigitPairsData."""
    if spec.kind == "digit_pairs":
        from wpce_jax.data.digit_pairs import PAIRS

        if pairs_data is None:
            raise MissingDataError("digit_pairs: the built-in digit pairs are not prepared")
        # One caption per image; binary relevance by pair (the label), graded by the pairs' (left, right) tuples.
        return _captions_grouped_by_label(pairs_data.test_dir, np.asarray(PAIRS, np.int32))
    if spec.kind == "digits":
        if digits_data is None:
            raise MissingDataError("digits: the built-in digits are prepared by a digits run only")
        # Relevance by digit: every caption of the same digit is a right answer, so groups are the labels.
        return _captions_grouped_by_label(digits_data.test_dir)
    if spec.kind == "registry":
        if spec.name in RETRIEVAL_TFDS:
            builder, split = RETRIEVAL_TFDS[spec.name]
            return eval_sources.tfds_captions(builder, split, _field(eval_config, "tfds_data_dir", spec.name))
        if spec.name in RETRIEVAL_KARPATHY:
            field, filename = RETRIEVAL_KARPATHY[spec.name]
            return eval_sources.karpathy_captions(str(epath.Path(_field(eval_config, field, spec.name)) / filename))
        raise ValueError(f"unknown retrieval dataset {spec.name!r}; registry names: "
                         f"{sorted(RETRIEVAL_TFDS) + sorted(RETRIEVAL_KARPATHY)}, or NAME=KIND:LOCATION")
    if spec.kind == "karpathy":
        return eval_sources.karpathy_captions(spec.location)
    if spec.kind == "tfds":
        return eval_sources.tfds_captions(spec.location, "test", _field(eval_config, "tfds_data_dir", spec.name))
    if spec.kind == "arrayrecord":
        return eval_sources.records_captions(_split_dir(spec.location, "test"))
    raise ValueError(f"{spec.name}: a {spec.kind!r} dataset is not an image-caption set")
