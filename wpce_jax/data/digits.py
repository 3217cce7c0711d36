"""Built-in tiny image-caption dataset: scikit-learn's handwritten digits with templated captions.

1797 real 8x8 grayscale scans (shipped with scikit-learn, no download) become RGB JPEGs of ``image_side``
pixels, each with a caption naming its digit in one of many phrasings (numeral or word). A stratified 20%
split, fixed seed, is held out for evaluation and never seen in training. A SentencePiece model is trained on
the training captions only. Everything is written once into ``cache_dir`` through the same record writer as
the CC12M converter and reused while the builder's version stamp matches.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from typing import NamedTuple

import numpy as np
from PIL import Image

from wpce_jax.data import records

# Bump when anything below changes what is written: a cache with another version is rebuilt.
BUILDER_VERSION = 1
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# {w}: the digit as a word, {n}: as a numeral. Training captions mix both so that zero-shot prompts with
# either form land near the images.
CAPTION_TEMPLATES = [
    "a handwritten {w}",
    "the digit {n}",
    "a photo of the number {w}",
    "an image showing a {n}, written by hand",
    "a scanned handwritten digit {w}",
    "the number {n} written by hand",
    "a small blurry picture of a {w}",
    "handwriting of the digit {w}",
    "a pixelated {n}",
    "someone wrote the number {w}",
    "digit: {n}",
    "a low resolution scan of a handwritten {n}",
    "this is a {w}",
    "a {w} drawn with a pen",
]
# No trailing periods: the training captions have none, so "." would be an unknown piece to the tokenizer.
ZEROSHOT_TEMPLATES = [
    "a photo of the digit {}",
    "a handwritten {}",
    "the number {} written by hand",
    "a scanned handwritten digit {}",
]
_TEST_FRACTION = 0.2
_SPLIT_SEED = 0
_CAPTION_SEED = 1
_SP_VOCAB_SIZE = 128  # the captions use ~60 distinct words; more pieces than that only memorises them


class DigitsData(NamedTuple):
    train_dir: str          # converted dataset (manifest.json + ArrayRecord), 80% of the digits
    test_dir: str           # the held-out 20%, same format, each record with "label"
    tokenizer_path: str     # SentencePiece .model trained on the training captions
    class_names: list[str]  # "zero" .. "nine", indexed by label
    zeroshot_templates: list[str]  # prompts with "{}" for a class name
    num_train: int
    num_test: int


def _stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded random ``fraction`` goes to test; returns sorted (train, test) indices."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test.extend(rng.choice(idx, size=int(round(fraction * len(idx))), replace=False))
    test = np.sort(np.asarray(test, dtype=np.int64))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


def _to_jpeg(pixels: np.ndarray, side: int) -> bytes:
    """8x8 values in [0, 16] (ink is high) -> dark ink on white, bicubic to side x side, RGB JPEG q95."""
    gray = (255.0 - pixels.astype(np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(gray, "L").resize((side, side), Image.Resampling.BICUBIC).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def caption_for(label: int, rng: np.random.Generator) -> str:
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    return template.format(w=CLASS_NAMES[label], n=str(label))


def _build(out: str, image_side: int, vocab_size: int) -> dict:
    from sklearn.datasets import load_digits

    from wpce_jax.data.train_tokenizer import train_sentencepiece

    digits = load_digits()
    images, labels = digits.images, digits.target.astype(np.int64)
    train_idx, test_idx = _stratified_split(labels, _TEST_FRACTION, _SPLIT_SEED)
    rng = np.random.default_rng(_CAPTION_SEED)
    captions = [caption_for(int(y), rng) for y in labels]
    counts = {}
    for split, idx in (("train", train_idx), ("test", test_idx)):
        recs = [records.encode_record(_to_jpeg(images[i], image_side), captions[i], key=f"digits/{int(i)}",
                                      source="sklearn.datasets.load_digits", label=int(labels[i]),
                                      width=image_side, height=image_side)
                for i in idx]
        records.write_dataset(recs, os.path.join(out, split), num_shards=2, inputs=["sklearn.datasets.load_digits"],
                              dropped={}, builder="wpce_jax.data.digits", builder_version=BUILDER_VERSION)
        counts[split] = len(recs)
    train_sentencepiece([captions[i] for i in train_idx], os.path.join(out, "spm"), vocab_size)
    return counts


def cached_build(cache_dir: str, name: str, build) -> tuple[str, dict]:
    """(cache_dir/name, its DONE.json): build(tmp) -> a JSON-serialisable dict writes a dataset into tmp, once.

    Safe to call from several processes at once: each builds into its own temporary directory and the first to
    finish renames it into place; the others discard theirs and use the winner's."""
    final = os.path.join(cache_dir, name)
    stamp = os.path.join(final, "DONE.json")
    if not os.path.isfile(stamp):
        os.makedirs(cache_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{name}.", dir=cache_dir)
        try:
            done = build(tmp)
            with open(os.path.join(tmp, "DONE.json"), "w") as f:
                json.dump({**done, "built_at": time.time()}, f)
            try:
                os.rename(tmp, final)  # atomic; fails if another process got there first
            except OSError:
                if not os.path.isfile(stamp):
                    # A directory without the stamp is a leftover from a crashed older build: replace it.
                    shutil.rmtree(final, ignore_errors=True)
                    os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    with open(stamp) as f:
        return final, json.load(f)


def prepare(cache_dir: str, *, image_side: int = 32, vocab_size: int = _SP_VOCAB_SIZE) -> DigitsData:
    """Builds (once) and returns the digits dataset under cache_dir/digits-v{VERSION}-{side}px-sp{vocab}
    (`cached_build`: safe to call from several processes at once)."""
    name = f"digits-v{BUILDER_VERSION}-{image_side}px-sp{vocab_size}"
    final, done = cached_build(cache_dir, name, lambda tmp: {
        "builder_version": BUILDER_VERSION, "image_side": image_side, "vocab_size": vocab_size,
        "counts": _build(tmp, image_side, vocab_size)})
    counts = done["counts"]
    return DigitsData(
        train_dir=os.path.join(final, "train"),
        test_dir=os.path.join(final, "test"),
        tokenizer_path=os.path.join(final, "spm.model"),
        class_names=list(CLASS_NAMES),
        zeroshot_templates=list(ZEROSHOT_TEMPLATES),
        num_train=int(counts["train"]),
        num_test=int(counts["test"]),
    )
