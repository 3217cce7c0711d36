"""Built-in graded set: pairs of real digit scans side by side, with ordered captions and label tuples.

Every image is two of scikit-learn's handwritten digit scans side by side (each 8x8 scan upscaled to 16 wide x 32
high, dark ink on white, one 32x32 RGB JPEG); its caption names both digits in words and says which is where, in
one of several phrasings, some naming the left digit first ("a three left of a seven", "three then seven"), some
the right one ("a seven right of a three"). Of the 90 ordered pairs (a, b), a != b, `held_out` (20) are held out
entirely from training: seeded permutations pick for every digit two right-hand partners, so each digit is held out
twice on the left and twice on the right, and the reverse (b, a) of a held-out pair is always a training pair.
Training images use only the scans of the built-in digits' stratified 80% training split; test images only the
held-out 20% of the scans. Each record carries "label" (the pair's index in PAIRS) and "labels" [a, b] (the label
tuple the ranking mode grades relevance by, relevance.py: positionally 0, 1 or 2).

Shared by experiments/compositional.py (`build`) and the built-in `data.kind = "digit_pairs"` (`prepare`: built
once into the cache directory, like digits.py).
"""
from __future__ import annotations

import io
import json
import os
from typing import NamedTuple

import numpy as np
from PIL import Image

from wpce_jax.data import records
from wpce_jax.data.digits import CLASS_NAMES, cached_build

# Bump when anything below changes what `prepare` writes: a cache with another version is rebuilt.
BUILDER_VERSION = 1
# {a}: the left digit's name, {b}: the right digit's. Half the phrasings name the right digit first, so word order
# alone does not give the sides.
TEMPLATES = [
    "a {a} left of a {b}",
    "{a} then {b}",
    "a {a} to the left of a {b}",
    "a {b} right of a {a}",
    "{a} on the left and {b} on the right",
    "a {b} to the right of a {a}",
]
PAIRS = [(a, b) for a in range(10) for b in range(10) if a != b]  # the 90 ordered pairs; a record's label indexes it
PAIR_INDEX = {p: i for i, p in enumerate(PAIRS)}
IMAGE_SIDE = 32
_TEST_FRACTION, _SPLIT_SEED = 0.2, 0  # the built-in digits' split of the scans (digits.py)
# A word-level SentencePiece model: every word (digit names included) is one token. The captions hold 19 distinct
# words; the trainer shrinks the requested size to what the corpus supports (23 pieces with the 4 special ones).
SP_VOCAB = 64
# The built-in set (`prepare`): the experiment's quick setting.
BUILTIN = dict(train_per_pair=80, test_per_pair=20, held_out=20)
BUILTIN_SEED = 0


class DigitPairsData(NamedTuple):
    train_dir: str          # records of the training pairs (train scans)
    test_dir: str           # records of the held-out pairs (test scans)
    tokenizer_path: str     # SentencePiece .model trained on the training captions
    held_out: list          # the held-out ordered pairs (a, b)
    num_train: int
    num_test: int


def held_out_pairs(seed: int, count: int = 20) -> list[tuple[int, int]]:
    """count = 10 k held-out ordered pairs: k permutations without fixed points, pairwise different at every digit,
    so every digit is held out k times on each side; no held-out pair's reverse is held out. Seeded, sorted."""
    if count % 10 or not 0 < count <= 40:
        raise ValueError(f"held_out must be a multiple of 10 in [10, 40], got {count}")
    k = count // 10
    rng = np.random.default_rng(seed)
    for _ in range(100000):
        perms = [rng.permutation(10) for _ in range(k)]
        if any(np.any(p == np.arange(10)) for p in perms):
            continue
        if k > 1 and any(len({int(p[a]) for p in perms}) < k for a in range(10)):
            continue
        pairs = {(a, int(p[a])) for p in perms for a in range(10)}
        if any((b, a) in pairs for a, b in pairs):
            continue
        return sorted(pairs)
    raise RuntimeError("no held-out set found")


def sides(pairs) -> tuple[set, set]:
    """(digits seen on the left, digits seen on the right) in a set of pairs."""
    return {a for a, _ in pairs}, {b for _, b in pairs}


def caption(a: int, b: int, template: int) -> str:
    return TEMPLATES[template].format(a=CLASS_NAMES[a], b=CLASS_NAMES[b])


