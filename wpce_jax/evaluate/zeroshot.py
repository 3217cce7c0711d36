"""Zero-shot classification: images scored against class embeddings built from prompt templates.

A class embedding is the mean of the compared vectors (feature maps, with the run's fixed evaluation RFF draw) of
its prompts "template.format(class_name)"; an image is assigned the class of highest dot product. The held-out
records carry integer labels. Every process reads its own part of the data; counts are summed over the mesh.
"""
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from wpce_jax.data.pipeline import dataset_size, make_dataset
from wpce_jax.parallel import batch_sharding, global_batch, per_process_batch


class ZeroShotTask(NamedTuple):
    name: str
    data_dir: str  # a converted dataset whose records carry "label"
    class_names: Sequence[str]
    templates: Sequence[str]  # each with one "{}" for the class name


def _sharded_rows(rows: np.ndarray, mesh: Mesh) -> jax.Array:
    """The same host array on every process -> a global array split over the data axis."""
    return jax.make_array_from_callback(rows.shape, batch_sharding(mesh), lambda idx: rows[idx])


def class_embeddings(encode_tokens: Callable, tokenizer, task: ZeroShotTask, chunk: int, mesh: Mesh) -> jax.Array:
    """[C, F]: per class, the mean over templates of the prompts' vectors. `chunk` prompts are encoded at a time
    (a multiple of the device count); `encode_tokens(tokens [chunk, L]) -> [chunk, F]`."""
    prompts = [t.format(c) for c in task.class_names for t in task.templates]
    tokens = tokenizer(prompts)
    outputs = []
    for start in range(0, len(prompts), chunk):
        part = tokens[start:start + chunk]
        padded = np.concatenate([part, np.repeat(part[-1:], chunk - len(part), 0)])
        outputs.append(np.asarray(jax.device_get(encode_tokens(_sharded_rows(padded, mesh))))[:len(part)])
    features = np.concatenate(outputs)
    return jnp.asarray(features.reshape(len(task.class_names), len(task.templates), -1).mean(1))


def evaluate(task: ZeroShotTask, *, score: Callable, class_features: jax.Array, tokenizer, image_size: int,
             batch_size: int, mesh: Mesh, worker_count: int = 0) -> dict[str, float]:
    """Top-1 (and, with more than 5 classes, top-5) accuracy of `task`.

    score(images [B,S,S,3], labels [B], valid [B], class_features [C,F]) -> (top1 hits, top5 hits, count), summed
    over the global batch. batch_size is global. Returns {"zeroshot/<name>/top1": ..., ".../top5": ...}.
    """
    local = per_process_batch(batch_size, "eval.batch_size")
    n = dataset_size(task.data_dir)
    # pad_eval: every process runs the same number of full batches (they meet in collectives), "mask" marks the
    # real examples.
    ds = make_dataset(task.data_dir, tokenizer=tokenizer, image_size=image_size, train=False, batch_size=local,
                      seed=0, process_index=jax.process_index(), process_count=jax.process_count(),
                      worker_count=worker_count, pad_eval=True)
    totals = np.zeros(3)
    for batch in ds:
        labels = batch["label"][batch["mask"]]
        if np.any(labels < 0) or np.any(labels >= len(task.class_names)):
            raise ValueError(f"zero-shot dataset {task.data_dir}: labels must lie in [0, {len(task.class_names)})")
        arrays = global_batch({"image": batch["image"], "label": batch["label"], "valid": batch["mask"]}, mesh)
        hits = score(arrays["image"], arrays["label"], arrays["valid"], class_features)
        totals += np.asarray([float(h) for h in hits])
    if totals[2] != n:
        raise RuntimeError(f"zero-shot {task.name}: scored {int(totals[2])} images, the dataset holds {n}")
    prefix = f"zeroshot/{task.name}"
    results = {f"{prefix}/top1": totals[0] / n}
    if len(task.class_names) > 5:  # with 5 classes or fewer top-5 is always 1
        results[f"{prefix}/top5"] = totals[1] / n
    return results


def hits(features: jax.Array, class_features: jax.Array, labels: jax.Array, valid: jax.Array):
    """(top-1 hits, top-5 hits, valid count) of features [B, F] against class_features [C, F]."""
    logits = features @ class_features.T
    k = min(5, class_features.shape[0])
    top = jax.lax.top_k(logits, k)[1]
    top1 = (top[:, 0] == labels) & valid
    top5 = jnp.any(top == labels[:, None], axis=1) & valid
    return jnp.sum(top1), jnp.sum(top5), jnp.sum(valid)
