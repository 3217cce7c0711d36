"""Converts a prepared TFDS classification set into class-disjoint train/test record datasets (zero-shot DML).

    python -m wpce_jax.data.tfds_to_records --name caltech_birds2011 --data_dir ~/tensorflow_datasets --output /data/cub
    python -m wpce_jax.data.tfds_to_records --name cars196 --data_dir ~/tensorflow_datasets --output /data/cars
    python -m wpce_jax.data.tfds_to_records --name stanford_online_products --data_dir ~/tensorflow_datasets \
        --output /data/sop --num_shards 16

The dataset must be prepared in the array_record format first (`tfds build NAME --data_dir=DIR
--file_format=array_record`). Every split is read and pooled, then cut by label into the standard deep-metric-
learning protocol: classes [0, cut) go to OUT/train, classes [cut, num_classes) to OUT/test, with the "label"
header re-indexed from 0 within each half (train: k, test: k - cut). Standard cuts: CUB-200-2011 100 (0-99 /
100-199), Cars196 98 (0-97 / 98-195), Stanford Online Products 11318 (class_id 0-11317 / 11318-22633); any other
builder: num_classes // 2 unless --cut says otherwise.

Images are decoded by TFDS and re-encoded as JPEG (PIL, quality 95, 4:4:4 chroma). Captions are
"a photo of a {class name}" where the dataset names its classes (Cars196's label names; CUB's per-example
label_name text, as CUB's label feature names are just "0".."199"), else "an image of class {k}" (k the original
label). OUT/{train,test}/classes.json hold {"class_names": [...], "templates": ["a photo of a {}."]} in the
re-indexed order, for `--config.eval.image_retrieval=NAME=arrayrecord:OUT/test` (or zeroshot/linear probe).

With --labels_features F1,F2,... each record also carries the label tuple "labels" [ex[F1], ex[F2], ...] (the
original integers, not re-indexed), for the ranking modes' graded relevance and graded image retrieval, e.g. CIFAR-100's
(coarse, fine) classes: `--name cifar100 --labels_features coarse_label,label` (configs/cifar100_hierarchy.py).

Output is deterministic: records are in (split name, index) order. Memory: the encoded JPEGs of the whole dataset
are held until written (a few GB for Stanford Online Products).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from wpce_jax.data import records
from wpce_jax.data.eval_sources import MissingDataError, tfds_builder, tfds_data_source
from wpce_jax.errors import ConfigError, DataError, UserError
from wpce_jax.progress import Progress

CLASSES_FILE = "classes.json"
TEMPLATES = ["a photo of a {}."]
JPEG_QUALITY = 95
# Builder name -> (label feature, first test class, per-example class-name text feature or None).
KNOWN = {
    "caltech_birds2011": ("label", 100, "label_name"),
    "cars196": ("label", 98, None),
    "stanford_online_products": ("class_id", 11318, None),
}
DEFAULT_SPLITS = ("train", "test")  # when the builder's info lists none (an unprepared builder under mock_data)


MissingDatasetError = MissingDataError  # not prepared (in the array_record format) under data_dir


def open_sources(name: str, data_dir: str | None, splits: Sequence[str] | None = None):
    """(builder, {split: random-access data source}) for every split of a prepared dataset."""
    builder = tfds_builder(name, data_dir)
    splits = list(splits or sorted(builder.info.splits.keys()) or DEFAULT_SPLITS)
    return builder, {split: tfds_data_source(builder, name, split, data_dir) for split in splits}


def _text(v: Any) -> str:
    if isinstance(v, (bytes, np.bytes_)):
        v = bytes(v).decode("utf-8", "replace")
    return " ".join(str(v).replace("_", " ").split())


def _label_names(feature) -> list[str] | None:
    """The ClassLabel's names, or None where they are only the numbers ("0", "1", ...)."""
    names = list(getattr(feature, "names", None) or [])
    if not names or names == [str(i) for i in range(len(names))]:
        return None
    return [_text(n) for n in names]


def to_jpeg(pixels: np.ndarray) -> bytes:
    """uint8 HxWx{1,3,4} (or HxW) -> RGB JPEG bytes at quality 95, no chroma subsampling."""
    a = np.asarray(pixels)
    if a.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {a.dtype}")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    img = Image.fromarray(a).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


