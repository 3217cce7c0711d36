"""grain input pipeline over a converted record dataset (see records.py for the format).

Training order, per epoch e (the same computation on every process, so no communication is needed):
    global permutation of all N records seeded by (seed + e)
    -> the first floor(N / P) * P positions (every process gets the same number of examples per epoch)
    -> process p takes positions p, p + P, p + 2P, ...   (disjoint across processes; together: everything
       but the < P examples left over this epoch, which differ from epoch to epoch)
    -> RandomResizedCrop drawn from an RNG seeded by (seed, process, position in the process's stream), so
       the crops depend only on (seed, epoch, index) and a restored iterator repeats them exactly
    -> decode, crop, tokenize -> batches of batch_size (drop remainder) -> normalise
Evaluation (`make_eval_dataset`, any random-access source: records, TFDS, class folders, caption sets): process p
reads the contiguous block [p N / P, (p+1) N / P) in order, centre crops, keeps the last partial batch. With
padding every process instead yields the same number of full batches (what a multi-process jit step needs),
padded with copies of a real item and a "mask" that is False on them (and on images that do not decode).

The iterator's get_state()/set_state() are grain's: a small dict that goes into the training checkpoint and
restores the exact remaining sequence of batches (with or without worker processes; the worker count must
be the same when restoring).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import grain
import numpy as np

from wpce_jax.data import image_ops, records
from wpce_jax.data.class_balanced import ClassBalancedOrder


def dataset_size(data_dir: str) -> int:
    """Number of records in a converted dataset directory (from its manifest)."""
    return int(records.read_manifest(data_dir)["num_examples"])


@dataclasses.dataclass(frozen=True)
class _DecodeTrain(grain.transforms.RandomMap):
    """record bytes -> {"image": uint8 [S, S, 3], "tokens": int32 [L], "label": int32 []} (random crop)."""

    tokenizer: Any
    image_size: int
    crop_scale: tuple[float, float]
    decoder: str

    def random_map(self, element: bytes, rng: np.random.Generator) -> dict[str, np.ndarray]:
        header, offset = records.decode_header(element)
        image = image_ops.train_crop(memoryview(element)[offset:].tobytes(), self.image_size, rng,
                                     self.crop_scale, self.decoder)
        return _example(image, header, self.tokenizer)


@dataclasses.dataclass(frozen=True)
class _DecodeViews(grain.transforms.RandomMap):
    """record bytes -> {"image": uint8 [S, S, 3] (first view), "image2": uint8 [S, S, 3] (second view), "tokens",
    "label"}: two SimCLR views (image_ops.train_views) drawn from the example's own generator, so a restored
    iterator repeats them."""

    tokenizer: Any
    image_size: int
    crop_scale: tuple[float, float]
    decoder: str
    augment: image_ops.ViewAugment

    def random_map(self, element: bytes, rng: np.random.Generator) -> dict[str, np.ndarray]:
        header, offset = records.decode_header(element)
        first, second = image_ops.train_views(memoryview(element)[offset:].tobytes(), self.image_size, rng,
                                              self.augment, self.crop_scale, self.decoder)
        return dict(_example(first, header, self.tokenizer), image2=second)


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
        except (OSError, ValueError, SyntaxError):  # what PIL and simplejpeg raise on a broken file
            pixels, ok = np.zeros((self.image_size, self.image_size, 3), np.uint8), False
        out = {"image": pixels, "label": np.int32(label), "mask": np.bool_(self.real and ok),
               "corrupt": np.bool_(self.real and not ok),
               "index": np.int32(self.offset + index if self.real else -1)}
        if self.tokenizer is not None:
            out["tokens"] = self.tokenizer([header["caption"]])[0]
        return out


def _example(image: np.ndarray, header: dict[str, Any], tokenizer) -> dict[str, np.ndarray]:
    return {
        "image": image,
        "tokens": tokenizer([header["caption"]])[0],
        "label": np.int32(header.get("label", -1)),
    }


@dataclasses.dataclass(frozen=True)
class _Read(grain.transforms.Map):
    """A record index -> the record's bytes."""

    source: Any

    def map(self, index: int) -> bytes:
        return self.source[index]


