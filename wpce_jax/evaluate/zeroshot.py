"""Zero-shot classification: images scored against class vectors built from prompt templates.

Each class's prompts "template.format(class_name)" are encoded to compared vectors. The class vector follows the
reference implementations: for the CLIP baseline the unit prompt vectors are averaged and the mean re-normalised
(open_clip); for WPCE the prompts' feature maps are averaged and left as they are (the WPCE release), so that
image . class is the mean WPCE similarity to the class's prompts. An image goes to the class of highest logit.

With R evaluation RFF draws (eval.rff_draws) the logits are averaged over the draws (the reference redraws at
every evaluation; averaging removes most of that noise), and each draw's own top-1 gives the spread.
Metrics: top-1, top-5 (more than 5 classes), mean per-class recall, and with R > 1 the standard deviation of the
per-draw top-1.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from wpce_jax.data.eval_sources import ClassificationSet
from wpce_jax.errors import DataError
from wpce_jax.evaluate import metrics

_BLOCK = 4096  # images scored at a time: a [block, C] logit matrix on device


def class_vectors(prompt_features: np.ndarray, num_classes: int, similarity: str) -> np.ndarray:
    """[C * T, R, F] prompt vectors, class-major -> [C, R, F] class vectors (see the module docstring)."""
    per_class = prompt_features.reshape(num_classes, -1, *prompt_features.shape[1:]).mean(axis=1)
    if similarity == "clip":
        per_class = per_class / np.linalg.norm(per_class, axis=-1, keepdims=True)
    return per_class.astype(np.float32)


@jax.jit
def _predict(images: jax.Array, classes: jax.Array):
    """images [b, R, F], classes [C, R, F] -> (top-k classes of the draw-averaged logits [b, min(5, C)],
    each draw's top-1 [b, R])."""
    # HIGHEST: the default float32 matmul on GPU/TPU rounds its inputs (TF32/bf16), which flips near-ties.
    per_draw = jnp.einsum("brf,crf->brc", images, classes, precision=jax.lax.Precision.HIGHEST)
    top = jax.lax.top_k(per_draw.mean(axis=1), min(5, classes.shape[0]))[1]
    return top, jnp.argmax(per_draw, axis=-1)


def predict(images: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, R, F] image vectors, [C, R, F] class vectors -> (top-5 [N, min(5, C)], per-draw top-1 [N, R]),
    computed on device a block of images at a time (the last block padded, so one compile)."""
    device_classes = jnp.asarray(classes)
    tops, draws = [], []
    for start in range(0, len(images), _BLOCK):
        block = images[start:start + _BLOCK]
        padded = np.concatenate([block, np.zeros((_BLOCK - len(block),) + block.shape[1:], block.dtype)])
        top, per_draw = _predict(jnp.asarray(padded), device_classes)
        tops.append(np.asarray(top)[:len(block)])
        draws.append(np.asarray(per_draw)[:len(block)])
    return np.concatenate(tops), np.concatenate(draws)


def scores(top: np.ndarray, per_draw: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Metric name (without prefix) -> value, from `predict`'s outputs and the true labels [N]."""
    out = {"top1": float(np.mean(top[:, 0] == labels)),
           "mean_per_class_recall": float(metrics.mean_per_class_recall(top[:, 0], labels, num_classes))}
    if num_classes > 5:  # with 5 classes or fewer top-5 is always 1
        out["top5"] = float(np.mean(np.any(top == labels[:, None], axis=1)))
    if per_draw.shape[1] > 1:
        out["top1_draw_std"] = float(np.std(np.mean(per_draw == labels[:, None], axis=0)))
    return out


def evaluate(name: str, data: ClassificationSet, images, *, encoders, params, rffs, tokenizer,
             similarity: str) -> dict[str, float]:
    """zeroshot/<name>/<metric> of one labelled set whose images are encoded (encode.ImageFeatures)."""
    prompts = [t.format(c) for c in data.class_names for t in data.templates]
    classes = class_vectors(encoders.texts(params, rffs, tokenizer(prompts)), len(data.class_names), similarity)
    if len(images.labels) and (images.labels.min() < 0 or images.labels.max() >= len(data.class_names)):
        raise DataError(f"zero-shot {name}: labels must lie in [0, {len(data.class_names)}), got "
                         f"[{images.labels.min()}, {images.labels.max()}]")
    top, per_draw = predict(images.compared, classes)
    results = scores(top, per_draw, images.labels, len(data.class_names))
    return {f"zeroshot/{name}/{k}": v for k, v in results.items()}
