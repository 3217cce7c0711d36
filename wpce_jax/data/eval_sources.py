"""Readers of evaluation data: random-access sources that `pipeline.make_eval_dataset` turns into batches.

A source has len() and [i] -> {"image": encoded bytes or uint8 [H, W, C], "label": int} (record bytes for
converted sets). Classification sets give class labels; caption sets (retrieval) give each image's index as its
label and a list of captions with the index of the image each describes.

    tfds_source(name, split, data_dir)        a prepared TFDS dataset (array_record format), never downloads
    folder_source(root, class_names=None)     ROOT/<class>/*.jpg (+ optional ROOT/classes.json)
    records_source(data_dir)                  a converted ArrayRecord set (labels from "label" in the records)
    karpathy_captions(json_path, image_root)  Karpathy's split json (COCO, Flickr30k) + the image folder
    tfds_captions(name, split, data_dir)      a TFDS caption set (coco_captions: Karpathy's test split)
    records_captions(data_dir)                a converted caption set (a held-out CC12M shard): one caption each

Paths go through etils.epath, so any of them may be a gs:// URL.
"""
from __future__ import annotations

import json
import re
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
from etils import epath

from wpce_jax.data import records
from wpce_jax.errors import DataError, MissingInputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CLASSES_FILE = "classes.json"


class MissingDataError(MissingInputError):
    """Evaluation data that is not on disk (yet); the message says how to prepare it."""


class ClassificationSet(NamedTuple):
    source: Any                        # len() / [i] -> {"image", "label"} or record bytes
    class_names: list[str]             # indexed by label
    templates: Optional[list[str]]     # None: the caller's default for this dataset
    label_tuples: Any = None           # optional int [C, T]: the label tuple of each class (graded image retrieval)


class CaptionSet(NamedTuple):
    images: Any                        # len() / [i] -> {"image", "label": its group (usually its own index i), under
                                       # the key every evaluation source uses}
    captions: list[str]                # every caption of every image
    caption_groups: np.ndarray         # int64 [K]: a caption is relevant to the images whose label equals its group
    group_labels: Any = None           # optional int [G, T]: the label tuple of each group (graded relevance)


# ---------------------------------------------------------------------------------------------------- TFDS

def tfds_builder(name: str, data_dir: Optional[str]):
    """tfds.builder(name, data_dir), or MissingDataError when TFDS cannot make it."""
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # an unknown name, or a builder whose code needs TensorFlow
        raise MissingDataError(f"TFDS cannot build {name!r}: {str(e).splitlines()[0]}") from None


def tfds_data_source(builder, name: str, split: str, data_dir: Optional[str]):
    """builder.as_data_source(split), or MissingDataError with the command that prepares it (never downloads)."""
    try:
        return builder.as_data_source(split)
    except Exception:  # TFDS raises several types for "not there" and "wrong format"
        manual = " --manual_dir=DIR_WITH_THE_DOWNLOADED_ARCHIVES" if name.startswith("imagenet") else ""
        command = f"tfds build {name} --data_dir={data_dir or '~/tensorflow_datasets'} " \
                  f"--file_format=array_record{manual}"
        state = "is prepared in another file format" if builder.is_prepared() else "is not prepared"
        raise MissingDataError(f"TFDS dataset {name!r} (split {split!r}) {state} under {data_dir}; nothing is "
                               f"downloaded at run time. Prepare it once with: {command}") from None


def _tfds_data_source(name: str, split: str, data_dir: Optional[str]):
    builder = tfds_builder(name, data_dir)
    return builder, tfds_data_source(builder, name, split, data_dir)


class _TFDSItems:
    """A TFDS data source as {"image", "label"} items (picklable for grain workers)."""

    def __init__(self, data_source, image_key: str = "image", label_key: Optional[str] = "label"):
        self.data_source, self.image_key, self.label_key = data_source, image_key, label_key

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, i):
        item = self.data_source[i]
        label = int(item[self.label_key]) if self.label_key else i
        return {"image": np.asarray(item[self.image_key]), "label": label}


