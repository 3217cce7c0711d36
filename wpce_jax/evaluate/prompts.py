"""Zero-shot class names and prompt templates of the 13 reference datasets, shipped as prompts.json.

Sources (class names and templates copied as published, "{}" marks the class name):
    SLIP templates.json, labels.json (github.com/facebookresearch/SLIP, MIT licence): the primary source.
    CLIP data/prompts.md, notebooks/Prompt_Engineering_for_ImageNet.ipynb (github.com/openai/CLIP, MIT
    licence): the same names; SLIP keeps the 7 ImageNet templates CLIP's notebook selected from its 80.

prompts.json: {dataset: {"class_names": [...], "templates": [...], "aliases": {...}, "tfds": builder | null}}.
class_names are in the integer-label order of the TFDS builder (SLIP's lists were reordered where TFDS orders
differently: food101, caltech101, pets, sun397). "aliases" maps a TFDS label string to the class name used in
prompts wherever the two differ beyond case and "_" vs " " (ImageNet synset ids, SUN397 paths, ...). aircraft
has no TFDS builder: its names follow FGVC-Aircraft's variants.txt.
"""
import functools
import json
from importlib import resources
from typing import Optional

DATASETS = ("cifar10", "cifar100", "imagenet", "stl10", "food101", "cars", "eurosat", "caltech101", "pets",
            "flowers", "dtd", "aircraft", "sun397")


@functools.cache
def _table() -> dict:
    text = resources.files("wpce_jax.evaluate").joinpath("prompts.json").read_text(encoding="utf-8")
    return json.loads(text)


# The prompt of a dataset with no templates of its own (CLIP's generic one).
DEFAULT_TEMPLATES = ("a photo of a {}.",)


def _entry(dataset: str) -> dict:
    table = _table()
    if dataset not in table:
        raise ValueError(f"no zero-shot prompts for dataset {dataset!r}; known datasets: {', '.join(table)}")
    return table[dataset]


def class_names(dataset: str) -> list[str]:
    """The class names of `dataset`, indexed by integer label."""
    return list(_entry(dataset)["class_names"])


def templates(dataset: str) -> list[str]:
    """The prompt templates of `dataset`, each with one "{}" for the class name."""
    return list(_entry(dataset)["templates"])


def aliases(dataset: str) -> dict[str, str]:
    """TFDS label string -> class name, where they differ beyond case and "_" (empty if none do)."""
    return dict(_entry(dataset).get("aliases", {}))


def tfds_name(dataset: str) -> Optional[str]:
    """The TFDS builder whose label order class_names follow, or None (aircraft)."""
    return _entry(dataset)["tfds"]
