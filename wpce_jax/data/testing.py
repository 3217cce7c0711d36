"""Builders of small, real webdataset tar shards for tests and benchmarks (no download), and of damaged ArrayRecord
chunks.

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


# Riegeli's layout (the container of ArrayRecord files): 64 KiB blocks, each opening with a 24-byte block header;
# chunks of a 40-byte header (hash, data size, data hash, type and record count, decoded size) and their data.
_BLOCK, _BLOCK_HEADER, _CHUNK_HEADER = 1 << 16, 24, 40


def _payload_offsets(begin: int, n: int) -> list[int]:
    """File offsets of n chunk bytes from `begin` on, stepping over block headers."""
    out, pos = [], begin
    while len(out) < n:
        if pos % _BLOCK < _BLOCK_HEADER:
            pos += _BLOCK_HEADER - pos % _BLOCK
            continue
        out.append(pos)
        pos += 1
    return out


def damage_record(path: str, index: int, nbytes: int = 64) -> None:
    """Flips `nbytes` bytes in the middle of the chunk of record `index` of an ArrayRecord file written with
    group_size:1 (one record per chunk), in place: reading that record then fails with "Corrupted Riegeli/records
    file: chunk data hash mismatch", every other record still reads."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    pos, records_seen = 0, -1
    while True:
        header = _payload_offsets(pos, _CHUNK_HEADER)
        if header[-1] >= len(data):
            raise ValueError(f"{path} has no record {index}")
        fields = bytes(data[p] for p in header)
        size, type_and_count = int.from_bytes(fields[8:16], "little"), int.from_bytes(fields[24:32], "little")
        if chr(type_and_count & 0xFF) == "r" and type_and_count >> 8 == 1:
            records_seen += 1
            if records_seen == index:
                if size < nbytes:
                    raise ValueError(f"record {index} of {path} has a chunk of {size} bytes, fewer than {nbytes}")
                for p in _payload_offsets(header[0], _CHUNK_HEADER + (size + nbytes) // 2)[-nbytes:]:
                    data[p] ^= 0xFF
                with open(path, "wb") as f:
                    f.write(data)
                return
        # The next chunk starts after this one's data, and at least one byte per record further on.
        pos = max(_payload_offsets(header[0], _CHUNK_HEADER + size + 1)[-1], header[0] + (type_and_count >> 8))
