"""Evaluation data: every TFDS registry set through tfds.testing.mock_data, class folders, converted records,
Karpathy caption sets, dataset specs, and the missing-data messages."""
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from ml_collections import ConfigDict

from wpce_jax.data import eval_sources, image_ops, pipeline, records, testing
from wpce_jax.data.eval_sources import MissingDataError
from wpce_jax.evaluate import prompts, registry

SIZE = 16


def _eval_config(**kw):
    c = ConfigDict({"tfds_data_dir": "/data/tfds", "aircraft_dir": None, "flickr30k_dir": None})
    c.update(kw)
    return c


def _all_items(source, **kw):
    batches = list(pipeline.make_eval_dataset(source, pipeline.EvalDataOptions(image_size=SIZE, batch_size=4, **kw)))
    cat = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    return cat


@pytest.mark.parametrize("name", sorted(registry.CLASSIFICATION))
def test_every_tfds_registry_set_through_mock_data(name):
    entry = registry.CLASSIFICATION[name]
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        for split in ("test", "train"):
            data, mean_per_class = registry.resolve_classification(registry.Spec(name, "registry", ""), split,
                                                                   _eval_config())
            assert mean_per_class == entry.mean_per_class
            assert data.class_names == prompts.class_names(name) and data.templates == prompts.templates(name)
            assert len(data.source) > 0
            items = _all_items(data.source)
            n = len(data.source)
            assert items["mask"].sum() == n and not items["corrupt"].any()
            assert items["image"].shape[1:] == (SIZE, SIZE, 3) and items["image"].dtype == np.uint8
            labels = items["label"][items["mask"]]
            assert labels.min() >= 0 and labels.max() < len(data.class_names)
            raw = [int(data.source[i]["label"]) for i in range(n)]
            assert labels.tolist() == raw  # order kept


def test_tfds_pixels_are_the_eval_crop_of_the_decoded_image():
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        data = eval_sources.tfds_source("oxford_iiit_pet", "test", "/data/tfds")
        first = data.source[0]["image"]
        batch = next(iter(pipeline.make_eval_dataset(data.source, pipeline.EvalDataOptions(SIZE, 3))))
    np.testing.assert_array_equal(batch["image"][0], image_ops.eval_crop(first, SIZE))


def test_missing_tfds_dataset_names_the_prepare_command(tmp_path):
    with pytest.raises(MissingDataError, match=r"tfds build cifar10 --data_dir=.* --file_format=array_record"):
        eval_sources.tfds_source("cifar10", "test", str(tmp_path))
    with pytest.raises(MissingDataError, match="--manual_dir"):
        eval_sources.tfds_source("imagenet2012", "validation", str(tmp_path))
    with pytest.raises(MissingDataError, match="eval.tfds_data_dir is not set"):
        registry.resolve_classification(registry.Spec("cifar10", "registry", ""), "test",
                                        _eval_config(tfds_data_dir=None))


