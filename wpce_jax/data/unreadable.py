"""Training records that cannot be read or decoded: deterministic stand-ins, one line per shard, and the limit.

The training stream (pipeline.py) asks for record order[g] at global position g. When that record does not read
(READ_ERRORS: a damaged chunk of its ArrayRecord file, e.g. "Corrupted Riegeli/records file: chunk data hash
mismatch") or does not decode (DECODE_ERRORS: a broken record header or image), the record at
stand_in(seed, g, 1, N) takes its place, then stand_in(seed, g, 2, N), ... (at most MAX_ATTEMPTS records), decoded
with g's own augmentation. So the batch keeps its size, and a resumed run sees the same batches with any worker or
process count: the stand-in is a function of (seed, g) and the data alone. Nothing else is caught: a fault in the
code (a TypeError, a KeyError, an error of the tokenizer) still raises.

The example carries "skipped" True; the trainer sums the flags over its processes into train/skipped_examples
and stops (check_fraction) when more than data.max_skipped_fraction of the examples seen were replaced.
"""

from __future__ import annotations

import bisect
import itertools
import os
import sys
import threading
from typing import Callable, Sequence, TypeVar

import numpy as np

from wpce_jax.errors import UserError

# What array_record's reader raises for a record it cannot read: a RuntimeError carrying Riegeli's message
# ("Corrupted Riegeli/records file: chunk data hash mismatch ...", "... chunk header hash mismatch ...",
# "Truncated Riegeli/records file ..."). The reader stays usable for other records afterwards.
READ_ERRORS = (RuntimeError,)
# What a broken record raises while decoding: records.RecordError and json's errors (ValueError) for the header;
# PIL (OSError, SyntaxError, ValueError) and simplejpeg (ValueError) for the image.
DECODE_ERRORS = (OSError, ValueError, SyntaxError)
# Records tried for one position before concluding that the data is mostly unreadable.
MAX_ATTEMPTS = 16
# train/skipped_examples is compared with max_skipped_fraction x max(examples seen, this): the first few batches
# are too small a sample (one bad record in a first batch of 32 is 3%), so before this many examples the run
# tolerates max_skipped_fraction x MIN_EXAMPLES replaced records (100 at the default 0.01).
MIN_EXAMPLES = 10_000

T = TypeVar("T")


class UnreadableDataError(UserError, RuntimeError):
    """No readable record among MAX_ATTEMPTS tries for one position: the dataset is mostly unreadable."""


class TooManySkippedError(UserError, ValueError):
    """More than data.max_skipped_fraction of the training examples so far were replaced."""


def stand_in(seed: int, position: int, attempt: int, num_records: int) -> int:
    """The record index that replaces global position `position`'s record at attempt = 1, 2, ...: a hash of
    (seed, position, attempt), uniform over [0, num_records)."""
    state = np.random.SeedSequence([seed % 2**64, int(position), int(attempt)]).generate_state(1, np.uint64)
    return int(state[0] % np.uint64(num_records))


class ShardIndex:
    """Dataset record index -> (shard file, index in that file), for the messages."""

    def __init__(self, paths: Sequence[str], counts: Sequence[int]):
        self.paths = list(paths)
        self.ends = list(itertools.accumulate(counts))

    def locate(self, index: int) -> tuple[str, int]:
        shard = bisect.bisect_right(self.ends, index)
        return self.paths[shard], index - (self.ends[shard - 1] if shard else 0)


_reported: set[str] = set()  # shards this process has named already
_lock = threading.Lock()


def _report_once(shards: ShardIndex, index: int, error: Exception) -> None:
    """One stderr line the first time a shard yields an unreadable record in this process (the main process or a
    grain worker); later ones are only counted."""
    path, position = shards.locate(index)
    with _lock:
        if path in _reported:
            return
        _reported.add(path)
    reason = " ".join(str(error).split())[:300]
    print(f"unreadable training record {position} of {path} ({type(error).__name__}: {reason}): replaced by a "
          f"stand-in and counted in train/skipped_examples; further ones in this file are counted without a line",
          file=sys.stderr, flush=True)


def read_or_stand_in(read: Callable[[int], bytes], decode: Callable[[bytes], T], *, index: int, position: int,
                     seed: int, shards: ShardIndex) -> tuple[T, bool]:
    """(decode(read(index)), False), or, when that raises READ_ERRORS in `read` or DECODE_ERRORS in `decode`, the
    first stand-in record that reads and decodes, with True. `decode` must draw its augmentation afresh for each
    call (from the position, not from the record). Raises UnreadableDataError after MAX_ATTEMPTS failures."""
    num_records = shards.ends[-1]
    for attempt in range(MAX_ATTEMPTS):
        try:
            data = read(index)
        except READ_ERRORS as e:
            error = e
        else:
            try:
                return decode(data), attempt > 0
            except DECODE_ERRORS as e:
                error = e
        _report_once(shards, index, error)
        index = stand_in(seed, position, attempt + 1, num_records)
    directory = os.path.dirname(shards.paths[0])
    raise UnreadableDataError(
        f"{directory}: {MAX_ATTEMPTS} records in a row do not read or decode (for global example {position}; the "
        f"last: {type(error).__name__}: {' '.join(str(error).split())[:200]}); the dataset is mostly unreadable: "
        f"re-run the converter")


def check_fraction(skipped: int, seen: int, max_fraction: float) -> None:
    """Raises TooManySkippedError when skipped > max_fraction x max(seen, MIN_EXAMPLES) (seen: global training
    examples consumed, skipped: how many of them were stand-ins)."""
    if skipped > max_fraction * max(seen, MIN_EXAMPLES):
        raise TooManySkippedError(
            f"{skipped:,} of the {seen:,} training examples so far could not be read or decoded and were replaced "
            f"(more than data.max_skipped_fraction = {max_fraction:g}; the first {MIN_EXAMPLES:,} examples count "
            f"as {MIN_EXAMPLES:,}): the training data is damaged; re-run the converter, or raise "
            f"data.max_skipped_fraction and resume to train on what is readable")