def convert(name: str, data_dir: str | None, output: str, *, label_feature: str | None = None,
            cut: int | None = None, num_shards: int = 1, splits: Sequence[str] | None = None,
            labels_features: Sequence[str] | None = None, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Writes OUT/train and OUT/test (records + manifest.json + classes.json); returns their manifests.
    labels_features: integer features whose values, in order, make each record's label tuple "labels"."""
    known_label, known_cut, name_feature = KNOWN.get(name, ("label", None, None))
    label_feature = label_feature or known_label
    builder, sources = open_sources(name, data_dir, splits)
    features = builder.info.features
    if label_feature not in features:
        raise ConfigError(f"{name}: no label feature {label_feature!r}; features: {sorted(features.keys())}")
    labels_features = list(labels_features or [])
    for feature in labels_features:
        if feature not in features or not getattr(features[feature], "num_classes", None):
            raise ConfigError(f"{name}: --labels_features names {feature!r}, which is no ClassLabel feature; "
                              f"features: {sorted(features.keys())}")
    num_classes = getattr(features[label_feature], "num_classes", None)
    if not num_classes:
        raise ConfigError(f"{name}: feature {label_feature!r} is not a ClassLabel")
    if label_feature != known_label:
        name_feature = None  # CUB's label_name names the "label" classes only
    cut = cut if cut is not None else (known_cut if label_feature == known_label and known_cut else num_classes // 2)
    if not 0 < cut < num_classes:
        raise ConfigError(f"cut must be in [1, {num_classes - 1}], got {cut}")
    names: list[str | None] = list(_label_names(features[label_feature]) or [None] * num_classes)
    if name_feature is not None and name_feature not in features:
        name_feature = None

    halves: dict[str, list[tuple]] = {"train": [], "test": []}
    total = sum(len(s) for s in sources.values())
    prog = Progress(f"{name} -> {output}", unit="images", enabled=progress)
    done = 0
    for split in sorted(sources):
        source = sources[split]
        for i in range(len(source)):
            ex = source[i]
            k = int(ex[label_feature])
            if not 0 <= k < num_classes:
                raise DataError(f"{name} {split}[{i}]: label {k} outside [0, {num_classes})")
            if names[k] is None and name_feature is not None:
                names[k] = _text(ex[name_feature]) or None  # the first example of the class names it
            pixels = np.asarray(ex["image"])
            jpeg = to_jpeg(pixels)
            half, new = ("train", k) if k < cut else ("test", k - cut)
            tuple_ = [int(ex[f]) for f in labels_features]
            halves[half].append((k, split, i, jpeg, pixels.shape[1], pixels.shape[0], new, tuple_))
            done += 1
            prog.update(1, fraction=done / max(total, 1))
    prog.close()

    manifests = {}
    for half, ranges in (("train", range(cut)), ("test", range(cut, num_classes))):
        out_dir = os.path.join(output, half)
        recs = []
        for k, split, i, jpeg, width, height, new, tuple_ in halves[half]:
            n = names[k]
            caption = f"a photo of a {n}" if n else f"an image of class {k}"
            extra = {"labels": tuple_} if labels_features else {}
            recs.append(records.encode_record(jpeg, caption, key=f"{split}/{i}", source=name, label=new,
                                              width=int(width), height=int(height), **extra))
        halves[half] = []  # free the JPEGs as each half is packed
        manifests[half] = records.write_dataset(
            recs, out_dir, num_shards, inputs=[f"tfds:{name}/{s}" for s in sorted(sources)],
            tfds_name=name, label_feature=label_feature, num_classes=len(ranges),
            label_offset=ranges.start, source_num_classes=num_classes,
            **({"labels_features": labels_features} if labels_features else {}))
        class_names = [names[k] or f"class {k}" for k in ranges]
        tmp = os.path.join(out_dir, CLASSES_FILE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"class_names": class_names, "templates": TEMPLATES}, f, indent=1, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, os.path.join(out_dir, CLASSES_FILE))
    return manifests


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--name", required=True, help="TFDS builder, e.g. caltech_birds2011, cars196, "
                                                   "stanford_online_products")
    p.add_argument("--data_dir", default=None, help="TFDS data_dir holding the prepared (array_record) dataset")
    p.add_argument("--output", required=True, help="writes OUTPUT/train and OUTPUT/test")
    p.add_argument("--label_feature", default=None,
                   help="ClassLabel feature to split on (default: label; class_id for stanford_online_products)")
    p.add_argument("--cut", type=int, default=None,
                   help="first test class (default: the standard DML cut, else num_classes // 2)")
    p.add_argument("--num_shards", type=int, default=1, help="ArrayRecord files per half")
    p.add_argument("--splits", default=None, help="comma-separated splits to pool (default: all)")
    p.add_argument("--labels_features", default=None,
                   help="comma-separated ClassLabel features whose values make each record's label tuple, e.g. "
                        "coarse_label,label for cifar100")
    args = p.parse_args(argv)
    try:
        manifests = convert(args.name, args.data_dir, args.output, label_feature=args.label_feature, cut=args.cut,
                            num_shards=args.num_shards, splits=args.splits.split(",") if args.splits else None,
                            labels_features=args.labels_features.split(",") if args.labels_features else None)
    except UserError as e:  # a dataset not prepared, a --label_feature or --cut that cannot work
        print(f"error: {e}", file=sys.stderr)
        return 1
    for half, m in manifests.items():
        print(f"{os.path.join(args.output, half)}: {m['num_examples']:,} images, {m['num_classes']} classes "
              f"(source labels {m['label_offset']}..{m['label_offset'] + m['num_classes'] - 1})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
