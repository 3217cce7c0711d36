"""Class-balanced training order: every batch holds whole groups of m images of one class (m per class).

Metric-learning losses over a batch (triplet mining, margin contrastive) need positive pairs inside the batch; with
uniform sampling a batch of 128 from CUB's 100 classes has almost none, from SOP's 11k classes none. Per epoch e,
from an RNG seeded by (seed, e) alone: each class's images are shuffled and cut into groups of m (a class's last
< m images sit the epoch out), the groups are shuffled, and their concatenation is cut into global batches of B
(the last partial batch is dropped). The order is addressed by global example position g = 0, 1, 2, ...: epoch
g // epoch_length, then that epoch's order; pipeline.py deals rows [p b, (p + 1) b) of every global batch to process
p of P (b = B / P, a multiple of m, so every process's share holds whole groups), so the global batch is the same
for any number of processes and a run resumes at any multiple of B.
"""
from __future__ import annotations

import functools

import numpy as np

from wpce_jax.errors import DataError


class ClassBalancedOrder:
    """Global example position g -> record index, epoch after epoch (the same on every process).

    labels: int [N] of the records; per_class: m >= 2; global_batch: B, a multiple of m * process_count
    (process_count is only checked here: each process's b = B / P rows must hold whole groups).
    Attributes: batches_per_epoch (global batches of B), epoch_length = batches_per_epoch * B positions.
    """

    def __init__(self, labels, per_class: int, global_batch: int, *, seed: int, process_count: int = 1):
        labels = np.asarray(labels)
        if per_class < 2:
            raise ValueError(f"samples per class must be >= 2 (a positive pair), got {per_class}")
        if global_batch % (per_class * process_count):
            raise ValueError(f"the global batch {global_batch} must be a multiple of samples per class ({per_class}) "
                             f"x processes ({process_count})")
        if labels.size and labels.min() < 0:
            raise DataError("class-balanced sampling needs every record labelled (found label -1)")
        self.per_class, self.global_batch, self.seed = per_class, global_batch, seed
        self.members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        groups = sum(len(m) // per_class for m in self.members)
        self.batches_per_epoch = groups * per_class // global_batch
        if self.batches_per_epoch == 0:
            raise DataError(f"{groups} groups of {per_class} images of one class fill no batch of {global_batch}")
        self.epoch_length = self.batches_per_epoch * global_batch

    @functools.lru_cache(maxsize=2)
    def epoch(self, e: int) -> np.ndarray:
        """int64 [batches_per_epoch * B]: the global order of epoch e."""
        rng = np.random.default_rng([self.seed % 2**32, e])
        groups = [g for m in self.members
                  for g in rng.permutation(m)[:len(m) // self.per_class * self.per_class].reshape(-1, self.per_class)]
        order = np.concatenate([groups[i] for i in rng.permutation(len(groups))])
        return order[:self.epoch_length]

    def __getitem__(self, g: int) -> int:
        e, q = divmod(int(g), self.epoch_length)
        return int(self.epoch(e)[q])