def tfds_source(name: str, split: str, data_dir: Optional[str]) -> ClassificationSet:
    """A labelled TFDS split; class names from the builder's label feature (the caller may rename them)."""
    builder, data_source = _tfds_data_source(name, split, data_dir)
    return ClassificationSet(_TFDSItems(data_source), list(builder.info.features["label"].names), None)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def tfds_captions(name: str, split: str, data_dir: Optional[str]) -> CaptionSet:
    """A TFDS image-caption split whose examples hold "captions": {"text": [...]} (coco_captions)."""
    _, data_source = _tfds_data_source(name, split, data_dir)
    captions, owners = [], []
    for i in range(len(data_source)):
        texts = data_source[i]["captions"]["text"]
        captions += [_text(t) for t in texts]
        owners += [i] * len(texts)
    return CaptionSet(_TFDSItems(data_source, label_key=None), captions, np.asarray(owners, np.int64))


# ------------------------------------------------------------------------------------------- class folders

class Files:
    """Image files read as bytes (decoded in the pipeline's workers), each with its label."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int]):
        self.paths, self.labels = list(paths), list(labels)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        return {"image": epath.Path(self.paths[i]).read_bytes(), "label": self.labels[i]}


def _key(name: str) -> str:
    """Folder and class names compared without case and punctuation ("F-16A/B" matches folder "F-16A_B")."""
    return re.sub(r"[^0-9a-z]+", "", name.lower())


def folder_source(root: str, class_names: Optional[Sequence[str]] = None) -> ClassificationSet:
    """Images in ROOT/<class folder>/ (sorted), the layout ImageNet and FGVC-Aircraft are
    usually kept in.

    Labels: with `class_names` (a registry dataset), one folder per name (case and punctuation ignored) takes
    that name's index; without, the sorted folder names are the classes. An optional
    ROOT/classes.json overrides: {"folders": [label order], "class_names": [prompt names, same order],
    "templates": ["a photo of a {}.", ...]} (each key optional).
    """
    root_path = epath.Path(root)
    if not root_path.is_dir():
        raise MissingDataError(f"class-folder dataset {root}: no such directory (expected ROOT/<class>/*.jpg)")
    spec = {}
    if (root_path / CLASSES_FILE).exists():
        spec = json.loads((root_path / CLASSES_FILE).read_text())
    folders = sorted(p.name for p in root_path.iterdir() if p.is_dir())
    if not folders:
        raise MissingDataError(f"class-folder dataset {root}: no class folders inside")
    templates = spec.get("templates")
    if "folders" in spec:
        order = list(spec["folders"])
        unknown = sorted(set(order) - set(folders))
        if unknown:
            raise DataError(f"{root_path / CLASSES_FILE}: folders {unknown[:5]} do not exist under {root}")
    elif class_names is not None:
        by_key = {_key(n): i for i, n in enumerate(class_names)}
        unmatched = [f for f in folders if _key(f) not in by_key]
        if unmatched or len(folders) != len(class_names):
            raise DataError(f"class-folder dataset {root}: {len(folders)} folders for {len(class_names)} classes"
                            f"{', unmatched: ' + str(unmatched[:5]) if unmatched else ''}; name one folder after "
                            f"each class or give {CLASSES_FILE} with \"folders\" in label order")
        order = sorted(folders, key=lambda f: by_key[_key(f)])
    else:
        order = folders
    names = spec.get("class_names", class_names if class_names is not None else
                     [f.replace("_", " ") for f in order])
    if len(names) != len(order):
        raise DataError(f"{root_path / CLASSES_FILE}: {len(names)} class_names for {len(order)} folders")
    paths, labels = [], []
    for folder in order:
        files = sorted(str(p) for p in (root_path / folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [order.index(folder)] * len(files)
    if not paths:
        raise MissingDataError(f"class-folder dataset {root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return ClassificationSet(Files(paths, labels), list(names), templates)


# -------------------------------------------------------------------------------------- converted records

class Records:
    """A converted dataset's records (bytes; the pipeline decodes header and image); labels from the records."""

    def __init__(self, data_dir: str):
        import grain

        manifest = records.read_manifest(data_dir)
        self.source = grain.sources.ArrayRecordDataSource(records.shard_paths(data_dir, manifest))

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i):
        return self.source[i]

    def headers(self) -> list[dict]:
        return [records.decode_header(self.source[i])[0] for i in range(len(self))]


