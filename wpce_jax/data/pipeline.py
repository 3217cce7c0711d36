"""grain input pipeline over a converted record dataset (see records.py for the format).

Training is one global, index-addressed stream of examples, the same computation on every process (no
communication): global example position g = 0, 1, 2, ... and global batch k = positions [k B, (k + 1) B), where
B = batch_size * process_count.
    epoch e = g // (nb B), nb = floor(N / B) batches per epoch: a permutation of all N records seeded by
       (seed, e) (grain's index_shuffle: O(1) memory, O(1) per index), of which the first nb B positions are
       used (the < B left over differ from epoch to epoch); or, with samples_per_class, class_balanced.py's
       order of whole groups of one class
    -> process p of P takes rows [k B + p b, k B + (p + 1) b) of global batch k (b = batch_size), so the
       concatenation over processes of their k-th batches does not depend on P
    -> RandomResizedCrop (and the two-view augmentation) drawn from an RNG keyed by (seed, g) alone
    -> read, decode, crop, tokenize -> batches of b, images as uint8 pixels (normalised on the device,
       models/vit.py); a record that does not read or decode is replaced by a stand-in drawn from (seed, g)
       and flagged "skipped" (unreadable.py)
Global batch k is a function of (dataset, seed, B, k) and the augmentation settings only: the worker count, the
process count (for a fixed B) and where a run was interrupted change nothing. A run that has consumed `start_example` global examples (a multiple
of B; the trainer checkpoints step * B) resumes with make_train_dataset(data_dir, TrainDataOptions(...,
start_example=start_example)), which continues it exactly.
Evaluation (`make_eval_dataset`, any random-access source: records, TFDS, class folders, caption sets): process p
reads the contiguous block [p N / P, (p+1) N / P) in order, centre crops, keeps the last partial batch. With
padding every process instead yields the same number of full batches (what a multi-process jit step needs),
padded with copies of a real item and a "mask" that is False on them (and on images that do not decode).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Sequence

import grain
import numpy as np

from wpce_jax.data import image_ops, records, unreadable
from wpce_jax.data.class_balanced import ClassBalancedOrder
from wpce_jax.errors import DataError


def dataset_size(data_dir: str) -> int:
    """Number of records in a converted dataset directory (from its manifest)."""
    return int(records.read_manifest(data_dir)["num_examples"])


def augment_rng(seed: int, position: int) -> np.random.Generator:
    """The augmentation RNG of global example position g: Philox keyed by (seed, g), nothing else."""
    return np.random.Generator(np.random.Philox(key=((seed % 2**64) << 64) | int(position)))


@dataclasses.dataclass(frozen=True)
class _TrainExample(grain.transforms.Map):
    """(g, record index) -> {"image": uint8 [S, S, 3], "tokens": int32 [L], "label": int32 [], "skipped": bool []
    (True when the record did not read or decode and a stand-in took its place, unreadable.py)}; with
    `labels_length` also "labels" int32 [K], the record's label tuple (LabelTupleError, naming the shard and the
    record, when it has none or one of another length); with `views` also "image2": uint8 [S, S, 3]. One random
    crop, or two SimCLR views (image_ops.train_views), drawn from augment_rng(seed, g)."""

    source: Any
    shards: unreadable.ShardIndex
    tokenizer: Any
    image_size: int
    crop_scale: tuple[float, float]
    decoder: str
    seed: int
    views: image_ops.ViewAugment | None
    labels_length: int | None = None  # K: every record must carry a label tuple of K ints; None: not read
    resizer: str = image_ops.TRAIN_RESIZER

    def _images(self, g: int, data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        header, offset = records.decode_header(data)
        jpeg, rng = memoryview(data)[offset:].tobytes(), augment_rng(self.seed, g)
        if self.views is None:
            return header, {"image": image_ops.train_crop(jpeg, self.image_size, rng, self.crop_scale, self.decoder,
                                                          resizer=self.resizer)}
        first, second = image_ops.train_views(jpeg, self.image_size, rng, self.views, self.crop_scale, self.decoder,
                                              resizer=self.resizer)
        return header, {"image": first, "image2": second}

    def map(self, element: tuple[int, int]) -> dict[str, np.ndarray]:
        g, index = element
        # The record index travels with the data, so that a check below names the record actually used (a
        # stand-in's, when the original did not read or decode).
        (used, header, images), skipped = unreadable.read_or_stand_in(
            lambda i: (i, self.source[i]), lambda item: (item[0], *self._images(g, item[1])), index=index,
            position=g, seed=self.seed, shards=self.shards)
        example = dict(images, tokens=self.tokenizer([header["caption"]])[0],
                       label=np.int32(header.get("label", -1)), skipped=np.bool_(skipped))
        if self.labels_length is not None:
            # Checked here, outside read_or_stand_in: a missing tuple is the data's mistake, not a damaged record to
            # replace (and LabelTupleError is a ValueError, which it would catch).
            example["labels"] = label_tuple(header, self.labels_length, *self.shards.locate(used))
        return example


class LabelTupleError(DataError):
    """A training record without the label tuple ("labels") the run needs, or with one of another length or type."""


_LABELS_NEEDED = ("the ranking modes need a label tuple of the same length in every training record (header field "
                  "\"labels\": a list of ints, e.g. configs/digit_pairs.py's data, a converted set with --labels_key, "
                  "or tfds_to_records --labels_features)")


def label_tuple(header: dict, length: int, path: str, position: int) -> np.ndarray:
    """The record's "labels" as int32 [length], or LabelTupleError naming the record (`position` in shard `path`):
    the field is missing, not a list of ints, or of another length (relevance.py compares tuples position by
    position)."""
    where = f"{path}: training record {position}"
    if "labels" not in header:
        raise LabelTupleError(f"{where} has no \"labels\" field (the set's first record has one of length {length}); "
                              f"{_LABELS_NEEDED}")
    labels = header["labels"]
    if not isinstance(labels, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        raise LabelTupleError(f"{where} has \"labels\" {json.dumps(labels)[:100]}, not a list of ints; "
                              f"{_LABELS_NEEDED}")
    if len(labels) != length:
        raise LabelTupleError(f"{where} has \"labels\" of length {len(labels)} ({json.dumps(labels)[:100]}), "
                              f"the set's first record has length {length}; {_LABELS_NEEDED}")
    return np.asarray(labels, np.int32)


def _labels_length(source, shards: unreadable.ShardIndex) -> int:
    """K of a set whose records must carry label tuples: the length of the first record's tuple (the first that
    reads and decodes among the first unreadable.MAX_ATTEMPTS, so that a damaged record 0 is replaced as in the
    stream); LabelTupleError when that record has none (a set with none at all stops here)."""
    for index in range(min(unreadable.MAX_ATTEMPTS, len(source))):
        try:
            header = records.decode_header(source[index])[0]
        except unreadable.READ_ERRORS + unreadable.DECODE_ERRORS:
            continue
        labels = header.get("labels")
        if isinstance(labels, list) and labels:
            return len(labels)
        path, position = shards.locate(index)
        what = "has no \"labels\" field" if labels is None else f"has \"labels\" {json.dumps(labels)[:100]}"
        raise LabelTupleError(f"{path}: training record {position} {what}; {_LABELS_NEEDED}")
    raise unreadable.UnreadableDataError(
        f"{os.path.dirname(shards.paths[0])}: the first {unreadable.MAX_ATTEMPTS} records do not read or decode; the "
        f"dataset is mostly unreadable: re-run the converter")


@dataclasses.dataclass(frozen=True)
class _DecodeEval(grain.transforms.MapWithIndex):
    """A record (bytes) or an evaluation source's item ({"image": encoded bytes or uint8 [H, W, C], "label"})
    -> {"image": uint8 [S, S, 3] (resize + centre crop), "label": int32, "mask": bool, "corrupt": bool, "index":
    int32 (the item's index in the source, -1 for padding), and with a tokenizer "tokens"}. An image that does not
    decode becomes black with mask False and corrupt True, so an evaluation counts and skips it instead of
    stopping."""

    tokenizer: Any
    image_size: int
    decoder: str
    offset: int = 0    # source index of this dataset's first item
    real: bool = True  # False for the padding copies

    def map_with_index(self, index: int, element) -> dict[str, np.ndarray]:
        if isinstance(element, bytes):
            header, offset = records.decode_header(element)
            image, label = memoryview(element)[offset:].tobytes(), header.get("label", -1)
        else:
            header, image, label = element, element["image"], element.get("label", -1)
        try:
            pixels = image_ops.eval_crop(image, self.image_size, self.decoder)
            ok = True
        except unreadable.DECODE_ERRORS:  # a broken file
            pixels, ok = np.zeros((self.image_size, self.image_size, 3), np.uint8), False
        out = {"image": pixels, "label": np.int32(label), "mask": np.bool_(self.real and ok),
               "corrupt": np.bool_(self.real and not ok),
               "index": np.int32(self.offset + index if self.real else -1)}
        if self.tokenizer is not None:
            out["tokens"] = self.tokenizer([header["caption"]])[0]
        return out


@functools.lru_cache(maxsize=64)
def _epoch_seed(seed: int, epoch: int) -> int:
    """index_shuffle's 32-bit seed for one epoch, a hash of (seed, epoch) (not seed + epoch, which would give
    run `seed` and run `seed + 1` the same orders one epoch apart)."""
    return int(np.random.SeedSequence([seed % 2**32, epoch]).generate_state(1)[0])


class ShuffledOrder:
    """Global example position g -> record index for uniform sampling: epoch e = g // epoch_length is a
    permutation of the N records seeded by (seed, e), truncated to epoch_length = floor(N / B) * B positions.
    O(1) memory and per-index time (grain's index_shuffle), the same on every process."""

    def __init__(self, num_records: int, global_batch: int, *, seed: int):
        if num_records >= 2**32:
            raise ValueError(f"{num_records} records: index_shuffle handles fewer than 2**32")
        self.num_records, self.seed = num_records, seed
        self.batches_per_epoch = num_records // global_batch
        self.epoch_length = self.batches_per_epoch * global_batch

    def __getitem__(self, g: int) -> int:
        e, q = divmod(int(g), self.epoch_length)
        return grain.experimental.index_shuffle(q, max_index=self.num_records - 1, seed=_epoch_seed(self.seed, e),
                                                rounds=4)


class _ProcessStream:
    """Random-access source of one process's training stream: item i -> (g, record index), where i is the
    row i % b of this process's batch i // b, i.e. of global batch first_batch + i // b."""

    def __init__(self, order, batch_size: int, process_index: int, process_count: int, first_batch: int,
                 num_batches: int):
        self.order, self.batch_size, self.first_batch = order, batch_size, first_batch
        self.global_batch = batch_size * process_count
        self.offset = process_index * batch_size
        self.length = max(0, num_batches) * batch_size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[int, int]:
        j, row = divmod(int(i), self.batch_size)
        g = (self.first_batch + j) * self.global_batch + self.offset + row
        return g, self.order[g]


@dataclasses.dataclass(frozen=True)
class EvalDataOptions:
    """What make_eval_dataset builds from an evaluation source.

    image_size: output side S (centre crops). batch_size: per-process batch size b.
    process_index, process_count: this process's share (process p reads [p N / P, (p + 1) N / P) in order).
    worker_count, decoder, read_threads: as for training (TrainDataOptions).
    pad: every process yields ceil(ceil(N / P) / b) full batches (what a multi-process jit step needs), the
      missing rows copies of item 0 with "mask" False; otherwise the last batch is partial.
    tokenizer: when given, the batches carry the items' captions as "tokens".
    """
    image_size: int
    batch_size: int
    process_index: int = 0
    process_count: int = 1
    worker_count: int = 0
    decoder: str = image_ops.DEFAULT_DECODER
    read_threads: int | None = None
    pad: bool = True
    tokenizer: Any = None


def make_eval_dataset(source, options: EvalDataOptions) -> grain.IterDataset:
    """One pass over a random-access evaluation source, this process's contiguous share, centre crops.

    source: len() and [i] -> record bytes or {"image": encoded bytes or uint8 [H, W, C], "label": int}
      (wpce_jax.data.eval_sources).
    Returns batches {"image": uint8 [b, S, S, 3], "label": int32 [b], "mask": bool [b] (real and
    decodable), "corrupt": bool [b] (real but undecodable), "index" int32 [b] (position in the source, -1 for
    padding: batches of several processes interleave, so this restores the source order), "tokens" int32 [b, L]
    with a tokenizer}.
    """
    o = options
    process_index, process_count, batch_size, tokenizer, image_size, decoder = (
        o.process_index, o.process_count, o.batch_size, o.tokenizer, o.image_size, o.decoder)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} must be in [0, process_count={process_count})")
    n = len(source)
    start, stop = process_index * n // process_count, (process_index + 1) * n // process_count
    ds = grain.MapDataset.source(source)
    real = ds[start:stop].map_with_index(_DecodeEval(tokenizer, image_size, decoder, start))
    if o.pad:
        largest = -(-n // process_count)  # the first processes' shares are the longest
        total = -(-largest // batch_size) * batch_size
        if total > stop - start:
            # Padding repeats the dataset's first item (every process can read that one).
            fill = ds[0:1].repeat(total - (stop - start)).map_with_index(
                _DecodeEval(tokenizer, image_size, decoder, real=False))
            real = grain.MapDataset.concatenate([real, fill]) if stop > start else fill
    return _batched(real, batch_size, False, o.worker_count, o.read_threads)


@dataclasses.dataclass(frozen=True)
class TrainDataOptions:
    """What make_train_dataset builds from a converted dataset, besides the dataset itself.

    tokenizer: a wpce_jax.data.tokenizers.Tokenizer (picklable; it runs in the worker processes).
    image_size: output side S.
    batch_size: per-process batch size b; the global batch is B = b * process_count.
    seed: shuffle and augmentation seed (must be the same on every process).
    process_index, process_count: this process's share (jax.process_index(), jax.process_count()).
    crop_scale: RandomResizedCrop area range.
    worker_count: processes decoding in parallel (0: decode in this process's threads only). Changes nothing in the
      batches.
    num_epochs: epochs of the global stream (counted from position 0, not from start_example); None repeats forever.
    decoder: "simplejpeg" or "pil" (image_ops.DECODERS).
    resizer: the training crops' resampler, "pil" (bicubic) or "opencv" (image_ops.RESIZERS, image_ops.TRAIN_RESIZER).
    read_threads: decoding threads per process (default: 1 per worker process, else the CPU count, at most 8).
    views: two SimCLR views per example (RandomResizedCrop(crop_scale) then this augmentation, image_ops.train_views)
      instead of one crop; the batch gains "image2", the second view.
    samples_per_class: 0 for the uniform shuffle; m >= 2 for class-balanced batches of whole groups of m images of
      one class (class_balanced.py; every record needs a label; b a multiple of m).
    start_example: the number of global examples already consumed, a multiple of B. The stream starts at global
      batch start_example // B: exactly the continuation of a run that consumed start_example examples, whatever
      that run's worker_count and process_count (with the same B, seed and dataset). The training checkpoint holds
      this count, not an iterator state: the trainer resumes with start_example=step * B. Past the end of
      num_epochs the stream is empty.
    label_tuples: the batch gains "labels" int32 [b, K], the records' label tuples (the ranking modes): every
      record must carry one of K ints, K that of the first record; a record without one, or with one of another
      length, stops the stream with LabelTupleError (a DataError) naming its shard file and index, raised where it is
      read (in a worker process too: grain re-raises it here). False: the tuples are not read.
    """
    tokenizer: Any
    image_size: int
    batch_size: int
    seed: int
    process_index: int = 0
    process_count: int = 1
    crop_scale: Sequence[float] = (0.5, 1.0)
    worker_count: int = 0
    num_epochs: int | None = None
    decoder: str = image_ops.DEFAULT_DECODER
    read_threads: int | None = None
    views: image_ops.ViewAugment | None = None
    samples_per_class: int = 0
    start_example: int = 0
    label_tuples: bool = False
    resizer: str = image_ops.TRAIN_RESIZER


def make_train_dataset(data_dir: str, options: TrainDataOptions) -> grain.IterDataset:
    """This process's share of the global training stream of a converted dataset (module docstring): shuffled,
    random crops, repeated, each epoch's remainder of < B examples dropped globally.

    data_dir: directory holding manifest.json and the ArrayRecord shards it lists.
    Returns grain.IterDataset of dicts: "image" uint8 [b, S, S, 3] (pixels: the image tower normalises them on the
    device, a quarter of the bytes of float32), "tokens" int32 [b, L], "label" int32 [b] (-1 for unlabelled records),
    "skipped" bool [b] (a stand-in replaced a record that did not read or decode, unreadable.py); with
    label_tuples "labels" int32 [b, K]; with `views` "image2" uint8 [b, S, S, 3]. (Evaluation reads a
    converted dataset with make_eval_dataset(eval_sources.Records(data_dir), EvalDataOptions(...)).)
    """
    o = options
    (tokenizer, image_size, batch_size, seed, process_index, process_count, crop_scale, worker_count, num_epochs,
     decoder, read_threads, views, samples_per_class, start_example, label_tuples) = (
        o.tokenizer, o.image_size, o.batch_size, o.seed, o.process_index, o.process_count, o.crop_scale,
        o.worker_count, o.num_epochs, o.decoder, o.read_threads, o.views, o.samples_per_class, o.start_example,
        o.label_tuples)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} must be in [0, process_count={process_count})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if decoder not in image_ops.DECODERS:
        raise ValueError(f"decoder {decoder!r} unknown; expected one of {image_ops.DECODERS}")
    if o.resizer not in image_ops.RESIZERS:
        raise ValueError(f"resizer {o.resizer!r} unknown; expected one of {image_ops.RESIZERS}")
    if not (0 < crop_scale[0] <= crop_scale[1] <= 1):
        raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {tuple(crop_scale)}")
    manifest = records.read_manifest(data_dir)
    paths = records.shard_paths(data_dir, manifest)
    n = int(manifest["num_examples"])
    if not paths or n == 0:
        raise records.ManifestError(f"{os.path.join(data_dir, records.MANIFEST_NAME)} lists no examples")
    # Every shard must open (a footer read each): a truncated or overwritten file stops here, named, rather than at
    # the first batch that reads it. grain is then given the counts ("path[0:n]"), so it does not open them again.
    counts = records.count_all(paths)
    source = grain.sources.ArrayRecordDataSource([f"{p}[0:{c}]" for p, c in zip(paths, counts)])
    if len(source) != n:
        raise records.ManifestError(
            f"{data_dir}: the shards hold {len(source)} records but manifest.json says num_examples={n}; "
            f"the dataset was modified after conversion (re-run the converter)")

    global_batch = batch_size * process_count
    if isinstance(start_example, bool) or not isinstance(start_example, (int, np.integer)) or start_example < 0 \
            or start_example % global_batch:
        raise ValueError(f"start_example must be a non-negative multiple of the global batch {global_batch} "
                         f"(batch_size {batch_size} x {process_count} processes), got {start_example!r}")
    if n < global_batch:
        raise DataError(f"{data_dir}: {n} examples are fewer than one global batch of {global_batch} "
                        f"(batch_size {batch_size} x {process_count} processes)")
    if samples_per_class:
        labels = [records.decode_header(source[i])[0].get("label", -1) for i in range(n)]
        order = ClassBalancedOrder(labels, samples_per_class, global_batch, seed=seed, process_count=process_count)
    else:
        order = ShuffledOrder(n, global_batch, seed=seed)
    first_batch = int(start_example) // global_batch
    if num_epochs is None:
        num_batches = 2**40 // global_batch  # practically endless, and far from any integer limit
    else:
        num_batches = num_epochs * order.batches_per_epoch - first_batch
    stream = _ProcessStream(order, batch_size, process_index, process_count, first_batch, num_batches)
    shards = unreadable.ShardIndex(paths, counts)
    example = _TrainExample(source, shards, tokenizer, image_size, tuple(crop_scale), decoder, seed, views,
                            _labels_length(source, shards) if label_tuples else None, o.resizer)
    ds = grain.MapDataset.source(stream).map(example)
    return _batched(ds, batch_size, True, worker_count, read_threads)


def _batched(ds: grain.MapDataset, batch_size: int, drop_remainder: bool, worker_count: int,
             read_threads: int | None) -> grain.IterDataset:
    # Batching on the MapDataset keeps batch composition independent of the worker count (workers take
    # whole batches), so evaluation has exactly one partial batch.
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if read_threads is None:
        # Worker processes are the parallelism there; more threads would only multiply buffered batches.
        read_threads = 1 if worker_count > 0 else min(8, os.cpu_count() or 1)
    # Elements are whole batches: a buffer of a few is enough and bounds memory.
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=read_threads))
    if worker_count > 0:
        from absl import flags

        # grain's worker processes read its absl flags; outside absl.app.run (notebooks, tests, scripts)
        # nothing parsed them, so accept their defaults rather than fail at the first batch.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return it
