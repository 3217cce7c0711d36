"""Class-balanced training order: every batch holds whole groups of m images of one class (m per class).

Metric-learning losses over a batch (triplet mining, margin contrastive) need positive pairs inside the batch; with
uniform sampling a batch of 128 from CUB's 100 classes has almost none, from SOP's 11k classes none. Per epoch e,
from an RNG seeded by (seed, e) alone: each class's images are shuffled and cut into groups of m (a class's last
< m images sit the epoch out), the groups are shuffled, and their concatenation is cut into global batches of B
(the last partial batch is dropped). Process p of P takes rows [p b, (p + 1) b) of every global batch (b = B / P,
a multiple of m), so the global batch is the same for any number of processes, and a position in a process's stream
maps to one record whatever happened before: grain's iterator state restores it exactly.
"""
from __future__ import annotations

import functools

import numpy as np


class ClassBalancedOrder:
    """A random-access source of record indices: this process's stream, epoch after epoch.

    labels: int [N] of the records; per_class: m >= 2; global_batch: B, a multiple of m * process_count;
    num_epochs: None for (practically) endless.
    """

    def __init__(self, labels, per_class: int, global_batch: int, *, seed: int, process_index: int = 0,
                 process_count: int = 1, num_epochs: int | None = None):
        labels = np.asarray(labels)
        if per_class < 2:
            raise ValueError(f"samples per class must be >= 2 (a positive pair), got {per_class}")
        if global_batch % (per_class * process_count):
            raise ValueError(f"the global batch {global_batch} must be a multiple of samples per class ({per_class}) "
                             f"x processes ({process_count})")
        if labels.size and labels.min() < 0:
            raise ValueError("class-balanced sampling needs every record labelled (found label -1)")
        self.per_class, self.global_batch, self.seed = per_class, global_batch, seed
        self.process_index, self.local_batch = process_index, global_batch // process_count
        self.members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        groups = sum(len(m) // per_class for m in self.members)
        self.batches_per_epoch = groups * per_class // global_batch
        if self.batches_per_epoch == 0:
            raise ValueError(f"{groups} groups of {per_class} images of one class fill no batch of {global_batch}")
        self.epoch_length = self.batches_per_epoch * self.local_batch  # of this process's stream
        self.num_epochs = num_epochs if num_epochs is not None else 2**40 // self.epoch_length

    def __len__(self) -> int:
        return self.epoch_length * self.num_epochs

    @functools.lru_cache(maxsize=2)
    def epoch(self, e: int) -> np.ndarray:
        """int64 [batches * B]: the global order of epoch e."""
        rng = np.random.default_rng([self.seed % 2**32, e])
        groups = [g for m in self.members
                  for g in rng.permutation(m)[:len(m) // self.per_class * self.per_class].reshape(-1, self.per_class)]
        order = np.concatenate([groups[i] for i in rng.permutation(len(groups))])
        return order[:self.batches_per_epoch * self.global_batch]

    def __getitem__(self, i: int) -> int:
        e, j = divmod(int(i), self.epoch_length)
        batch, row = divmod(j, self.local_batch)
        return int(self.epoch(e)[batch * self.global_batch + self.process_index * self.local_batch + row])