def class_label_tuples(headers: Sequence[dict], num_classes: int, where: str) -> Optional[np.ndarray]:
    """The label tuple of each class [C, T] from records' headers that carry "labels" (and "label"), or None when
    none does. Every record of a class must carry the same tuple (CIFAR-100's (coarse, fine): a fine class has one
    coarse class), else the images of one class would have different relevances: DataError naming the class."""
    if not any("labels" in h for h in headers):
        return None
    table: dict[int, list] = {}
    for h in headers:
        if "labels" not in h or not 0 <= h.get("label", -1) < num_classes:
            raise DataError(f"{where}: some records carry a label tuple and a class label, this one does not: {h}")
        previous = table.setdefault(h["label"], list(h["labels"]))
        if previous != list(h["labels"]):
            raise DataError(f"{where}: class {h['label']} has records with label tuples {previous} and "
                            f"{list(h['labels'])}; a class needs one tuple")
    if len({len(t) for t in table.values()}) != 1:
        raise DataError(f"{where}: the label tuples have different lengths")
    k = len(next(iter(table.values())))
    # Classes without a record never index the table; -1 marks them.
    return np.asarray([table.get(c, [-1] * k) for c in range(num_classes)], np.int64)


def records_source(data_dir: str) -> ClassificationSet:
    """A converted labelled set (every record has "label"); class names and templates from DIR/classes.json
    ({"class_names": [...], "templates": [...]}); with label tuples in the records ("labels"), each class's tuple
    (class_label_tuples)."""
    path = epath.Path(data_dir) / CLASSES_FILE
    if not (epath.Path(data_dir) / records.MANIFEST_NAME).exists():
        raise MissingDataError(f"converted dataset {data_dir}: no {records.MANIFEST_NAME} (convert it with "
                               f"python -m wpce_jax.data.convert)")
    if not path.exists():
        raise MissingDataError(f"converted dataset {data_dir}: {path} is missing; it must hold "
                               f'{{"class_names": [...], "templates": ["a photo of a {{}}.", ...]}}')
    spec = json.loads(path.read_text())
    source = Records(data_dir)
    # Reading every header is a pass over the whole set: only when the first record says there are tuples.
    has_tuples = len(source) > 0 and "labels" in records.decode_header(source[0])[0]
    tuples = class_label_tuples(source.headers(), len(spec["class_names"]), data_dir) if has_tuples else None
    return ClassificationSet(source, list(spec["class_names"]), spec.get("templates"), tuples)


def records_captions(data_dir: str) -> CaptionSet:
    """A converted caption set: record i is image i with its one caption."""
    if not (epath.Path(data_dir) / records.MANIFEST_NAME).exists():
        raise MissingDataError(f"converted dataset {data_dir}: no {records.MANIFEST_NAME}")
    source = Records(data_dir)
    captions = [h["caption"] for h in source.headers()]
    return CaptionSet(IndexGroups(source), captions, np.arange(len(captions), dtype=np.int64))


class IndexGroups:
    """Records with each image's index as its retrieval group (its "label")."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i):
        element = self.source[i]
        header, offset = records.decode_header(element)
        return {"image": memoryview(element)[offset:].tobytes(), "label": i}


# ----------------------------------------------------------------------------------------- Karpathy splits

def karpathy_captions(json_path: str, image_root: Optional[str] = None, split: str = "test") -> CaptionSet:
    """Karpathy & Fei-Fei's split file (dataset_coco.json, dataset_flickr30k.json): the `split` images, each
    with its sentences ("raw"), grouped by image. An image lives at IMAGE_ROOT/<filepath>/<filename> (COCO:
    filepath is train2014 or val2014; Flickr30k has none); by default IMAGE_ROOT is the json's folder or its
    images/ or flickr30k-images/ subfolder, whichever holds the first image."""
    path = epath.Path(json_path)
    if not path.exists():
        raise MissingDataError(f"Karpathy split file {json_path} does not exist")
    entries = [e for e in json.loads(path.read_text())["images"] if e["split"] == split]
    if not entries:
        raise DataError(f"{json_path}: no images in split {split!r}")
    relative = [epath.Path(e.get("filepath", "")) / e["filename"] for e in entries]
    roots = [epath.Path(image_root)] if image_root else [path.parent / "images", path.parent / "flickr30k-images",
                                                         path.parent]
    root = next((r for r in roots if (r / relative[0]).exists()), None)
    if root is None:
        raise MissingDataError(f"Karpathy split {json_path}: image {relative[0]} is in none of "
                               f"{[str(r) for r in roots]}")
    captions, groups = [], []
    for i, e in enumerate(entries):
        sentences = [s["raw"].strip() for s in e["sentences"]]
        captions += sentences
        groups += [i] * len(sentences)
    return CaptionSet(Files([str(root / r) for r in relative], list(range(len(entries)))), captions,
                      np.asarray(groups, np.int64))