class _Normalize(grain.transforms.Map):
    """Batch-level so the float conversion is one vectorised pass; keeps uint8 through decode and batch."""

    def map(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: image_ops.normalize(v) if k in ("image", "image2") else v for k, v in batch.items()}


def make_eval_dataset(source, *, image_size: int, batch_size: int, process_index: int = 0,
                      process_count: int = 1, worker_count: int = 0, decoder: str = image_ops.DEFAULT_DECODER,
                      read_threads: int | None = None, pad: bool = True, tokenizer=None) -> grain.IterDataset:
    """One pass over a random-access evaluation source, this process's contiguous share, centre crops.

    source: len() and [i] -> record bytes or {"image": encoded bytes or uint8 [H, W, C], "label": int}
      (wpce_jax.data.eval_sources). Process p reads [p N / P, (p + 1) N / P) in order.
    pad: every process yields ceil(ceil(N / P) / b) full batches (what a multi-process jit step needs), the
      missing rows copies of item 0 with "mask" False; otherwise the last batch is partial.
    Returns batches {"image": float32 [b, S, S, 3] normalised, "label": int32 [b], "mask": bool [b] (real and
    decodable), "corrupt": bool [b] (real but undecodable), "index" int32 [b] (position in the source, -1 for
    padding: batches of several processes interleave, so this restores the source order), "tokens" int32 [b, L]
    with a tokenizer}.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} must be in [0, process_count={process_count})")
    n = len(source)
    start, stop = process_index * n // process_count, (process_index + 1) * n // process_count
    ds = grain.MapDataset.source(source)
    real = ds[start:stop].map_with_index(_DecodeEval(tokenizer, image_size, decoder, start))
    if pad:
        largest = -(-n // process_count)  # the first processes' shares are the longest
        total = -(-largest // batch_size) * batch_size
        if total > stop - start:
            # Padding repeats the dataset's first item (every process can read that one).
            fill = ds[0:1].repeat(total - (stop - start)).map_with_index(
                _DecodeEval(tokenizer, image_size, decoder, real=False))
            real = grain.MapDataset.concatenate([real, fill]) if stop > start else fill
    return _batched(real, batch_size, False, worker_count, read_threads)


def make_dataset(
    data_dir: str,
    *,
    tokenizer,
    image_size: int,
    train: bool,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    crop_scale: Sequence[float] = (0.5, 1.0),
    worker_count: int = 0,
    num_epochs: int | None = None,
    decoder: str = image_ops.DEFAULT_DECODER,
    read_threads: int | None = None,
    pad_eval: bool = False,
    views: image_ops.ViewAugment | None = None,
    samples_per_class: int = 0,
) -> grain.IterDataset:
    """The per-process input pipeline of a converted dataset.

    Args:
      data_dir: directory holding manifest.json and the ArrayRecord shards it lists.
      tokenizer: a wpce_jax.data.tokenizers.Tokenizer (picklable; it runs in the worker processes).
      image_size: output side S.
      train: True: shuffled, random crops, repeated, remainder dropped. False: record order, centre crop,
        one epoch, last partial batch kept.
      batch_size: per-process batch size b.
      seed: shuffle and crop seed (training; must be the same on every process).
      process_index, process_count: this process's share (jax.process_index(), jax.process_count()).
      crop_scale: RandomResizedCrop area range.
      worker_count: processes decoding in parallel (0: decode in this process's threads only).
      num_epochs: training epochs; None repeats forever. Ignored for evaluation (always one).
      decoder: "simplejpeg" or "pil" (image_ops.DECODERS).
      read_threads: decoding threads per process (default: 1 per worker process, else the CPU count, at
        most 8).
      pad_eval: evaluation only: pad every process to ceil(ceil(N / P) / b) full batches and add "mask" bool [b]
        (True for real examples) so that all processes step together.
      views: training only: two SimCLR views per example (RandomResizedCrop(crop_scale) then this augmentation,
        image_ops.train_views) instead of one crop; the batch gains "image2", the second view.
      samples_per_class: training only: 0 for the shuffle above; m >= 2 for class-balanced batches of whole groups
        of m images of one class (class_balanced.py; every record needs a label).
    Returns:
      grain.IterDataset of dicts: "image" float32 [b, S, S, 3] (ImageNet-normalised), "tokens" int32
      [b, L], "label" int32 [b] (-1 for unlabelled records); with `views` also "image2" float32 [b, S, S, 3];
      evaluation adds "mask" and "corrupt" bool [b]
      (make_eval_dataset). iter() gives
      an iterator with get_state()/set_state() (a small JSON-serialisable dict).
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} must be in [0, process_count={process_count})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if decoder not in image_ops.DECODERS:
        raise ValueError(f"decoder {decoder!r} unknown; expected one of {image_ops.DECODERS}")
    if not (0 < crop_scale[0] <= crop_scale[1] <= 1):
        raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {tuple(crop_scale)}")
    manifest = records.read_manifest(data_dir)
    paths = records.shard_paths(data_dir, manifest)
    n = int(manifest["num_examples"])
    if not paths or n == 0:
        raise records.ManifestError(f"{os.path.join(data_dir, records.MANIFEST_NAME)} lists no examples")
    source = grain.sources.ArrayRecordDataSource(paths)
    if len(source) != n:
        raise records.ManifestError(
            f"{data_dir}: the shards hold {len(source)} records but manifest.json says num_examples={n}; "
            f"the dataset was modified after conversion (re-run the converter)")

    if not train:
        return make_eval_dataset(source, image_size=image_size, batch_size=batch_size,
                                 process_index=process_index, process_count=process_count,
                                 worker_count=worker_count, decoder=decoder, read_threads=read_threads,
                                 pad=pad_eval, tokenizer=tokenizer)
    per_process = n // process_count
    if per_process < batch_size:
        raise ValueError(f"{data_dir}: {n} examples give {per_process} per process, fewer than one batch "
                         f"of {batch_size}")
    if samples_per_class:
        labels = [records.decode_header(source[i])[0].get("label", -1) for i in range(n)]
        order = ClassBalancedOrder(labels, samples_per_class, batch_size * process_count, seed=seed,
                                   process_index=process_index, process_count=process_count, num_epochs=num_epochs)
        ds = grain.MapDataset.source(order).map(_Read(source))
    else:
        ds = grain.MapDataset.source(source).shuffle(seed=seed % 2**32)
        ds = ds[:per_process * process_count]
        ds = ds[process_index::process_count]
        ds = ds.repeat(num_epochs)
    # The crop RNG is keyed by position in this process's stream: fold the process in, or the k-th example
    # of every process would draw the same crop parameters.
    crop_seed = int(np.random.SeedSequence([seed % 2**32, process_index]).generate_state(1)[0])
    if views is None:
        decode = _DecodeTrain(tokenizer, image_size, tuple(crop_scale), decoder)
    else:
        decode = _DecodeViews(tokenizer, image_size, tuple(crop_scale), decoder, views)
    ds = ds.random_map(decode, seed=crop_seed)
    return _batched(ds, batch_size, True, worker_count, read_threads)


def _batched(ds: grain.MapDataset, batch_size: int, drop_remainder: bool, worker_count: int,
             read_threads: int | None) -> grain.IterDataset:
    # Batching on the MapDataset keeps batch composition independent of the worker count (workers take
    # whole batches), so evaluation has exactly one partial batch.
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(_Normalize())
    if read_threads is None:
        # Worker processes are the parallelism there; more threads would only multiply buffered batches.
        read_threads = 1 if worker_count > 0 else min(8, os.cpu_count() or 1)
    # Elements are whole float32 batches: a buffer of a few is enough and bounds memory.
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=read_threads))
    if worker_count > 0:
        from absl import flags

        # grain's worker processes read its absl flags; outside absl.app.run (notebooks, tests, scripts)
        # nothing parsed them, so accept their defaults rather than fail at the first batch.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return it
