"""The image-caption record format and the one writer of record datasets.

Record schema, version 1 (stable; readable with any ArrayRecord reader and a JSON parser, no TensorFlow,
never pickle):

    offset  size  content
    0       4     magic b"WPCE"
    4       1     schema version, uint8 (currently 1)
    5       4     header length H, uint32 little-endian
    9       H     header: UTF-8 JSON object (keys sorted, so the same inputs give the same bytes)
    9 + H   rest  image: a complete baseline/progressive JPEG file (RGB), exactly as a decoder wants it

Header keys:
    "caption"  str, whitespace-normalised, non-empty                                      (always)
    "key"      str, the sample's key in its source (webdataset key, or dataset index)      (always)
    "source"   str, the source shard's file name (or the built-in dataset's name)          (always)
    "width", "height"  int, pixel size of the stored JPEG                                  (always)
    "url"      str, the image's origin URL, when the source metadata had one               (optional)
    "sha256"   str, hex digest of the *original* downloaded image, when the source had one (optional)
    "label"    int, class index: labelled built-in datasets, or a webdataset ".cls" member    (optional)
    "labels"   list of K ints, a label tuple (the ranking mode's graded relevance, relevance.py) (optional)
Readers must ignore header keys they do not know, so adding an optional key does not change the version.

A dataset directory holds ``N`` ArrayRecord files written with ``group_size:1`` (so every record is one
random-access read) and ``manifest.json``:

    {"format": "wpce_jax.records", "schema_version": 1, "num_examples": int,
     "shards": [{"path": "data-00000-of-00004.array_record", "num_examples": int, "num_bytes": int}, ...],
     "dropped": {reason: count}, "inputs": [...], ...producer-specific keys}

Shard paths are relative to the manifest's directory. Every file is written under a temporary name and
renamed when complete, so a file with a final name is never partial.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import struct
from typing import Any, Iterable, Sequence

import numpy as np
from array_record.python import array_record_module
from etils import epath

from wpce_jax.errors import UserError

MAGIC = b"WPCE"
SCHEMA_VERSION = 1
FORMAT_NAME = "wpce_jax.records"
MANIFEST_NAME = "manifest.json"
# One record per chunk: random access reads exactly one record, which a global shuffle needs.
WRITER_OPTIONS = "group_size:1"
_PREFIX = struct.Struct("<4sBI")
_RESERVED_KEYS = ("image", "caption")


class RecordError(ValueError):
    """A byte string is not a record of this schema (wrong magic, version or truncated)."""


def encode_record(image_bytes: bytes, caption: str, **meta: Any) -> bytes:
    """Packs one sample into the schema above.

    Args:
      image_bytes: a complete JPEG file.
      caption: the text; must be a non-empty str.
      **meta: JSON-serialisable header fields (key, source, url, sha256, label, width, height, ...).
    Returns:
      the record bytes.
    """
    if not isinstance(caption, str) or not caption:
        raise ValueError(f"caption must be a non-empty str, got {caption!r}")
    if not isinstance(image_bytes, (bytes, bytearray, memoryview)) or len(image_bytes) == 0:
        raise ValueError("image_bytes must be non-empty bytes")
    for k in _RESERVED_KEYS:
        if k in meta:
            raise ValueError(f"meta key {k!r} is reserved")
    header = dict(meta, caption=caption)
    header_bytes = json.dumps(header, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return _PREFIX.pack(MAGIC, SCHEMA_VERSION, len(header_bytes)) + header_bytes + bytes(image_bytes)


def decode_header(b: bytes) -> tuple[dict[str, Any], int]:
    """Returns (header dict, offset of the image bytes) without copying the image."""
    if len(b) < _PREFIX.size:
        raise RecordError(f"record of {len(b)} bytes is shorter than the {_PREFIX.size}-byte prefix")
    magic, version, header_len = _PREFIX.unpack_from(b, 0)
    if magic != MAGIC:
        raise RecordError(f"record magic is {magic!r}, expected {MAGIC!r}")
    if version != SCHEMA_VERSION:
        raise RecordError(f"record schema version is {version}, this reader understands {SCHEMA_VERSION}")
    start = _PREFIX.size
    end = start + header_len
    if end > len(b):
        raise RecordError(f"record header claims {header_len} bytes but only {len(b) - start} follow")
    header = json.loads(bytes(b[start:end]).decode("utf-8"))
    return header, end


def decode_record(b: bytes) -> dict[str, Any]:
    """Inverse of encode_record: {"image": JPEG bytes, "caption": str, **meta}."""
    header, offset = decode_header(b)
    header["image"] = bytes(b[offset:])
    return header


# --------------------------------------------------------------------------------------------- shard plan

def shard_name(index: int, num_shards: int) -> str:
    return f"data-{index:05d}-of-{num_shards:05d}.array_record"


def plan_shards(sizes: Sequence[int], num_shards: int) -> list[tuple[int, int]]:
    """Splits records 0..len(sizes) into ``num_shards`` contiguous ranges of near-equal total bytes.

    Contiguous ranges keep the input order inside every shard (evaluation reads in that order); cutting at
    the cumulative-bytes quantiles makes every shard within one record of the mean size.

    Returns:
      [(start, stop)] per shard, covering every index once, in order. Shards may be empty only when there
      are fewer records than shards.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    n = len(sizes)
    if n == 0:
        return [(0, 0)] * num_shards
    cum = np.cumsum(np.asarray(sizes, dtype=np.int64))
    total = int(cum[-1])
    bounds = [0]
    for j in range(1, num_shards):
        target = total * j / num_shards
        # Records [0, b) hold cum[b-1] bytes: take whichever of the two cuts around the target is closer.
        i = int(np.searchsorted(cum, target, side="left"))
        above = min(i + 1, n)
        below = i
        b = below if below > 0 and abs(cum[below - 1] - target) <= abs(cum[above - 1] - target) else above
        if n >= num_shards:  # every shard gets at least one record
            b = min(max(b, bounds[-1] + 1), n - (num_shards - j))
        else:
            b = min(max(b, bounds[-1]), n)
        bounds.append(b)
    bounds.append(n)
    return [(bounds[i], bounds[i + 1]) for i in range(num_shards)]


