"""TFDS -> class-disjoint record datasets (zero-shot DML), on tfds.testing.mock_data; and configs/dml.py."""

import copy
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

from wpce_jax import config_validation
from wpce_jax.cli import load_config_file
from wpce_jax.data import records, tfds_to_records
from wpce_jax.data.eval_sources import records_source
from wpce_jax.models.model_config import validate_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_EXAMPLES = 6  # per split; mock_data draws the labels at random over the whole label range
# JPEG q95 re-encoding, mean absolute error per channel value (0..255): ~1 on photo-like images; a wrong
# channel order, crop or resize gives > 20. mock_data's images are uniform noise, JPEG's worst case (~3.1 at q95),
# so the test smooths them (same shapes and labels) before conversion: see _Smoothed.
REENCODE_MAE = 3.0
CASES = [("caltech_birds2011", "label", 200, 100), ("cars196", "label", 196, 98),
         ("stanford_online_products", "class_id", 22634, 11318)]


def _smooth(pixels: np.ndarray) -> np.ndarray:
    """A photo-like image of the same shape: the noise box-blurred 5x5 plus a gradient."""
    a = np.asarray(pixels, np.float64)
    pad = np.pad(a, ((2, 2), (2, 2), (0, 0)), mode="edge")
    blur = sum(pad[i:i + a.shape[0], j:j + a.shape[1]] for i in range(5) for j in range(5)) / 25
    grad = np.linspace(0, 60, a.shape[1])[None, :, None]
    return np.clip(blur * 0.7 + grad, 0, 255).astype(np.uint8)


class _Smoothed:
    """A data source whose examples carry smoothed images (everything else as mock_data made it)."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        return dict(self.source[i], image=_smooth(self.source[i]["image"]))


def _read_all(data_dir):
    manifest = records.read_manifest(data_dir)
    out = []
    for p in records.shard_paths(data_dir, manifest):
        out += [records.decode_record(b) for b in records.read_records(p)]
    return manifest, out


@pytest.mark.parametrize("name,label_feature,num_classes,cut", CASES)
def test_convert_mock(tmp_path, monkeypatch, name, label_feature, num_classes, cut):
    open_sources = tfds_to_records.open_sources

    def smoothed_sources(*args, **kwargs):
        builder, sources = open_sources(*args, **kwargs)
        return builder, {s: _Smoothed(v) for s, v in sources.items()}

    monkeypatch.setattr(tfds_to_records, "open_sources", smoothed_sources)
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE):
        _, sources = tfds_to_records.open_sources(name, str(tmp_path / "tfds"))
        source = [(s, i, sources[s][i]) for s in sorted(sources) for i in range(len(sources[s]))]
        tfds_to_records.convert(name, str(tmp_path / "tfds"), str(tmp_path / "out"), num_shards=2, progress=False)
        # Deterministic: a second run writes the same bytes.
        tfds_to_records.convert(name, str(tmp_path / "tfds"), str(tmp_path / "out2"), num_shards=2, progress=False)
    assert len(source) == 2 * NUM_EXAMPLES
    by_key = {f"{s}/{i}": ex for s, i, ex in source}
    seen = {}
    for half, lo, hi in (("train", 0, cut), ("test", cut, num_classes)):
        out_dir = str(tmp_path / "out" / half)
        manifest, recs = _read_all(out_dir)
        expected = [f"{s}/{i}" for s, i, ex in source if lo <= int(ex[label_feature]) < hi]
        assert manifest["num_examples"] == len(recs) == len(expected)
        assert [r["key"] for r in recs] == expected  # source order
        classes = json.loads((tmp_path / "out" / half / "classes.json").read_text())
        assert len(classes["class_names"]) == hi - lo
        assert classes["templates"] == ["a photo of a {}."]
        for r in recs:
            ex = by_key[r["key"]]
            k = int(ex[label_feature])
            assert r["label"] == k - lo and 0 <= r["label"] < hi - lo
            assert r["source"] == name
            name_k = classes["class_names"][r["label"]]
            assert r["caption"] in (f"a photo of a {name_k}", f"an image of class {k}")
            pixels = np.asarray(Image.open(io.BytesIO(r["image"])).convert("RGB"), np.float64)
            src = np.asarray(ex["image"], np.float64)
            assert pixels.shape == src.shape and (r["height"], r["width"]) == src.shape[:2]
            assert np.abs(pixels - src).mean() < REENCODE_MAE
            seen.setdefault(half, set()).add(k)
        for a, b in zip(sorted(os.listdir(out_dir)), sorted(os.listdir(tmp_path / "out2" / half))):
            if a != "manifest.json":
                assert (tmp_path / "out" / half / a).read_bytes() == (tmp_path / "out2" / half / b).read_bytes()
        # The evaluator's reader takes it: labels and class names line up.
        data = records_source(out_dir)
        assert len(data.class_names) == hi - lo and len(data.source) == len(recs)
    assert not seen.get("train", set()) & seen.get("test", set())
    if name == "cars196":  # named classes: captions use the label names, in re-indexed order
        names = tfds.builder(name).info.features["label"].names
        test_names = json.loads((tmp_path / "out" / "test" / "classes.json").read_text())["class_names"]
        assert test_names == [" ".join(n.replace("_", " ").split()) for n in names[cut:]]
    if name == "stanford_online_products":  # class_id names are numbers: generic captions
        _, recs = _read_all(str(tmp_path / "out" / "test"))
        assert all(r["caption"].startswith("an image of class ") for r in recs)


def test_missing_dataset_names_build_command(tmp_path):
    with pytest.raises(tfds_to_records.MissingDatasetError, match="tfds build cars196 .*--file_format=array_record"):
        tfds_to_records.open_sources("cars196", str(tmp_path))
    assert tfds_to_records.main(["--name", "cars196", "--data_dir", str(tmp_path), "--output",
                                 str(tmp_path / "out")]) == 1


@pytest.mark.parametrize("arg", ["cub", "cars", "sop", "cub,clip", "cars,wpce,margin_contrastive",
                                 "sop,clip,triplet", "cub,margin_contrastive"])
def test_dml_configs_valid(arg):
    c = load_config_file(os.path.join(ROOT, "configs", "dml.py"), arg)
    assert c.mode == "labelled" and c.model.image.variant == "S/16" and c.batch_size == 128
    assert c.data.kind == "arrayrecord" and c.eval.image_retrieval_by == "distance"
    assert c.data.train_dir is None and c.eval.image_retrieval is None  # required placeholders
    filled = copy.deepcopy(c)
    filled.data.train_dir = "/data/cub/train"
    filled.data.tokenizer_path = "/data/cub/spm.model"
    filled.eval.image_retrieval = "cub=arrayrecord:/data/cub/test"
    config_validation.validate_config(filled)
    filled.model.text.vocab_size, filled.model.text.eot_id = 1000, 3  # filled in from the tokenizer at start-up
    validate_model_config(filled)
    assert c.metric_loss == ("margin_contrastive" if "margin_contrastive" in arg else "triplet")
    assert c.model.similarity == ("clip" if "clip" in arg else "wpce")


def test_dml_config_rejects_bad_arg():
    for bad in ("", "mnist", "cub,cosine", "cub,wpce,triplet,extra"):
        with pytest.raises(ValueError, match="configs/dml.py"):
            load_config_file(os.path.join(ROOT, "configs", "dml.py"), bad)
