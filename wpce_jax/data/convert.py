"""Converts webdataset tar shards (img2dataset / pixparse cc12m-wds) into a record dataset (records.py).

    python -m wpce_jax.data.convert --input 'DIR/*.tar' --output OUT --num_shards N [--workers K]
        [--max_pixels P] [--max_image_side S] [--jpeg_quality Q] [--labels_key KEY [--num_labels K]]

Two phases, both parallel over worker processes and both resumable:
 1. Per input tar (sorted by path): stream its members from memory (nothing is extracted; member names never
    reach the file system), group them by webdataset key (name up to the first dot of the file name), keep a
    sample only when it has an image that decodes and a caption that is non-empty after whitespace
    normalisation (a ".cls" member, when present, becomes the record's integer "label"; one that is not a
    non-negative integer drops the sample as "bad_label"; with --labels_key KEY the sample's ".json" member's KEY,
    an int or a list of ints, becomes the record's label tuple "labels" (the ranking mode's relevance), and a
    sample without it is dropped as "missing_labels", one whose value is not ints as "bad_labels", one whose tuple
    has another length than K as "labels_length"); write the kept records, in tar order, to OUT/_staging/input-IIIII.array_record with a JSON
    sidecar (counts, drop reasons, record sizes, damage). A truncated or unreadable tar keeps every sample
    read before the damage and reports it.
 2. Split the concatenation of all staged records (input order, then tar order: deterministic) into N
    contiguous shards of near-equal bytes, write each under a temporary name, rename it when complete, then
    write OUT/manifest.json and remove the staging directory.
Re-running with the same arguments resumes: staged inputs and output shards whose final files exist with the
expected record count are kept, everything else is redone. Different inputs or options on an existing output
directory are refused rather than mixed.
K, the length every label tuple must have, is --num_labels, or else the length of the first valid tuple in the
first input (sorted by path) that has one, found by reading that input up to it before phase 1 (so that every
worker applies the same K and the output does not depend on which tar is read first).
When no sample at all survives (every one dropped, or the tars hold none), nothing is written: the staging
directory is removed (and OUT too when that leaves it empty), convert() raises EmptyOutputError, and the command
prints one line naming the inputs and the drop counts on stderr and exits with status 1.
"""

from __future__ import annotations

import argparse
import bz2
import glob
import gzip
import hashlib
import json
import lzma
import multiprocessing as mp
import os
import posixpath
import queue
import shutil
import sys
import tarfile
import time
import zlib
from collections import Counter
from typing import Any, Callable, Iterator

import numpy as np
from array_record.python import array_record_module

from wpce_jax.data import records
from wpce_jax.data.image_check import (DEFAULT_JPEG_QUALITY, DEFAULT_MAX_IMAGE_SIDE, DEFAULT_MAX_PIXELS, Drop,
                                       check_image)
from wpce_jax.errors import ConfigError, MissingInputError, UserError
from wpce_jax.progress import Progress

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # first one present is the sample's image
CAPTION_EXT = "txt"
META_EXT = "json"
LABEL_EXT = "cls"  # webdataset's class label: a decimal integer (labelled sets such as ImageNet shards)
STAGING = "_staging"
_INT32 = (-2 ** 31, 2 ** 31 - 1)  # label tuples are int32 in the batches (pipeline.py)
_PROGRESS_EVERY = 64  # samples between progress messages from a worker
_TAIL = 1 << 16  # bytes of the tar stream kept to check the end-of-archive block


class EmptyOutputError(UserError, RuntimeError):
    """No input sample survived the conversion: there is no dataset to write."""


# ------------------------------------------------------------------------------------------ tar reading

class _TailReader:
    """File wrapper that remembers the last _TAIL bytes read (to inspect the block where tarfile stopped)."""

    def __init__(self, f, raw):
        self.f, self.raw = f, raw
        self.pos = 0
        self.tail = bytearray()

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.pos += len(b)
        self.tail += b
        if len(self.tail) > _TAIL:
            del self.tail[:-_TAIL]
        return b

    def block_at(self, offset: int, size: int = 512) -> bytes | None:
        start = offset - (self.pos - len(self.tail))
        return bytes(self.tail[start:start + size]) if start >= 0 else None

    def raw_position(self) -> int:
        return self.raw.tell()


