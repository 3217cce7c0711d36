"""Builders of small, real webdataset tar shards for tests and benchmarks (no download).

Images are real photographs-in-miniature: scikit-learn's handwritten digit scans, coloured and upscaled, so
JPEG behaves as on natural images (smooth regions and edges), not as on white noise.
"""

from __future__ import annotations

import io
import json
import tarfile
from typing import Iterable, Sequence

import numpy as np
from PIL import Image


def digit_image(index: int, side: int, *, seed: int = 0) -> np.ndarray:
    """uint8 [side, side, 3]: digit scan number ``index`` (mod 1797), bicubic-upscaled, random tint/background."""
    from sklearn.datasets import load_digits

    digits = _digits_cache.get("images")
    if digits is None:
        digits = _digits_cache["images"] = load_digits().images
    rng = np.random.default_rng(seed * 100_003 + index)
    g = digits[index % len(digits)] / 16.0
    gray = Image.fromarray((g * 255).astype(np.uint8), "L").resize((side, side), Image.Resampling.BICUBIC)
    a = np.asarray(gray, dtype=np.float64)[..., None] / 255.0
    ink, paper = rng.uniform(0, 120, 3), rng.uniform(150, 255, 3)
    return (paper * (1 - a) + ink * a).round().clip(0, 255).astype(np.uint8)


_digits_cache: dict[str, np.ndarray] = {}


def encode(arr_or_img, fmt: str = "JPEG", **kw) -> bytes:
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def write_tar(path: str, members: Sequence[tuple[str, bytes]], *, truncate_at: int | None = None) -> bytes:
    """Writes a tar of (name, bytes) members in order (names used verbatim, "../x" included); with
    truncate_at, only the first truncate_at bytes reach the file. Returns the full, untruncated tar bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0  # same bytes on every run
            tf.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    with open(path, "wb") as f:
        f.write(raw if truncate_at is None else raw[:truncate_at])
    return raw


def sample_members(key: str, image: bytes | None, caption: bytes | str | None, meta: dict | None = None,
                   image_ext: str = "jpg") -> list[tuple[str, bytes]]:
    """The members of one img2dataset sample: KEY.jpg, KEY.txt, KEY.json (each optional)."""
    out = []
    if image is not None:
        out.append((f"{key}.{image_ext}", image))
    if caption is not None:
        out.append((f"{key}.txt", caption.encode("utf-8") if isinstance(caption, str) else caption))
    if meta is not None:
        out.append((f"{key}.json", json.dumps(meta).encode("utf-8")))
    return out


def valid_shard(path: str, keys: Iterable[int], side: int = 64, *, seed: int = 0) -> dict[str, tuple[np.ndarray, str, bytes]]:
    """A tar of valid JPEG samples; returns {key: (pixels, caption, jpeg bytes)}."""
    members, expected = [], {}
    for k in keys:
        key = f"{k:09d}"
        pixels = digit_image(k, side, seed=seed)
        jpeg = encode(pixels, quality=90)
        caption = f"sample {k}: a handwritten digit {k % 10}"
        members += sample_members(key, jpeg, caption, {"url": f"http://example.com/{key}.jpg", "key": key,
                                                       "sha256": f"{k:064x}"})
        expected[key] = (pixels, caption, jpeg)
    write_tar(path, members)
    return expected