def render_half(scan: np.ndarray, side: int = IMAGE_SIDE) -> np.ndarray:
    """One 8x8 scan (values 0..16, ink high) -> uint8 [side, side // 2]: dark ink on white, bicubic (as digits.py)."""
    gray = (255.0 - scan.astype(np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(gray, "L").resize((side // 2, side), Image.Resampling.BICUBIC))


def render_pair(left: np.ndarray, right: np.ndarray, side: int = IMAGE_SIDE) -> bytes:
    """Two scans side by side -> RGB JPEG (q95) of side x side."""
    pixels = np.concatenate([render_half(left, side), render_half(right, side)], axis=1)
    buf = io.BytesIO()
    Image.fromarray(pixels, "L").convert("RGB").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def split_scans():
    """(scans [1797, 8, 8], labels, train indices, test indices): the built-in digits' stratified 80/20 split."""
    from sklearn.datasets import load_digits

    from wpce_jax.data.digits import _stratified_split

    d = load_digits()
    labels = d.target.astype(np.int64)
    train, test = _stratified_split(labels, _TEST_FRACTION, _SPLIT_SEED)
    return d.images, labels, train, test


def _records(pairs, per_pair: int, scans, labels, pool: np.ndarray, rng: np.random.Generator, split: str):
    """per_pair records of every pair in `pairs`, scans drawn (with replacement) from `pool` by digit."""
    by_digit = {c: pool[labels[pool] == c] for c in range(10)}
    out = []
    for a, b in pairs:
        for _ in range(per_pair):
            i, j = int(rng.choice(by_digit[a])), int(rng.choice(by_digit[b]))
            t = int(rng.integers(len(TEMPLATES)))
            out.append(records.encode_record(
                render_pair(scans[i], scans[j]), caption(a, b, t), key=f"{split}/{a}{b}/{i}-{j}",
                source="sklearn.datasets.load_digits", label=PAIR_INDEX[(a, b)], labels=[a, b], left=a, right=b,
                left_index=i, right_index=j, template=t, width=IMAGE_SIDE, height=IMAGE_SIDE))
    order = rng.permutation(len(out))
    return [out[k] for k in order]


def build(out: str, setting: dict, seed: int, builder: str = "wpce_jax.data.digit_pairs",
          seen_per_pair: int = 0) -> dict:
    """Writes OUT/{train, test_heldout} (and with seen_per_pair, OUT/test_seen: test scans of training pairs)
    record sets, OUT/spm.model and OUT/pairs.json; returns the latter. setting: train_per_pair, test_per_pair,
    held_out."""
    from wpce_jax.data.train_tokenizer import train_sentencepiece

    scans, labels, train_idx, test_idx = split_scans()
    held = held_out_pairs(seed, setting["held_out"])
    seen = [p for p in PAIRS if p not in set(held)]
    left, right = sides(seen)
    assert left == right == set(range(10)), "every digit must be on both sides in training"
    rng = np.random.default_rng(seed + 1)
    sets = {"train": _records(seen, setting["train_per_pair"], scans, labels, train_idx, rng, "train"),
            "test_heldout": _records(held, setting["test_per_pair"], scans, labels, test_idx, rng, "test")}
    if seen_per_pair:
        sets["test_seen"] = _records(seen, seen_per_pair, scans, labels, test_idx, rng, "test")
    for name, recs in sets.items():
        records.write_dataset(recs, os.path.join(out, name), num_shards=1, inputs=["sklearn.datasets.load_digits"],
                              dropped={}, builder=builder)
    train_captions = [records.decode_header(r)[0]["caption"] for r in sets["train"]]
    train_sentencepiece(train_captions, os.path.join(out, "spm"), SP_VOCAB, model_type="word")
    info = {"held_out": held, "seen": seen, "counts": {k: len(v) for k, v in sets.items()}}
    with open(os.path.join(out, "pairs.json"), "w") as f:
        json.dump(info, f)
    return info


def prepare(cache_dir: str) -> DigitPairsData:
    """Builds (once) and returns the built-in set (BUILTIN, seed 0) under cache_dir/digit_pairs-v{VERSION}; safe
    to call from several processes at once (digits.cached_build)."""
    name = f"digit_pairs-v{BUILDER_VERSION}"
    final, _ = cached_build(cache_dir, name, lambda tmp: {"info": build(tmp, BUILTIN, BUILTIN_SEED)})
    with open(os.path.join(final, "pairs.json")) as f:
        info = json.load(f)
    return DigitPairsData(train_dir=os.path.join(final, "train"), test_dir=os.path.join(final, "test_heldout"),
                          tokenizer_path=os.path.join(final, "spm.model"),
                          held_out=[tuple(p) for p in info["held_out"]],
                          num_train=int(info["counts"]["train"]), num_test=int(info["counts"]["test_heldout"]))