def _open_decompressed(raw):
    magic = raw.read(6)
    raw.seek(0)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw)
    if magic[:3] == b"BZh":
        return bz2.BZ2File(raw)
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(raw)
    return raw


def _unsafe(name: str) -> bool:
    """Names that would escape or confuse a directory if anyone ever extracted them."""
    if not name or "\x00" in name or "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return True
    return ".." in name.split("/")


def _split_key(name: str) -> tuple[str, str]:
    """webdataset convention: "dir/abc.def.jpg" -> key "dir/abc", extension "def.jpg" (lower-cased)."""
    dirname, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(dirname, stem) if dirname else stem, ext.lower()


def iter_tar_members(path: str, on_bytes: Callable[[int], None] | None = None
                     ) -> Iterator[tuple[str, Any]]:
    """Yields ("file", (name, bytes)), ("drop", reason) per skipped member, and at most one
    ("damage", message) when the archive is truncated or unreadable (after everything before it)."""
    with open(path, "rb") as raw:
        reader = _TailReader(_open_decompressed(raw), raw)
        last_member = None
        try:
            tf = tarfile.open(fileobj=reader, mode="r|")
            for member in tf:
                if on_bytes is not None:
                    on_bytes(reader.raw_position())
                if member.isdir():
                    continue
                if not member.isfile():  # links, devices, fifos: never data for a sample
                    yield "drop", "non_regular_member"
                    continue
                if _unsafe(member.name):
                    yield "drop", "unsafe_member_name"
                    continue
                f = tf.extractfile(member)
                data = f.read() if f is not None else b""
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member {member.name!r} holds {len(data)} of {member.size} bytes")
                last_member = member.name
                yield "file", (member.name, data)
            # tarfile stops silently at a truncated header; a complete archive stops at a zero block.
            end = reader.block_at(tf.offset)
            if end is None or len(end) < 512 or any(end):
                yield "damage", (f"archive ends without an end-of-archive block at byte {tf.offset} "
                                 f"(truncated or corrupt header) after member {last_member!r}")
        except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as e:
            yield "damage", f"{type(e).__name__}: {e} (after member {last_member!r})"


def normalize_caption(raw: bytes) -> str:
    """UTF-8 with replacement characters for bad bytes; whitespace runs collapsed to one space; stripped."""
    return " ".join(raw.decode("utf-8", errors="replace").replace("\ufeff", "").split())


def _read_json(data: bytes | None) -> Any:
    """The parsed ".json" member, or None when there is none or it does not parse."""
    if data is None:
        return None
    try:
        return json.loads(data.decode("utf-8", errors="replace"))
    except json.JSONDecodeError:
        return None


def label_tuple(value: Any) -> list[int] | None:
    """A webdataset json value as a label tuple: an int -> [int], a non-empty list of ints -> itself; None for
    anything else (bools, floats, strings, nested lists, ints outside int32)."""
    items = [value] if not isinstance(value, list) else value
    ok = items and all(isinstance(v, int) and not isinstance(v, bool) and _INT32[0] <= v <= _INT32[1]
                       for v in items)
    return list(items) if ok else None


def first_label_length(inputs: list[str], labels_key: str) -> int | None:
    """The length of the first valid label tuple under labels_key in the inputs' json members, in input order and
    member order (the K of --labels_key when --num_labels is not given); None when no sample has one."""
    for path in inputs:
        for kind, value in iter_tar_members(path):
            if kind != "file" or _split_key(value[0])[1] != META_EXT:
                continue
            info = _read_json(value[1])
            if isinstance(info, dict) and labels_key in info:
                labels = label_tuple(info[labels_key])
                if labels is not None:
                    return len(labels)
    return None


