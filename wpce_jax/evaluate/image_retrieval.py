"""Image -> image retrieval by class, the protocol of Musgrave et al. 2020 ("A Metric Learning Reality Check").

Every test image of a labelled set queries all the other test images (leave-one-out: the query is no candidate
of its own ranking); the relevant ones are those of its class. Metrics, means over the queries:
precision@1, R-precision and MAP@R (R = the number of other images of the query's class), and recall@1 (a hit
when the nearest other image is of the same class; by definition equal to precision@1). An image alone in its
class has no relevant item: none of these is defined for it, so it is left out of the means (as Musgrave et al.
and pytorch-metric-learning's AccuracyCalculator do) and counted in queries_without_match; when every image is
alone the means are NaN. Ties are broken by image index (metrics.py).

The compared vector is the one retrieval.py compares: with R evaluation RFF draws the draws' vectors concatenated
and divided by sqrt(R), so that a dot product is the mean similarity over the draws; for the CLIP baseline it is
the image's unit vector (cosine similarity). Ranking is by that similarity, or (by="distance", for models trained
with a distance loss: triplet, margin contrastive) by the squared Euclidean distance, which for WPCE feature maps
is the kernel distance g(P,P) + g(Q,Q) - 2 g(P,Q) and differs from the similarity by the candidates' norms: it is
a dot product too, of [x, 1] with [y, -|y|^2 / 2].

Graded relevance: a set whose classes carry label tuples (ClassificationSet.label_tuples, e.g. CIFAR-100's (coarse,
fine) converted with tfds_to_records --labels_features) also reports "ndcg@10" with the grades of relevance.py (the
run's config.data.relevance rule) between the query's and each other image's tuple, gains 2^rel - 1, leave-one-out
like the binary metrics, over the same ranking (similarity or distance); its mean is over the queries with another
image of positive grade (with "exact" or "hierarchical" relevance and (coarse, fine) tuples that is every image
with a class mate or a superclass mate). Scores stay on the device, a block of queries at a time
(metrics.retrieval_metrics); with a mesh of several devices each device ranks its share of every block.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from jax.sharding import Mesh

from wpce_jax.data.eval_sources import ClassificationSet
from wpce_jax.evaluate import metrics
from wpce_jax.evaluate.retrieval import NDCG_K, _flatten_draws, graded_ndcg_per_query
from wpce_jax.parallel import replicate

METRICS = ("precision@1", "r_precision", "map@r", "recall@1")  # means over the queries with a match


BY = ("similarity", "distance")


def scores(compared: np.ndarray, labels: np.ndarray, mesh: Optional[Mesh] = None,
           by: str = "similarity", label_tuples: Optional[np.ndarray] = None,
           rule: str = "exact") -> dict[str, float]:
    """Metric name (without prefix) -> mean over the queries that have another image of their class, from the
    compared vectors [N, R, F] and labels [N], ranked by similarity or by distance (module docstring); and
    "queries_without_match", the number of images alone in their class (left out of the means). With
    label_tuples [N, T] (each image's), also the graded "ndcg@10" by `rule` (module docstring)."""
    if by not in BY:
        raise ValueError(f"by must be one of {BY}, got {by!r}")
    queries = candidates = _flatten_draws(compared)
    if by == "distance":  # -|x - y|^2 / 2 = x . y - |y|^2 / 2 + (a constant of the query)
        ones = np.ones((len(queries), 1), np.float32)
        queries = np.concatenate([queries, ones], axis=1)
        candidates = np.concatenate([candidates, -0.5 * np.sum(candidates ** 2, axis=1, keepdims=True)], axis=1)
    graded = {}
    if label_tuples is not None:  # on the host arrays, before any replication
        ndcg, has_relevant = graded_ndcg_per_query(queries, candidates, label_tuples, label_tuples, rule,
                                                   exclude_self=True)
        graded[f"ndcg@{NDCG_K}"] = float(np.mean(ndcg[has_relevant])) if has_relevant.any() else float("nan")
    if mesh is not None and mesh.size > 1:
        # Identical on every process: replicated global arrays, so that retrieval_metrics spreads the blocks'
        # rows over the mesh.
        queries, candidates = replicate((queries, candidates), mesh)
    per_query = metrics.retrieval_metrics(queries, candidates, labels, labels, ks=(1,), exclude_self=True)
    _, group, size = np.unique(labels, return_inverse=True, return_counts=True)
    matched = size[group] > 1
    means = {name: float(np.mean(per_query[name][matched])) if matched.any() else float("nan") for name in METRICS}
    return {**means, **graded, "queries_without_match": int(np.sum(~matched))}


def evaluate(name: str, data: ClassificationSet, *, images, mesh: Optional[Mesh] = None,
             by: str = "similarity", rule: str = "exact") -> dict[str, float]:
    """image_retrieval/<name>/<metric> of one labelled set whose test images are encoded (encode.ImageFeatures;
    images that did not decode are missing from it). mesh: the devices that rank (default: one). With
    data.label_tuples (one per class) the graded ndcg@10 by `rule` too."""
    tuples = None if data.label_tuples is None else np.asarray(data.label_tuples)[images.labels]
    return {f"image_retrieval/{name}/{k}": v
            for k, v in scores(images.compared, images.labels, mesh, by, tuples, rule).items()}
