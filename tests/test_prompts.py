"""The shipped zero-shot class names and templates: counts, template form, and label order against TFDS."""
import collections
import json
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from wpce_jax.evaluate import prompts

EXPECTED_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000, "stl10": 10, "food101": 101, "cars": 196,
                    "eurosat": 10, "caltech101": 102, "pets": 37, "flowers": 102, "dtd": 47, "aircraft": 100,
                    "sun397": 397}
# CLIP's (and SLIP's) ImageNet names repeat two: 657 missile / 744 projectile, 836 sunglass / 837 sunglasses.
KNOWN_DUPLICATES = {"imagenet": {"missile", "sunglasses"}}
TFDS_BACKED = [d for d in prompts.DATASETS if d != "aircraft"]


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def test_datasets_are_the_json_keys():
    table = json.loads(resources.files("wpce_jax.evaluate").joinpath("prompts.json").read_text(encoding="utf-8"))
    assert tuple(table) == prompts.DATASETS
    assert set(EXPECTED_CLASSES) == set(prompts.DATASETS)


@pytest.mark.parametrize("dataset", prompts.DATASETS)
def test_class_names(dataset):
    names = prompts.class_names(dataset)
    assert len(names) == EXPECTED_CLASSES[dataset]
    assert all(isinstance(n, str) and n.strip() == n and n for n in names)
    repeated = {n for n, count in collections.Counter(names).items() if count > 1}
    assert repeated == KNOWN_DUPLICATES.get(dataset, set())


@pytest.mark.parametrize("dataset", prompts.DATASETS)
def test_templates(dataset):
    templates = prompts.templates(dataset)
    assert templates and len(set(templates)) == len(templates)
    for t in templates:
        assert t.count("{}") == 1 and t.count("{") == 1 and t.count("}") == 1, t
        assert t.format("X").count("X") == 1


@pytest.mark.parametrize("dataset", prompts.DATASETS)
def test_aliases_name_shipped_classes(dataset):
    names = set(prompts.class_names(dataset))
    assert set(prompts.aliases(dataset).values()) <= names


def test_spot_checks():
    """Orders verified against the sources when the file was built (see the reordered datasets)."""
    assert prompts.class_names("imagenet")[:2] == ["tench", "goldfish"]
    assert prompts.class_names("imagenet")[134] == "crane bird"
    assert prompts.class_names("imagenet")[517] == "construction crane"
    assert prompts.aliases("imagenet")["n01440764"] == "tench"
    assert prompts.class_names("pets")[:3] == ["Abyssinian", "american bulldog", "american pit bull terrier"]
    assert prompts.class_names("caltech101")[4] == "background"
    assert prompts.class_names("food101")[16:18] == ["cheesecake", "cheese plate"]
    assert prompts.class_names("eurosat")[2] == "brushland or shrubland"
    assert prompts.class_names("aircraft")[37:40] == ["BAE 146-200", "BAE 146-300", "BAE-125"]


def test_unknown_dataset():
    with pytest.raises(ValueError, match="known datasets: cifar10, cifar100"):
        prompts.class_names("mnist")
    assert prompts.tfds_name("aircraft") is None


def test_json_is_package_data():
    config = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "evaluate/*.json" in config["tool"]["setuptools"]["package-data"]["wpce_jax"]


def _tfds_label_names(dataset: str) -> list[str]:
    """The TFDS builder's label strings (`info.features["label"].names`): builder metadata only, no download.
    cifar10, cifar100 and stl10 get their names when the data is prepared: without a prepared copy they read "0",
    "1", ..."""
    import tensorflow_datasets as tfds

    return list(tfds.builder(prompts.tfds_name(dataset)).info.features["label"].names)


@pytest.mark.parametrize("dataset", TFDS_BACKED)
def test_order_matches_tfds(dataset):
    pytest.importorskip("tensorflow_datasets")
    try:
        tfds_names = _tfds_label_names(dataset)
    except Exception as e:  # a builder that needs TensorFlow (or data) just to read its info
        pytest.skip(f"tfds.builder({prompts.tfds_name(dataset)!r}) info unavailable here: {e!r}")
    names = prompts.class_names(dataset)
    assert len(tfds_names) == len(names)
    if tfds_names == [str(i) for i in range(len(names))]:
        return  # cifar10/cifar100/stl10: TFDS reads the names from the data files, count checked only
    aliases = prompts.aliases(dataset)
    assert set(aliases) <= set(tfds_names)
    mismatched = [(i, t, n) for i, (t, n) in enumerate(zip(tfds_names, names)) if _norm(aliases.get(t, t)) != _norm(n)]
    assert not mismatched
