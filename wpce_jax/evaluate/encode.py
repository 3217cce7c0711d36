"""Encoding whole evaluation sets on the mesh: image features of a source, text features of a list of strings.

Every process reads its share of the images (pipeline.make_eval_dataset); the jitted encoders return replicated
outputs, put back in source order, so every process ends with the same full feature arrays in the same order as a
one-process run, and whatever is computed from them (metrics, a linear probe) is the same too.

The image features go to memory-mapped .npy files as each batch comes back (`FeatureFiles`), never all into host
memory: ImageNet's 1.28M training images make 7.9 GB of 1536-wide compared vectors.

Per image: "compared" [R, F], the vector the similarity compares, under each of R evaluation RFF draws (F = d + D
for WPCE, d for the CLIP baseline); "pooled" [W], the weighted mean of the tower's tokens before the point
projection (the class token for CLIP).
"""
from __future__ import annotations

import os
import tempfile
from typing import NamedTuple, Optional

import jax
import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict

from wpce_jax.data.pipeline import EvalDataOptions, make_eval_dataset
from wpce_jax.progress import Progress
from wpce_jax.kernels import RFF
from wpce_jax.parallel import batch_sharding, global_batch, per_process_batch, replicated
from wpce_jax.similarity import compared


class ImageFeatures(NamedTuple):
    compared: np.ndarray  # float32 [N, R, F] (a read-only np.memmap from `Encoders.images`)
    pooled: np.ndarray    # float32 [N, W] (likewise)
    labels: np.ndarray    # int64 [N]
    corrupt: int          # images that did not decode (left out of N)


class FeatureFiles:
    """Rows written into memory-mapped .npy files at given positions: `directory`/<name>.npy (kept), or without a
    directory temporary files deleted as soon as they are opened (Linux keeps a deleted file's pages until its
    last map goes, so nothing is left behind and the page cache, not the heap, holds the rows)."""

    def __init__(self, n: int, directory: Optional[str] = None):
        self.n, self.directory, self.arrays = n, directory, {}

    def write(self, name: str, positions: np.ndarray, rows: np.ndarray) -> None:
        """rows [b, ...] at positions [b] of the [n, ...] array `name` (made at its first rows)."""
        if name not in self.arrays:
            if self.directory is not None:
                os.makedirs(self.directory, exist_ok=True)
                path = os.path.join(self.directory, f"{name}.npy")
            else:
                handle, path = tempfile.mkstemp(suffix=f"-{name}.npy")
                os.close(handle)
            self.arrays[name] = np.lib.format.open_memmap(path, "w+", rows.dtype, (self.n, *rows.shape[1:]))
            if self.directory is None:
                os.unlink(path)
        self.arrays[name][positions] = rows

    def finish(self, keep: np.ndarray) -> dict[str, np.ndarray]:
        """{name: the rows at the increasing positions `keep` [k], read-only}: moved to the front in place (each
        row moves to a lower or equal position, so blocks in increasing order never overwrite a row still to
        move), then flushed; the arrays are the files' first k rows."""
        out = {}
        for name, array in self.arrays.items():
            if len(keep) < self.n:
                for start in range(0, len(keep), 1 << 14):
                    block = keep[start:start + (1 << 14)]
                    array[start:start + len(block)] = array[block]
            array.flush()
            view = array[:len(keep)]
            view.flags.writeable = False
            out[name] = view
        return out


class Encoders:
    """The model's evaluation encoders, jitted once per (model, config, mesh)."""

    def __init__(self, model, config: ConfigDict, mesh: Mesh):
        self.config, self.mesh = config, mesh

        def images(params, batch, rffs):
            vectors = compared(model, config, params, images=batch["image"], rff=rffs, mesh=mesh, stacked=True)
            # The labels and masks ride along so that they come back in the same (global) row order.
            return {"compared": vectors.image, "pooled": vectors.pooled, "labels": batch["label"],
                    "mask": batch["mask"], "corrupt": batch["corrupt"], "index": batch["index"]}

        def texts(params, tokens, rffs):
            return compared(model, config, params, tokens=tokens, rff=rffs, mesh=mesh, stacked=True).text

        self._images = jax.jit(images, out_shardings=replicated(mesh))
        self._texts = jax.jit(texts, out_shardings=replicated(mesh))

    def images(self, params, rffs: Optional[RFF], source, desc: str, directory: Optional[str] = None
               ) -> ImageFeatures:
        """Features of every image of `source`, in one pass with progress (rate, ETA) on process 0, written batch by
        batch to memory-mapped files (FeatureFiles: compared.npy and pooled.npy in `directory`, kept; else
        temporary ones, gone with the arrays)."""
        c = self.config
        local = per_process_batch(c.eval.batch_size, "eval.batch_size")
        batches = make_eval_dataset(source, EvalDataOptions(
            image_size=c.data.image_size, batch_size=local, process_index=jax.process_index(),
            process_count=jax.process_count(), worker_count=c.data.worker_count))
        n = len(source)
        progress = Progress(desc, unit="images", enabled=jax.process_index() == 0, delay=5.0)
        files = FeatureFiles(n, directory)
        valid = np.zeros(n, bool)  # decoded images, by source position
        corrupt = 0

        def store(out):
            nonlocal corrupt
            out = jax.tree.map(np.asarray, out)
            # Each global batch stacks every process's slice: the source index puts each row in source order.
            rows = np.flatnonzero(out["mask"])
            positions = out["index"][rows]
            for name in ("compared", "pooled"):
                files.write(name, positions, out[name][rows])
            valid[positions] = True
            labels[positions] = out["labels"][rows]
            corrupt += int(out["corrupt"].sum())

        labels = np.zeros(n, np.int64)
        pending, seen = None, 0
        for batch in batches:
            arrays = global_batch({k: batch[k] for k in ("image", "label", "mask", "corrupt", "index")}, self.mesh)
            out = self._images(params, arrays, rffs)
            if pending is not None:  # copy the previous batch while this one computes
                store(pending)
            pending = out
            real = int(batch["mask"].sum() + batch["corrupt"].sum()) * jax.process_count()  # estimated from ours
            seen += real
            progress.update(real, fraction=seen / n)
        if pending is not None:
            store(pending)
        progress.close()
        keep = np.flatnonzero(valid)
        arrays = files.finish(keep)
        return ImageFeatures(arrays["compared"], arrays["pooled"], labels[keep], corrupt)

    def texts(self, params, rffs: Optional[RFF], tokens: np.ndarray) -> np.ndarray:
        """float32 [K, R, F] for tokens int32 [K, L] (the same on every process), eval.batch_size at a time."""
        chunk = self.config.eval.batch_size
        outputs = []
        for start in range(0, len(tokens), chunk):
            part = tokens[start:start + chunk]
            padded = np.concatenate([part, np.repeat(part[-1:], chunk - len(part), 0)])
            rows = jax.make_array_from_callback(padded.shape, batch_sharding(self.mesh), lambda i: padded[i])
            outputs.append(np.asarray(self._texts(params, rows, rffs))[:len(part)])
        return np.concatenate(outputs)