def _sample_record(key: str, files: dict[str, bytes], source: str, opts: dict[str, Any]
                   ) -> tuple[bytes, str | None]:
    """One grouped sample -> (record bytes, re-encode reason or None); raises Drop."""
    image_ext = next((e for e in IMAGE_EXTS if e in files), None)
    if image_ext is None:
        raise Drop("missing_image")
    if CAPTION_EXT not in files:
        raise Drop("missing_caption")
    caption = normalize_caption(files[CAPTION_EXT])
    if not caption:
        raise Drop("empty_caption")
    jpeg, width, height, why = check_image(files[image_ext], max_pixels=opts["max_pixels"],
                                           max_image_side=opts["max_image_side"],
                                           jpeg_quality=opts["jpeg_quality"])
    meta: dict[str, Any] = {"key": key, "source": source, "width": width, "height": height}
    info = _read_json(files.get(META_EXT))  # provenance is optional; a broken json does not make the sample bad
    if opts.get("labels_key") is not None:  # ... unless it should hold the label tuple
        if not isinstance(info, dict) or opts["labels_key"] not in info:
            raise Drop("missing_labels")
        labels = label_tuple(info[opts["labels_key"]])
        if labels is None:
            raise Drop("bad_labels")
        if len(labels) != opts["num_labels"]:  # relevance compares tuples position by position
            raise Drop("labels_length")
        meta["labels"] = labels
    if LABEL_EXT in files:
        text = files[LABEL_EXT].decode("utf-8", errors="replace").strip()
        if not text.isdigit():  # a broken label would silently join the wrong class: drop the sample
            raise Drop("bad_label")
        meta["label"] = int(text)
    if isinstance(info, dict):
        for k in ("url", "sha256"):
            if isinstance(info.get(k), str) and info[k]:
                meta[k] = info[k]
    return records.encode_record(jpeg, caption, **meta), why


def iter_tar_records(path: str, opts: dict[str, Any], stats: dict[str, Any],
                     on_progress: Callable[[int, int], None] | None = None) -> Iterator[bytes]:
    """Records of one tar, in member order; fills stats ("kept", "dropped", "reencoded", "damage")."""
    source = os.path.basename(path)
    dropped, reencoded = Counter(), Counter()
    seen: set[str] = set()
    pending_key, pending = None, {}
    position = [0]
    kept = 0

    def flush(after_damage: bool = False):
        nonlocal kept
        if pending_key is None:
            return None
        if pending_key in seen:
            dropped["duplicate_key"] += 1  # same key again after other keys: which pair belongs together?
            return None
        seen.add(pending_key)
        try:
            record, why = _sample_record(pending_key, pending, source, opts)
        except Drop as d:
            # A sample cut short by the damage lacks members through no fault of its own: say so.
            incomplete = after_damage and d.reason in ("missing_image", "missing_caption")
            dropped["incomplete_at_damage" if incomplete else d.reason] += 1
            return None
        if why:
            reencoded[why] += 1
        kept += 1
        return record

    def bytes_seen(pos):
        position[0] = pos

    n_since = 0
    for kind, value in iter_tar_members(path, bytes_seen):
        if kind == "drop":
            dropped[value] += 1
            continue
        if kind == "damage":
            stats["damage"] = value
            continue
        name, data = value
        key, ext = _split_key(name)
        if key != pending_key:
            record = flush()
            if record is not None:
                yield record
            pending_key, pending = key, {}
            n_since += 1
            if on_progress is not None and n_since >= _PROGRESS_EVERY:
                on_progress(n_since, position[0])
                n_since = 0
        pending[ext] = data
    # The last sample: each of its members was read in full, so it is kept if it has an image and a caption
    # even when the archive is damaged after it.
    record = flush(after_damage=stats.get("damage") is not None)
    if record is not None:
        yield record
    if on_progress is not None:
        on_progress(n_since, os.path.getsize(path))
    stats.update(kept=kept, dropped=dict(dropped), reencoded=dict(reencoded))


# ------------------------------------------------------------------------------------------ phases

def _input_fingerprint(path: str) -> dict[str, Any]:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _staged_paths(out: str, i: int) -> tuple[str, str]:
    base = os.path.join(out, STAGING, f"input-{i:05d}")
    return base + ".array_record", base + ".json"


