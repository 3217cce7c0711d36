"""Image <-> text retrieval with several captions per image: recall@1/5/10, NDCG@10 and mAP in both directions.

Image->text: each image queries every caption; the relevant ones are its own captions (COCO: 5 each; the built-in
digits: every caption of the same digit). Text->image: each caption queries every image; the relevant one is its
image. A query is a hit at k when any relevant item is among its top k. The similarity is the compared vectors'
dot product; with R evaluation RFF draws it is their mean, i.e. the dot product of the draws' vectors concatenated
and divided by sqrt(R). Scores never leave the device as a whole matrix (metrics.retrieval_metrics works in
blocks of queries).

Graded relevance: a set whose groups carry label tuples (CaptionSet.group_labels, e.g. the built-in digit pairs)
reports its ndcg@10 with the grades of relevance.py (the run's config.data.relevance rule) between the query's and
each candidate's tuple, gains 2^rel - 1 over the whole ranking of all candidates; recall@k and map stay binary (by
group).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from wpce_jax import relevance
from wpce_jax.data.eval_sources import CaptionSet
from wpce_jax.evaluate import metrics

KS = (1, 5, 10)
NDCG_K = 10


def _flatten_draws(features: np.ndarray) -> np.ndarray:
    """[N, R, F] -> [N, R * F] / sqrt(R): dot products become the mean over draws."""
    return (features.reshape(len(features), -1) / np.sqrt(features.shape[1])).astype(np.float32)


def direction_scores(queries, candidates, query_groups, candidate_groups) -> dict[str, float]:
    """Mean over queries of recall@{1,5,10}, ndcg@10 and map for one direction."""
    per_query = metrics.retrieval_metrics(queries, candidates, query_groups, candidate_groups, ks=KS,
                                          ndcg_k=NDCG_K)
    names = [f"recall@{k}" for k in KS] + [f"ndcg@{NDCG_K}", "map"]
    return {n: float(np.mean(per_query[n])) for n in names}


def graded_ndcg_per_query(queries, candidates, query_labels, candidate_labels, rule: str, k: int = NDCG_K,
                           block: int = 1024, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(NDCG@k [Q], has_relevant [Q] bool) with graded relevance: queries [Q, F] against candidates [N, F] (dot
    products), relevance.relevance(query_labels [Q, T], candidate_labels [N, T], rule) as the grades (gains
    2^rel - 1, the ideal DCG over all N candidates); has_relevant: some candidate has a grade > 0 (else NDCG is 0).
    exclude_self (queries and candidates one set, Q == N): candidate i scores -inf with grade 0 in query i's
    ranking, which is the ranking with that column deleted (metrics.retrieval_metrics does the same). A block of
    queries' [block, N] scores at a time."""
    if exclude_self and len(queries) != len(candidates):
        raise ValueError(f"exclude_self needs queries and candidates of one set, got {len(queries)} and "
                         f"{len(candidates)}")
    candidates, candidate_labels = jnp.asarray(candidates), jnp.asarray(candidate_labels, jnp.int32)
    ndcg, has_relevant = [], []
    for start in range(0, len(queries), block):
        scores = jnp.matmul(jnp.asarray(queries[start:start + block]), candidates.T, precision="highest")
        grades = relevance.relevance(jnp.asarray(query_labels[start:start + block], jnp.int32), candidate_labels,
                                     rule)
        if exclude_self:
            is_self = jnp.arange(scores.shape[1])[None, :] == start + jnp.arange(scores.shape[0])[:, None]
            scores, grades = jnp.where(is_self, -jnp.inf, scores), jnp.where(is_self, 0.0, grades)
        ndcg.append(np.asarray(metrics.ndcg_at_k(scores, grades, k)))
        has_relevant.append(np.asarray(jnp.any(grades > 0, axis=1)))
    return np.concatenate(ndcg), np.concatenate(has_relevant)


def graded_ndcg(queries, candidates, query_labels, candidate_labels, rule: str, k: int = NDCG_K,
                block: int = 1024) -> float:
    """Mean over all queries of NDCG@k with graded relevance (graded_ndcg_per_query)."""
    return float(np.mean(graded_ndcg_per_query(queries, candidates, query_labels, candidate_labels, rule, k,
                                               block)[0]))


def evaluate(name: str, data: CaptionSet, images, *, encoders, params, rffs, tokenizer,
             rule: str = "exact") -> dict[str, float]:
    """retrieval/<name>/{i2t,t2i}_<metric> of one image-caption set whose images are encoded
    (encode.ImageFeatures; images that did not decode are missing from it). With data.group_labels the ndcg@10 is
    graded by `rule` (module docstring)."""
    # A caption set's images carry their group as their "label" (usually their own index; eval_sources.CaptionSet).
    image_groups = images.labels
    # Captions of an image that did not decode would be queries without an answer: leave them out too.
    kept = np.isin(data.caption_groups, image_groups)
    captions, caption_groups = [c for c, k in zip(data.captions, kept) if k], data.caption_groups[kept]
    texts = encoders.texts(params, rffs, tokenizer(captions))
    image_vectors, text_vectors = _flatten_draws(images.compared), _flatten_draws(texts)
    results = {}
    for direction, args in (("i2t", (image_vectors, text_vectors, image_groups, caption_groups)),
                            ("t2i", (text_vectors, image_vectors, caption_groups, image_groups))):
        for metric, value in direction_scores(*args).items():
            results[f"retrieval/{name}/{direction}_{metric}"] = value
    if data.group_labels is not None:
        tuples = np.asarray(data.group_labels)
        image_tuples, caption_tuples = tuples[image_groups], tuples[caption_groups]
        for direction, args in (("i2t", (image_vectors, text_vectors, image_tuples, caption_tuples)),
                                ("t2i", (text_vectors, image_vectors, caption_tuples, image_tuples))):
            results[f"retrieval/{name}/{direction}_ndcg@{NDCG_K}"] = graded_ndcg(*args, rule)
    return results