# --------------------------------------------------------------------------------------------- writing

def write_shard(path: str, records: Iterable[bytes]) -> tuple[int, int]:
    """Writes records to one ArrayRecord file at ``path`` atomically (temporary name, then rename).

    Returns:
      (number of records, total record bytes).
    """
    tmp = path + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)  # left over from an interrupted run: never append to a partial file
    writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
    count = nbytes = 0
    try:
        for r in records:
            writer.write(r)
            count += 1
            nbytes += len(r)
    finally:
        writer.close()
    os.replace(tmp, path)
    return count, nbytes


class UnreadableShardError(UserError, OSError):
    """An ArrayRecord file that does not open (truncated, overwritten, not an ArrayRecord file)."""


def count_records(path: str) -> int:
    """Number of records in one ArrayRecord file (reads its footer only); raises UnreadableShardError naming the
    file when it does not open."""
    reason = ""
    try:
        reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0")
        ok = reader.ok()
        n = int(reader.num_records()) if ok else 0
        try:
            reader.close()
        except Exception as e:  # noqa: BLE001 - the C++ reader says why it failed only here, as a bare RuntimeError
            ok, reason = False, str(e)
    except Exception as e:  # noqa: BLE001 - any failure to open means the same to the caller
        ok, reason = False, str(e)
    if not ok:
        raise UnreadableShardError(
            f"{path}: not a readable ArrayRecord file ({reason or 'truncated or damaged: its footer does not read'}); "
            f"restore it or re-run the converter")
    return n


def count_all(paths: Sequence[str]) -> list[int]:
    """count_records of every path, a few files at a time (each a footer read: cheap, but a latency on gs://);
    raises UnreadableShardError naming the first path, in order, that does not open."""
    if not paths:
        return []
    with concurrent.futures.ThreadPoolExecutor(min(16, len(paths))) as pool:
        return list(pool.map(count_records, paths))