def _staged_ok(out: str, i: int, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    data_path, side_path = _staged_paths(out, i)
    try:
        with open(side_path) as f:
            side = json.load(f)
        if side.get("input") != fingerprint or records.count_records(data_path) != side["kept"]:
            return None
        side["sizes"] = np.asarray(side["sizes"], dtype=np.int64)
        return side
    except (OSError, ValueError, KeyError):
        return None


_worker_queue = None


def _worker_init(q):
    global _worker_queue
    _worker_queue = q


def _stage_input(task: tuple[int, str, str, dict[str, Any]]) -> dict[str, Any]:
    """Phase 1 for one input tar; runs in a worker (progress through the queue) or in the main process."""
    i, path, out, opts = task
    data_path, side_path = _staged_paths(out, i)
    stats: dict[str, Any] = {"damage": None}
    sizes: list[int] = []
    reported = [0]

    def on_progress(samples, pos):
        if _worker_queue is not None:
            _worker_queue.put((samples, pos - reported[0]))
        elif opts.get("_progress") is not None:
            opts["_progress"](samples, pos - reported[0])
        reported[0] = pos

    def sized(it):
        for r in it:
            sizes.append(len(r))
            yield r

    clean_opts = {k: v for k, v in opts.items() if not k.startswith("_")}
    records.write_shard(data_path, sized(iter_tar_records(path, clean_opts, stats, on_progress)))
    side = {"index": i, "input": _input_fingerprint(path), "kept": stats["kept"], "dropped": stats["dropped"],
            "reencoded": stats["reencoded"], "damage": stats["damage"], "sizes": sizes}
    tmp = side_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(side, f)
    os.replace(tmp, side_path)  # the sidecar appears last: its presence means the staged file is complete
    return side


def _write_output(task: tuple[int, int, str, list[tuple[str, int, int]]]) -> tuple[int, int, int]:
    """Phase 2 for one output shard: copies record ranges [(staged file, start, stop)] into it."""
    j, num_shards, out, pieces = task

    def gen():
        for path, start, stop in pieces:
            reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:16777216")
            try:
                for s in range(start, stop, 1024):  # blocks: bounded memory, few calls
                    yield from reader.read(s, min(s + 1024, stop))
                    if _worker_queue is not None:
                        _worker_queue.put((min(1024, stop - s), 0))
            finally:
                reader.close()

    count, nbytes = records.write_shard(os.path.join(out, records.shard_name(j, num_shards)), gen())
    return j, count, nbytes


class _Runner:
    """Maps a function over tasks inline (workers <= 1) or in one pool of worker processes that serves both
    phases, forwarding the workers' progress messages. Results come back in task order so that callbacks
    (and a test's interruption) are deterministic."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = None
        self.queue = None

    def inline(self, num_tasks: int) -> bool:
        return self.workers <= 1 or num_tasks <= 1

    def run(self, fn, tasks, on_result, on_message):
        if self.inline(len(tasks)):
            for t in tasks:
                on_result(fn(t))
            return
        if self.pool is None:
            ctx = mp.get_context("spawn")  # no fork of a possibly threaded parent (PIL, grain, JAX users)
            self.queue = ctx.Queue()
            self.pool = ctx.Pool(self.workers, initializer=_worker_init, initargs=(self.queue,))
        pending = [self.pool.apply_async(fn, (t,)) for t in tasks]
        for res in pending:
            while True:
                try:
                    on_message(*self.queue.get(timeout=0.2))
                except queue.Empty:
                    pass
                if res.ready():
                    break
            on_result(res.get())
        while True:
            try:
                on_message(*self.queue.get_nowait())
            except queue.Empty:
                break

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


def convert(
    inputs: list[str],
    output: str,
    num_shards: int,
    *,
    workers: int = 1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_image_side: int | None = DEFAULT_MAX_IMAGE_SIDE,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    labels_key: str | None = None,
    num_labels: int | None = None,
    show_progress: bool = True,
    on_input_done: Callable[[int], None] | None = None,
    on_shard_done: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Converts tar shards to OUT (records.py format). Returns the manifest written to OUT/manifest.json.

    labels_key / num_labels: keep the label tuple of each sample's json (module docstring; num_labels None: the
    length of the first valid tuple). on_input_done(i) / on_shard_done(j) are called in the main process after input i is staged / output
    shard j is written (progress hooks; an exception there interrupts the conversion, which a re-run resumes).
    """
    if num_shards < 1:
        raise ConfigError(f"--num_shards must be >= 1, got {num_shards}")
    if not inputs:
        raise ConfigError("no input tar files given")
    for p in inputs:
        if not os.path.isfile(p):
            raise MissingInputError(f"{p}: input tar not found")
    inputs = sorted(os.path.abspath(p) for p in inputs)
    opts = {"max_pixels": int(max_pixels), "max_image_side": max_image_side, "jpeg_quality": int(jpeg_quality)}
    if labels_key is not None:
        if not labels_key:
            raise ConfigError("--labels_key must name a key of the samples' json")
        if num_labels is None:
            num_labels = first_label_length(inputs, labels_key)
        elif isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ConfigError(f"--num_labels must be an int >= 1, got {num_labels!r}")
        # None (no sample has a valid tuple): every sample is dropped, and the run ends in EmptyOutputError.
        opts.update(labels_key=labels_key, num_labels=num_labels)
    elif num_labels is not None:
        raise ConfigError("--num_labels is the length of --labels_key's tuples; give --labels_key too")
    fingerprints = [_input_fingerprint(p) for p in inputs]
    run = {"inputs": fingerprints, "options": opts, "num_shards": num_shards,
           "schema_version": records.SCHEMA_VERSION}
    run_id = hashlib.sha256(json.dumps(run, sort_keys=True).encode()).hexdigest()[:16]
    done = _existing_complete(output, run_id, num_shards)
    if done is not None:
        if show_progress:
            print(f"{output}: already complete ({done['num_examples']:,} examples in {num_shards} verified "
                  f"shards); nothing to do", file=sys.stderr)
        return done
    os.makedirs(os.path.join(output, STAGING), exist_ok=True)
    run_path = os.path.join(output, STAGING, "run.json")
    if os.path.isfile(run_path):
        with open(run_path) as f:
            previous = json.load(f)
        if previous.get("run_id") != run_id:
            raise ConfigError(
                f"{output} holds an unfinished conversion with other inputs or options (run {previous.get('run_id')}"
                f", this one {run_id}); use a new --output or delete {output}")
    else:
        with open(run_path, "w") as f:
            json.dump(dict(run, run_id=run_id), f, indent=1)

    t0 = time.monotonic()
    # ---- phase 1: stage inputs
    sides: list[dict[str, Any] | None] = [_staged_ok(output, i, fp) for i, fp in enumerate(fingerprints)]
    todo = [i for i, s in enumerate(sides) if s is None]
    total_bytes = sum(fp["size"] for i, fp in enumerate(fingerprints) if i in set(todo)) or 1
    prog = Progress(f"reading {len(todo)}/{len(inputs)} tar files", enabled=show_progress)
    done_bytes = [0]

    def on_message(samples, nbytes):
        done_bytes[0] += nbytes
        prog.update(samples, done_bytes[0] / total_bytes)

    def on_staged(side):
        i = side["index"]
        side["sizes"] = np.asarray(side["sizes"], dtype=np.int64)
        sides[i] = side
        if side["damage"] and show_progress:
            print(f"\nwarning: {inputs[i]}: {side['damage']}; kept the {side['kept']} samples before it",
                  file=sys.stderr)
        if on_input_done is not None:
            on_input_done(i)

    runner = _Runner(workers)
    try:
        # Inline, progress goes straight to the callback; in workers, through the queue.
        tasks = [(i, inputs[i], output, dict(opts, _progress=on_message if runner.inline(len(todo)) else None))
                 for i in todo]
        runner.run(_stage_input, tasks, on_staged, on_message)
        prog.close()
        t1 = time.monotonic()
        if sum(side["kept"] for side in sides) == 0:
            _remove_empty_output(output)
            raise EmptyOutputError(_empty_message(inputs, sides, output))
        manifest = _write_outputs(output, inputs=inputs, num_shards=num_shards, fingerprints=fingerprints,
                                  sides=sides, opts=opts, run_id=run_id, runner=runner, show_progress=show_progress,
                                  on_shard_done=on_shard_done)
    finally:
        runner.close()
    if show_progress:
        _summary(manifest, prog.count, t1 - t0, time.monotonic() - t1)
    return records.read_manifest(output)


def _write_outputs(output, *, inputs, num_shards, fingerprints, sides, opts, run_id, runner, show_progress,
                   on_shard_done):
    """Phase 2: balanced output shards from the staged inputs, then the manifest (returned). Keyword-only: ten
    arguments, several of the same type, that a positional call could swap silently."""
    # int64 arrays, not lists: CC12M has 12M sizes, which as Python ints would take ~0.4 GB.
    sizes = np.concatenate([np.asarray(side["sizes"], dtype=np.int64) for side in sides])
    plan = records.plan_shards(sizes, num_shards)
    starts, acc = [], 0
    for side in sides:
        starts.append(acc)
        acc += side["kept"]
    wtasks, expected = [], []
    for j, (a, b) in enumerate(plan):
        expected.append(b - a)
        final = os.path.join(output, records.shard_name(j, num_shards))
        if os.path.isfile(final):
            try:
                if records.count_records(final) == b - a:
                    continue  # finished by an earlier run: verified, kept
            except OSError:
                pass
        pieces = []
        for i, side in enumerate(sides):
            lo, hi = max(a, starts[i]), min(b, starts[i] + side["kept"])
            if lo < hi:
                pieces.append((_staged_paths(output, i)[0], lo - starts[i], hi - starts[i]))
        wtasks.append((j, num_shards, output, pieces))
    w_inline = runner.inline(len(wtasks))
    wprog = Progress(f"writing {len(wtasks)}/{num_shards} shards", unit="records", enabled=show_progress)
    to_write = sum(expected[t[0]] for t in wtasks) or 1

    def on_written(result):
        j, count, _ = result
        if count != expected[j]:
            raise RuntimeError(f"shard {j}: wrote {count} records, planned {expected[j]}")
        if w_inline:  # no worker messages: count the shard here
            wprog.update(count, None)
        wprog.update(0, wprog.count / to_write)
        if on_shard_done is not None:
            on_shard_done(j)

    runner.run(_write_output, wtasks, on_written, lambda n, _: wprog.update(n, wprog.count / to_write))
    wprog.close()

    dropped, reencoded = Counter(), Counter()
    damaged = []
    for i, side in enumerate(sides):
        dropped.update(side["dropped"])
        reencoded.update(side["reencoded"])
        if side["damage"]:
            damaged.append({"input": inputs[i], "error": side["damage"], "kept_before_damage": side["kept"]})
    shards = []
    for j in range(num_shards):
        name = records.shard_name(j, num_shards)
        a, b = plan[j]
        shards.append({"path": name, "num_examples": b - a, "num_bytes": int(sizes[a:b].sum())})
    manifest = {
        "num_examples": int(len(sizes)),
        "dropped": dict(sorted(dropped.items())),
        "reencoded": dict(sorted(reencoded.items())),
        "shards": shards,
        "inputs": [dict(fp, kept=side["kept"]) for fp, side in zip(fingerprints, sides)],
        "damaged_inputs": damaged,
        "options": opts,
        "run_id": run_id,
        "converter": "wpce_jax.data.convert",
    }
    records.write_manifest(output, manifest)
    shutil.rmtree(os.path.join(output, STAGING), ignore_errors=True)
    return manifest


def _empty_message(inputs: list[str], sides: list[dict[str, Any]], output: str) -> str:
    """One line: which inputs, why every sample went, what was (not) written."""
    shown = ", ".join(inputs) if len(inputs) <= 4 else f"{', '.join(inputs[:3])}, ..., {inputs[-1]}"
    dropped = Counter()
    for side in sides:
        dropped.update(side["dropped"])
    drops = ", ".join(f"{reason} {count:,}" for reason, count in sorted(dropped.items())) or "none"
    damaged = sum(1 for side in sides if side["damage"])
    return (f"no example kept from {len(inputs)} input tar file(s) ({shown}): dropped samples: {drops}"
            + (f"; {damaged} input(s) damaged or unreadable" if damaged else "")
            + (" (the inputs hold no samples)" if not dropped and not damaged else "")
            + f"; nothing written to {output}")


def _remove_empty_output(output: str) -> None:
    """Removes what a conversion without any example left: the staging directory, then OUT if empty."""
    shutil.rmtree(os.path.join(output, STAGING), ignore_errors=True)
    try:
        os.rmdir(output)  # only when empty: never anything the user put there
    except OSError:
        pass


def _existing_complete(output: str, run_id: str, num_shards: int) -> dict[str, Any] | None:
    """The manifest of a finished conversion of the same run, with every shard verified; else None."""
    try:
        manifest = records.read_manifest(output)
    except records.ManifestError:
        return None
    if manifest.get("run_id") != run_id:
        raise ConfigError(f"{output} already holds a finished conversion of other inputs or options "
                          f"(run {manifest.get('run_id')}, this one {run_id}); use a new --output")
    if not manifest.get("num_examples"):
        # An empty dataset (written by an older converter) is no finished conversion: redo it, which fails.
        os.remove(os.path.join(output, records.MANIFEST_NAME))
        return None
    for s in manifest["shards"]:
        try:
            if records.count_records(os.path.join(output, s["path"])) != s["num_examples"]:
                break
        except OSError:
            break
    else:
        return manifest
    # A shard went bad after completion: forget the manifest and redo what is missing.
    os.remove(os.path.join(output, records.MANIFEST_NAME))
    return None


def _summary(manifest: dict[str, Any], samples_seen: int, t_read: float, t_write: float) -> None:
    n = manifest["num_examples"]
    lines = [f"converted {n:,} examples into {len(manifest['shards'])} shards "
             f"(read {samples_seen:,} samples in {t_read:.1f}s: {samples_seen / max(t_read, 1e-9):,.1f} samples/s; "
             f"wrote shards in {t_write:.1f}s)"]
    for reason, count in manifest["dropped"].items():
        lines.append(f"  dropped {count:,}: {reason}")
    for reason, count in manifest["reencoded"].items():
        lines.append(f"  re-encoded {count:,}: {reason}")
    for d in manifest["damaged_inputs"]:
        lines.append(f"  damaged input {d['input']}: {d['error']} (kept {d['kept_before_damage']} before it)")
    print("\n".join(lines), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, action="append",
                   help="glob of input tar shards (quote it); may be given several times")
    p.add_argument("--output", required=True, help="output dataset directory")
    p.add_argument("--num_shards", type=int, required=True, help="number of ArrayRecord output files")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    p.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="drop images with more pixels than this (decompression bombs)")
    p.add_argument("--max_image_side", type=int, default=DEFAULT_MAX_IMAGE_SIDE,
                   help="re-encode images with a longer side than this down to it; 0 keeps every size")
    p.add_argument("--jpeg_quality", type=int, default=DEFAULT_JPEG_QUALITY, help="quality of re-encoded JPEGs")
    p.add_argument("--labels_key", default=None,
                   help="keep the label tuple in each sample's .json under this key (an int or a list of ints) as "
                        "the record's 'labels'; samples without one are dropped")
    p.add_argument("--num_labels", type=int, default=None,
                   help="with --labels_key: the tuples' length (default: that of the first sample's tuple)")
    args = p.parse_args(argv)
    inputs = sorted({f for pattern in args.input for f in glob.glob(pattern)})
    if not inputs:
        p.error(f"--input {args.input}: no files match")
    try:
        convert(inputs, args.output, args.num_shards, workers=args.workers, max_pixels=args.max_pixels,
                max_image_side=args.max_image_side or None, jpeg_quality=args.jpeg_quality,
                labels_key=args.labels_key, num_labels=args.num_labels)
    except UserError as e:  # e.g. EmptyOutputError, a missing input, an --output of another conversion
        print(f"error: {e}", file=sys.stderr)  # the progress display has ended its line
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