def _write_folders(root, folder_names, per_class=3, corrupt_in=None):
    for c, name in enumerate(folder_names):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            fmt = "PNG" if i % 2 else "JPEG"
            (root / name / f"{i}.{fmt.lower()}").write_bytes(testing.encode(testing.digit_image(10 * c + i, 20),
                                                                             fmt=fmt))
    if corrupt_in is not None:
        (root / folder_names[corrupt_in] / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")


def test_folder_source_sorted_classes_and_a_corrupt_image(tmp_path):
    _write_folders(tmp_path, ["b_cls", "a_cls", "c_cls"], corrupt_in=1)
    data = eval_sources.folder_source(str(tmp_path))
    assert data.class_names == ["a cls", "b cls", "c cls"] and data.templates is None
    # Zero-shot on the user's own folders needs prompts: CLIP's generic one when the folder gives none.
    resolved, mean_per_class = registry.resolve_classification(registry.Spec("mine", "folder", str(tmp_path)), "test",
                                                               _eval_config())
    assert resolved.templates == ["a photo of a {}."] and not mean_per_class
    items = _all_items(data.source)
    assert len(data.source) == 10 and items["corrupt"].sum() == 1 and items["mask"].sum() == 9
    np.testing.assert_array_equal(items["label"][items["mask"]], [0, 0, 0, 1, 1, 1, 2, 2, 2])


def test_folder_source_matches_registry_names_and_classes_json(tmp_path):
    names = ["747-300", "F-16A/B", "DC-3"]
    _write_folders(tmp_path / "a", ["dc-3", "f-16a_b", "747-300"])
    data = eval_sources.folder_source(str(tmp_path / "a"), names)
    assert data.class_names == names
    assert [data.source[i]["label"] for i in range(len(data.source))] == [0] * 3 + [1] * 3 + [2] * 3
    with pytest.raises(ValueError, match="unmatched"):
        eval_sources.folder_source(str(tmp_path / "a"), ["747-300", "F-16A/B", "A380"])
    _write_folders(tmp_path / "b", ["x", "y"])
    (tmp_path / "b" / "classes.json").write_text(json.dumps(
        {"folders": ["y", "x"], "class_names": ["why", "ex"], "templates": ["a {} here"]}))
    data = eval_sources.folder_source(str(tmp_path / "b"))
    assert data.class_names == ["why", "ex"] and data.templates == ["a {} here"]
    assert data.source.paths[0].endswith("/y/0.jpeg") and data.source[0]["label"] == 0


def test_registry_aircraft_folders_with_splits(tmp_path):
    names = prompts.class_names("aircraft")
    for split in ("train", "test"):
        _write_folders(tmp_path / split, [n.replace("/", "_") for n in names], per_class=1)
    spec = registry.Spec("aircraft", "registry", "")
    for split in ("train", "test"):
        data, mean_per_class = registry.resolve_classification(spec, split, _eval_config(aircraft_dir=str(tmp_path)))
        assert mean_per_class and data.class_names == names
        assert [data.source[i]["label"] for i in range(len(data.source))] == list(range(len(names)))


def _records_set(path, labels, captions):
    recs = [records.encode_record(testing.encode(testing.digit_image(i, 20)), captions[i], key=str(i),
                                  source="test", label=int(y), width=20, height=20) for i, y in enumerate(labels)]
    records.write_dataset(recs, str(path), 2, inputs=["test"])


def test_records_source_and_captions(tmp_path):
    labels = [2, 0, 1, 1, 0, 2, 2]
    captions = [f"caption {i}" for i in range(len(labels))]
    _records_set(tmp_path / "test", labels, captions)
    with pytest.raises(MissingDataError, match="classes.json"):
        registry.resolve_classification(registry.Spec("mine", "arrayrecord", str(tmp_path)), "test", _eval_config())
    (tmp_path / "test" / "classes.json").write_text(json.dumps({"class_names": ["a", "b", "c"],
                                                                "templates": ["{}"]}))
    data, _ = registry.resolve_classification(registry.Spec("mine", "arrayrecord", str(tmp_path)), "test",
                                              _eval_config())
    items = _all_items(data.source)
    np.testing.assert_array_equal(items["label"][items["mask"]], labels)
    caps = registry.resolve_captions(registry.Spec("mine", "arrayrecord", str(tmp_path)), _eval_config())
    assert caps.captions == captions and caps.caption_groups.tolist() == list(range(len(labels)))
    assert [caps.images[i]["label"] for i in range(len(labels))] == list(range(len(labels)))


def test_karpathy_captions_groups_and_image_root(tmp_path):
    entries = []
    for i in range(4):
        (tmp_path / "images" / "val2014").mkdir(parents=True, exist_ok=True)
        (tmp_path / "images" / "val2014" / f"{i}.jpg").write_bytes(testing.encode(testing.digit_image(i, 20)))
        entries.append({"filepath": "val2014", "filename": f"{i}.jpg", "split": "test" if i != 1 else "train",
                        "sentences": [{"raw": f" image {i} caption {k} "} for k in range(2 + i % 2)]})
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": entries}))
    data = registry.resolve_captions(registry.Spec("coco5k", "karpathy", str(tmp_path / "dataset_coco.json")),
                                     _eval_config())
    assert len(data.images) == 3
    assert data.captions[:3] == ["image 0 caption 0", "image 0 caption 1", "image 2 caption 0"]
    assert data.caption_groups.tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert data.images.paths[2].endswith("images/val2014/3.jpg")
    with pytest.raises(MissingDataError, match="flickr30k_dir is not set"):
        registry.resolve_captions(registry.Spec("flickr30k", "registry", ""), _eval_config())


def test_tfds_caption_sets(monkeypatch):
    """coco_captions needs TensorFlow to build, so its data source is stood in for with its example structure."""
    examples = [{"image": testing.digit_image(i, 20), "captions": {"id": np.arange(k), "text": np.asarray(
        [f"c{i}-{j}".encode() for j in range(k)], dtype=object)}} for i, k in enumerate([5, 4, 5])]
    monkeypatch.setattr(eval_sources, "_tfds_data_source", lambda name, split, data_dir: (None, examples))
    data = registry.resolve_captions(registry.Spec("coco", "registry", ""), _eval_config())
    assert data.captions[:6] == ["c0-0", "c0-1", "c0-2", "c0-3", "c0-4", "c1-0"]
    assert data.caption_groups.tolist() == [0] * 5 + [1] * 4 + [2] * 5
    assert [data.images[i]["label"] for i in range(3)] == [0, 1, 2]


def test_specs():
    specs = registry.parse_specs(" cifar10, mine=folder:/data/x ,digits,c=arrayrecord:gs://b/d")
    assert specs == [registry.Spec("cifar10", "registry", ""), registry.Spec("mine", "folder", "/data/x"),
                     registry.Spec("digits", "digits", ""), registry.Spec("c", "arrayrecord", "gs://b/d")]
    assert registry.parse_specs("") == []
    for bad in ("x=nope:/a", "x=folder:", "a,a", "cifar11", "coco", "x=karpathy:/d.json"):
        with pytest.raises(ValueError):
            registry.parse_specs(bad, "zeroshot")
    for bad in ("cifar10", "x=folder:/a"):
        with pytest.raises(ValueError, match="eval.retrieval"):
            registry.parse_specs(bad, "retrieval")
    assert [s.name for s in registry.parse_specs("coco,flickr30k,digits", "retrieval")] == ["coco", "flickr30k",
                                                                                             "digits"]
    with pytest.raises(ValueError, match="unknown evaluation dataset"):
        registry.resolve_classification(registry.Spec("cifar11", "registry", ""), "test", _eval_config())


def test_index_restores_source_order_across_processes():
    """Global batches stack every process's slice, which interleaves their blocks; "index" undoes it."""
    source = [{"image": testing.digit_image(i, 20), "label": i} for i in range(11)]
    per_process = [list(pipeline.make_eval_dataset(source, pipeline.EvalDataOptions(
        image_size=SIZE, batch_size=2, process_index=p, process_count=3))) for p in range(3)]
    stacked = {k: np.concatenate([b[k] for step in zip(*per_process) for b in step]) for k in ("label", "index",
                                                                                               "mask")}
    assert not np.array_equal(stacked["label"][stacked["mask"]], np.arange(11))  # interleaved
    keep = np.flatnonzero(stacked["mask"])
    order = keep[np.argsort(stacked["index"][keep])]
    np.testing.assert_array_equal(stacked["label"][order], np.arange(11))
    assert (stacked["index"][~stacked["mask"]] == -1).all()