def read_records(path: str, start: int = 0, stop: int | None = None) -> list[bytes]:
    """Records [start, stop) of one ArrayRecord file."""
    reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0")
    try:
        n = reader.num_records()
        stop = n if stop is None else min(stop, n)
        return list(reader.read(start, stop)) if stop > start else []
    finally:
        reader.close()


def write_manifest(out_dir: str, manifest: dict[str, Any]) -> str:
    """Writes OUT/manifest.json atomically, adding the format name and schema version."""
    manifest = dict(manifest, format=FORMAT_NAME, schema_version=SCHEMA_VERSION)
    for k in ("num_examples", "shards", "dropped", "inputs"):
        if k not in manifest:
            raise ValueError(f"manifest for {out_dir} lacks required key {k!r}")
    path = os.path.join(out_dir, MANIFEST_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return path


def write_dataset(
    records: Sequence[bytes],
    out_dir: str,
    num_shards: int,
    *,
    dropped: dict[str, int] | None = None,
    inputs: Sequence[Any] = (),
    **extra: Any,
) -> dict[str, Any]:
    """Writes in-memory records to ``num_shards`` balanced ArrayRecord files plus manifest.json.

    Used by the built-in datasets; the converter runs the same plan_shards/write_shard/write_manifest steps
    in worker processes over records too many to hold in memory.

    Returns:
      the manifest dict as written.
    """
    os.makedirs(out_dir, exist_ok=True)
    plan = plan_shards([len(r) for r in records], num_shards)
    shards = []
    for i, (start, stop) in enumerate(plan):
        name = shard_name(i, num_shards)
        count, nbytes = write_shard(os.path.join(out_dir, name), records[start:stop])
        shards.append({"path": name, "num_examples": count, "num_bytes": nbytes})
    manifest = dict(extra, num_examples=len(records), shards=shards, dropped=dict(dropped or {}),
                    inputs=list(inputs))
    write_manifest(out_dir, manifest)
    return dict(manifest, format=FORMAT_NAME, schema_version=SCHEMA_VERSION)


# --------------------------------------------------------------------------------------------- reading

class ManifestError(UserError, ValueError):
    """A dataset directory's manifest is missing, of another schema, or names missing shards."""


def read_manifest(data_dir: str, *, check_shards: bool = True) -> dict[str, Any]:
    """Loads and validates DIR/manifest.json (local or gs://); with check_shards, every listed shard must exist."""
    path = epath.Path(data_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(
            f"{path} not found: expected a dataset directory written by wpce_jax.data.convert (or a built-in "
            f"dataset builder) holding {MANIFEST_NAME} and its ArrayRecord shards")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from e
    if manifest.get("format") != FORMAT_NAME or manifest.get("schema_version") != SCHEMA_VERSION:
        raise ManifestError(
            f"{path}: format {manifest.get('format')!r} schema_version {manifest.get('schema_version')!r}; "
            f"expected format {FORMAT_NAME!r} schema_version {SCHEMA_VERSION} (re-run the converter)")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, dict) and "path" in s for s in shards):
        raise ManifestError(f"{path}: 'shards' must be a list of {{'path', 'num_examples'}} objects")
    if check_shards:
        for s in shards:
            p = epath.Path(data_dir) / s["path"]
            if not p.is_file():
                raise ManifestError(f"{p}: shard listed in {path} is missing")
    return manifest


def shard_paths(data_dir: str, manifest: dict[str, Any]) -> list[str]:
    """Absolute paths (or gs:// URIs) of the non-empty shards, in manifest order (the dataset's index order)."""
    root = epath.Path(data_dir).resolve() if "://" not in str(data_dir) else epath.Path(data_dir)
    return [os.fspath(root / s["path"]) for s in manifest["shards"]
            if s.get("num_examples", 1) > 0]
