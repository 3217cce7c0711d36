"""Encoding whole evaluation sets on the mesh: image features of a source, text features of a list of strings.

Every process reads its share of the images (pipeline.make_eval_dataset); the jitted encoders return replicated
outputs, put back in source order, so every process ends with the same full feature arrays in the same order as a
one-process run, and whatever is computed from them (metrics, a linear probe) is the same too.

Per image: "compared" [R, F], the vector the similarity compares, under each of R evaluation RFF draws (F = d + D
for WPCE, d for the CLIP baseline); "pooled" [W], the weighted mean of the tower's tokens before the point
projection (the class token for CLIP).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict

from wpce_jax.data.pipeline import make_eval_dataset
from wpce_jax.progress import Progress
from wpce_jax.kernels import RFF
from wpce_jax.parallel import apply_gathered, batch_sharding, global_batch, per_process_batch, replicated
from wpce_jax.pointcloud import PointCloud
from wpce_jax.similarity import embed


class ImageFeatures(NamedTuple):
    compared: np.ndarray  # float32 [N, R, F]
    pooled: np.ndarray    # float32 [N, W]
    labels: np.ndarray    # int64 [N]
    corrupt: int          # images that did not decode (left out of N)


def embed_draws(cloud: PointCloud, rffs: Optional[RFF], config: ConfigDict) -> jax.Array:
    """[B, R, F]: the compared vectors under each stacked draw (R = 1 without RFF)."""
    if rffs is None:
        return embed(cloud, None, config)[:, None]
    return jax.vmap(lambda r: embed(cloud, r, config), out_axes=1)(rffs)


class Encoders:
    """The model's evaluation encoders, jitted once per (model, config, mesh)."""

    def __init__(self, model, config: ConfigDict, mesh: Mesh):
        self.config, self.mesh = config, mesh

        def apply(params, inputs, method):  # FSDP-split params are gathered where used
            return apply_gathered(model, mesh, params, inputs, method)

        def images(params, batch, rffs):
            cloud, pooled = apply(params, batch["image"], "encode_image_and_pool")
            # The labels and masks ride along so that they come back in the same (global) row order.
            return {"compared": embed_draws(cloud, rffs, config), "pooled": pooled, "labels": batch["label"],
                    "mask": batch["mask"], "corrupt": batch["corrupt"], "index": batch["index"]}

        def texts(params, tokens, rffs):
            return embed_draws(apply(params, tokens, "encode_text"), rffs, config)

        self._images = jax.jit(images, out_shardings=replicated(mesh))
        self._texts = jax.jit(texts, out_shardings=replicated(mesh))

    def images(self, params, rffs: Optional[RFF], source, desc: str) -> ImageFeatures:
        """Features of every image of `source`, in one pass with progress (rate, ETA) on process 0."""
        c = self.config
        local = per_process_batch(c.eval.batch_size, "eval.batch_size")
        batches = make_eval_dataset(source, image_size=c.data.image_size, batch_size=local,
                                    process_index=jax.process_index(), process_count=jax.process_count(),
                                    worker_count=c.data.worker_count)
        n = len(source)
        progress = Progress(desc, unit="images", enabled=jax.process_index() == 0, delay=5.0)
        parts, pending, seen = [], None, 0
        for batch in batches:
            arrays = global_batch({k: batch[k] for k in ("image", "label", "mask", "corrupt", "index")}, self.mesh)
            out = self._images(params, arrays, rffs)
            if pending is not None:  # copy the previous batch while this one computes
                parts.append(jax.tree.map(np.asarray, pending))
            pending = out
            real = int(batch["mask"].sum() + batch["corrupt"].sum()) * jax.process_count()  # estimated from ours
            seen += real
            progress.update(real, fraction=seen / n)
        parts.append(jax.tree.map(np.asarray, pending))
        progress.close()
        full = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        # Source order: each global batch stacks every process's slice, which interleaves the processes' blocks.
        keep = np.flatnonzero(full["mask"])
        keep = keep[np.argsort(full["index"][keep], kind="stable")]
        return ImageFeatures(full["compared"][keep], full["pooled"][keep], full["labels"][keep].astype(np.int64),
                             int(full["corrupt"].sum()))

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

