"""Ranking and classification metrics against scikit-learn and plain float64 loops, with and without ties, blocked
and sharded retrieval against the full matrix."""
from functools import partial

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from sklearn.metrics import (average_precision_score, balanced_accuracy_score, ndcg_score,
                             top_k_accuracy_score)

from wpce_jax.evaluate import metrics
from wpce_jax.evaluate.metrics import (average_precision, map_at_r, mean_per_class_recall, ndcg_at_k,
                                       precision_at_1, r_precision, recall_at_k, retrieval_metrics,
                                       top_k_accuracy)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # sklearn: k >= n_classes, absent classes

# Binary metrics (recall, precision@1, top-k) are compared exactly; the float32 ones (NDCG, AP, R-precision,
# MAP@R) to float64 references within 1e-6 absolute (a few float32 roundings of numbers in [0, 1]).
ATOL = 1e-6


# ---------------------------------------------------------------------------- plain float64 references


def ranking(row):
    """Candidate indices by descending score, ties to the lower index."""
    return sorted(range(len(row)), key=lambda j: (-row[j], j))


def ref_recall(scores, relevant, k):
    return np.array([float(any(relevant[q][j] for j in ranking(scores[q])[:k])) for q in range(len(scores))])


def ref_precision_at_1(scores, relevant):
    return np.array([float(relevant[q][ranking(scores[q])[0]]) for q in range(len(scores))])


def ref_r_metrics(scores, relevant):
    rp, mapr = [], []
    for q in range(len(scores)):
        rel = [bool(relevant[q][j]) for j in ranking(scores[q])]
        r = sum(rel)
        if r == 0:
            rp.append(0.0)
            mapr.append(0.0)
            continue
        rp.append(sum(rel[:r]) / r)
        mapr.append(sum(sum(rel[:i + 1]) / (i + 1) for i in range(r) if rel[i]) / r)
    return np.array(rp), np.array(mapr)


def ref_average_precision(scores, relevant):
    """Step over distinct scores (thresholds) in descending order: recall increase times precision."""
    out = []
    for s, rel in zip(scores, relevant):
        total = rel.sum()
        ap = 0.0
        for t in sorted(set(s.tolist()), reverse=True):
            above = s >= t
            ap += rel[s == t].sum() / total * rel[above].sum() / above.sum() if total else 0.0
        out.append(ap)
    return np.array(out)


def ref_ndcg(scores, relevance, k):
    """Tie groups of the descending ranking share the mean gain of the group at each of their ranks."""
    out = []
    for s, rel in zip(scores, relevance):
        gains = 2.0 ** rel - 1
        order = ranking(s)
        dcg = 0.0
        for i in range(min(k, len(s))):
            group = [j for j in order if s[j] == s[order[i]]]
            dcg += np.mean(gains[group]) / np.log2(i + 2)
        ideal = sum(g / np.log2(i + 2) for i, g in enumerate(sorted(gains, reverse=True)[:k]))
        out.append(dcg / ideal if ideal > 0 else 0.0)
    return np.array(out)


def ref_top_k(logits, labels, k):
    return np.array([float(labels[b] in ranking(logits[b])[:k]) for b in range(len(labels))])


# ---------------------------------------------------------------------------- inputs


def tied_scores(rng, q, n, levels=5):
    """Scores on a few levels, so most rows hold many ties (exact in float32)."""
    return (rng.integers(0, levels, size=(q, n)) * 0.25 - 0.5).astype(np.float32)


def continuous_scores(rng, q, n):
    return rng.normal(size=(q, n)).astype(np.float32)


def relevance_with_empty_rows(rng, q, n, p=0.2, empty=(1, 5)):
    rel = rng.random((q, n)) < p
    rel[list(empty)] = False  # queries with no relevant item
    rel[0, :] = False
    rel[0, n - 1] = True  # a single relevant item at the end
    return rel


SCORES = {"continuous": continuous_scores, "tied": tied_scores}


@pytest.mark.parametrize("kind", SCORES)
def test_binary_ranking_metrics_match_brute_force(kind):
    rng = np.random.default_rng(0 if kind == "continuous" else 1)
    scores = SCORES[kind](rng, 24, 30)
    rel = relevance_with_empty_rows(rng, 24, 30)
    s64 = scores.astype(np.float64)
    for k in (1, 3, 50):  # 50 > N
        got = np.asarray(recall_at_k(scores, rel, k))
        assert got.dtype == np.float32 and got.shape == (24,)
        np.testing.assert_array_equal(got, ref_recall(s64, rel, k))
    assert 0 < ref_recall(s64, rel, 3).mean() < 1
    np.testing.assert_array_equal(np.asarray(precision_at_1(scores, rel)), ref_precision_at_1(s64, rel))
    rp, mapr = ref_r_metrics(s64, rel)
    assert 0 < mapr.mean() < rp.mean() < 1
    np.testing.assert_allclose(np.asarray(r_precision(scores, rel)), rp, atol=ATOL)
    np.testing.assert_allclose(np.asarray(map_at_r(scores, rel)), mapr, atol=ATOL)
    for name in ("r", "ap"):
        fn = r_precision if name == "r" else map_at_r
        assert np.all(np.asarray(fn(scores, rel))[[1, 5]] == 0)  # no relevant item


def test_tie_rule_is_lower_index_first():
    scores = np.array([[0.5, 0.9, 0.9, 0.1]], np.float32)
    assert float(precision_at_1(scores, np.array([[0, 1, 0, 0]], bool))[0]) == 1.0
    assert float(precision_at_1(scores, np.array([[0, 0, 1, 0]], bool))[0]) == 0.0
    assert float(recall_at_k(scores, np.array([[0, 0, 1, 0]], bool), 1)[0]) == 0.0
    assert float(recall_at_k(scores, np.array([[0, 0, 1, 0]], bool), 2)[0]) == 1.0
    # -0.0 and 0.0 are one score: the lower index still wins.
    assert float(precision_at_1(np.array([[0.0, -0.0]], np.float32), np.array([[1, 0]], bool))[0]) == 1.0
    assert float(r_precision(np.array([[-0.0, 0.0, -1]], np.float32), np.array([[1, 0, 0]], bool))[0]) == 1.0


@pytest.mark.parametrize("kind", SCORES)
def test_average_precision_matches_sklearn(kind):
    rng = np.random.default_rng(2 if kind == "continuous" else 3)
    scores = SCORES[kind](rng, 24, 30)
    rel = relevance_with_empty_rows(rng, 24, 30, p=0.3)
    rel[2] = True  # every item relevant: AP = 1
    got = np.asarray(average_precision(scores, rel))
    assert got.dtype == np.float32
    for q in range(24):
        want = average_precision_score(rel[q], scores[q].astype(np.float64)) if rel[q].any() else 0.0
        assert got[q] == pytest.approx(want, abs=ATOL), q
    np.testing.assert_allclose(got, ref_average_precision(scores.astype(np.float64), rel), atol=ATOL)
    assert got[2] == 1.0 and got[1] == 0.0 and got[5] == 0.0


@pytest.mark.parametrize("kind", SCORES)
def test_ndcg_matches_sklearn_with_graded_relevance(kind):
    rng = np.random.default_rng(4 if kind == "continuous" else 5)
    q, n = 24, 30
    scores = SCORES[kind](rng, q, n)
    relevance = rng.integers(0, 4, size=(q, n)).astype(np.float32) * (rng.random((q, n)) < 0.5)
    relevance[[1, 5]] = 0  # no relevant item
    s64, r64 = scores.astype(np.float64), relevance.astype(np.float64)
    for k in (1, 5, 50):  # 50 > N
        got = np.asarray(ndcg_at_k(scores, relevance, k))
        assert got.dtype == np.float32 and got.shape == (q,)
        want = np.array([ndcg_score([2 ** r64[i] - 1], [s64[i]], k=k) for i in range(q)])
        np.testing.assert_allclose(got, want, atol=ATOL)
        np.testing.assert_allclose(got, ref_ndcg(s64, r64, k), atol=ATOL)
        assert np.all(got[[1, 5]] == 0)
    if kind == "tied":
        # The tie averaging at the cut-off is exercised: groups straddle rank 5 in most rows.
        ordered = -np.sort(-s64, axis=1)
        assert (ordered[:, 4] == ordered[:, 5]).sum() > q // 2


def test_ndcg_tie_straddling_the_cut_off():
    # Ranks 2..4 tie; k = 3 cuts the group after its first two ranks: mean gain (3 + 0 + 1) / 3 for both.
    scores = np.array([[0.9, 0.5, 0.5, 0.5, 0.1]], np.float32)
    relevance = np.array([[1.0, 2.0, 0.0, 1.0, 3.0]], np.float32)
    gains = 2 ** relevance[0].astype(np.float64) - 1
    dcg = gains[0] + gains[1:4].mean() * (1 / np.log2(3) + 1 / np.log2(4))
    ideal = 7 + 3 / np.log2(3) + 1 / np.log2(4)
    assert float(ndcg_at_k(scores, relevance, 3)[0]) == pytest.approx(dcg / ideal, abs=ATOL)
    assert float(ndcg_at_k(scores, relevance, 3)[0]) == pytest.approx(ndcg_score([gains], scores, k=3), abs=ATOL)


def test_top_k_accuracy():
    rng = np.random.default_rng(6)
    b, c = 40, 12
    logits = continuous_scores(rng, b, c)
    labels = rng.integers(0, c, size=b)
    for k in (1, 3, 5, 20):  # 20 > C
        got = np.asarray(top_k_accuracy(logits, labels, k))
        assert got.dtype == np.float32 and got.shape == (b,)
        want = [top_k_accuracy_score([labels[i]], logits[i:i + 1].astype(np.float64), k=k, labels=np.arange(c))
                for i in range(b)]
        np.testing.assert_array_equal(got, want)
    # sklearn breaks ties toward the higher index; with ties, the plain loop is the reference.
    tied = tied_scores(rng, b, c, levels=3)
    for k in (1, 3, 5):
        np.testing.assert_array_equal(np.asarray(top_k_accuracy(tied, labels, k)),
                                      ref_top_k(tied.astype(np.float64), labels, k))
    assert 0 < ref_top_k(tied, labels, 3).mean() < 1


def test_mean_per_class_recall_matches_balanced_accuracy():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 8, size=300)  # classes 8 and 9 absent from the labels
    predictions = np.where(rng.random(300) < 0.6, labels, rng.integers(0, 10, size=300))
    got = mean_per_class_recall(predictions, labels, 10)
    assert 0.5 < got < 0.9
    assert got == pytest.approx(balanced_accuracy_score(labels, predictions), rel=1e-12)
    assert mean_per_class_recall(jax.numpy.asarray(predictions), jax.numpy.asarray(labels), 10) == got
    with pytest.raises(ValueError, match="labels must lie"):
        mean_per_class_recall(predictions, labels, 5)


# ---------------------------------------------------------------------------- blocked retrieval


def coco_like(rng, images=40, per_image=5, dim=16, noise=3.0, integer=False):
    """Image features and `per_image` captions each (caption = image + noise), unit norm; groups = image index."""
    if integer:  # small integers: every dot product exact in float32, so ties are exact everywhere
        img = rng.integers(-1, 2, size=(images, dim)).astype(np.float32)
        cap = np.repeat(img, per_image, 0) + rng.integers(-1, 2, size=(images * per_image, dim))
        return img, cap.astype(np.float32)
    img = rng.normal(size=(images, dim))
    cap = np.repeat(img, per_image, 0) + noise * rng.normal(size=(images * per_image, dim))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    cap /= np.linalg.norm(cap, axis=1, keepdims=True)
    return img.astype(np.float32), cap.astype(np.float32)


def reference_metrics(q, c, qg, cg, ks, ndcg_k):
    scores = q.astype(np.float64) @ c.astype(np.float64).T
    return reference_metrics_from_scores(scores, qg[:, None] == cg[None, :], ks, ndcg_k)


@partial(jax.jit, static_argnames=("ks", "ndcg_k"))  # one compile for all the metrics of a direction
def full_matrix_metrics(q, c, qg, cg, ks, ndcg_k):
    scores = jax.numpy.matmul(q, c.T, precision=jax.lax.Precision.HIGHEST)
    rel = qg[:, None] == cg[None, :]
    out = {f"recall@{k}": recall_at_k(scores, rel, k) for k in ks}
    out[f"ndcg@{ndcg_k}"] = ndcg_at_k(scores, rel.astype(np.float32), ndcg_k)
    out["map"] = average_precision(scores, rel)
    out["r_precision"], out["map@r"] = r_precision(scores, rel), map_at_r(scores, rel)
    out["precision@1"] = precision_at_1(scores, rel)
    return out


def assert_metrics_close(got, want):
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == np.float32 and got[name].shape == np.shape(want[name]), name
        if name.startswith("recall@") or name == "precision@1":
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        else:
            np.testing.assert_allclose(got[name], want[name], atol=ATOL, err_msg=name)


DIRECTIONS = {"i2t": 12, "t2i": 44}  # block sizes below Q (40 and 200) that do not divide it


def directions(img, cap, per_image=5):
    img_g, cap_g = np.arange(len(img)), np.repeat(np.arange(len(img)), per_image)
    return {"i2t": (img, cap, img_g, cap_g), "t2i": (cap, img, cap_g, img_g)}


@pytest.fixture(params=["counted", "sorted"])
def path(request, monkeypatch):
    """retrieval_metrics ranks only the relevant items (few per query) or sorts every row: both are checked."""
    if request.param == "sorted":
        monkeypatch.setattr(metrics, "_MAX_COUNTED", 0)
    return request.param


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_retrieval_metrics_blocked_equals_full_and_reference(direction, path):
    ks, ndcg_k = (1, 5, 10), 10
    q, c, qg, cg = directions(*coco_like(np.random.default_rng(8)))[direction]
    got = retrieval_metrics(q, c, qg, cg, ks=ks, ndcg_k=ndcg_k, block_size=DIRECTIONS[direction])
    assert 0.1 < got["recall@1"].mean() < got["recall@10"].mean() < 1  # neither trivial nor perfect
    assert_metrics_close(got, jax.device_get(full_matrix_metrics(q, c, qg, cg, ks, ndcg_k)))
    assert_metrics_close(got, reference_metrics(q, c, qg, cg, ks, ndcg_k))


def test_retrieval_metrics_with_exact_ties_and_queries_without_relevant(path):
    rng = np.random.default_rng(9)
    img, cap = coco_like(rng, images=12, per_image=3, dim=6, integer=True)
    keep = np.ones(36, bool)
    keep[[4, 5, 9]] = False  # groups of 3, 1 and 2 captions
    # i2t with exact ties among 33 candidates; groups 1000 + i, so the ids are not indices.
    q, c, qg, cg = img, cap[keep], 1000 + np.arange(12), 1000 + np.repeat(np.arange(12), 3)[keep]
    qg[[0, 7]] = 99  # no caption of group 99
    got = retrieval_metrics(q, c, qg, cg, ks=(1, 3, 40), ndcg_k=3, block_size=5)
    scores = q.astype(np.float64) @ c.T.astype(np.float64)
    assert np.mean([len(set(row)) for row in scores]) < 15  # many ties among 33 candidates
    assert_metrics_close(got, reference_metrics(q, c, qg, cg, (1, 3, 40), 3))
    for name in got:
        assert np.all(got[name][[0, 7]] == 0), name
    rel = qg[:, None] == cg[None, :]
    sk_ap = [average_precision_score(rel[i], scores[i]) for i in range(len(q)) if rel[i].any()]
    np.testing.assert_allclose(got["map"][rel.any(1)], sk_ap, atol=ATOL)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_retrieval_metrics_sharded_features(direction, path):
    assert jax.device_count() == 8
    q, c, qg, cg = directions(*coco_like(np.random.default_rng(10)))[direction]
    want = retrieval_metrics(q, c, qg, cg, block_size=DIRECTIONS[direction])
    rows = NamedSharding(jax.make_mesh((8,), ("data",)), P("data"))
    qs, cs = jax.device_put(q, rows), jax.device_put(c, rows)
    got = retrieval_metrics(qs, cs, qg, cg, block_size=DIRECTIONS[direction])
    assert_metrics_close(got, want)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\[Q, N\] with the same shape"):
        recall_at_k(np.ones((2, 3)), np.ones((2, 4), bool), 1)
    with pytest.raises(ValueError, match="features must be"):
        retrieval_metrics(np.ones((4, 3)), np.ones((5, 2)), np.arange(4), np.arange(5))
    with pytest.raises(ValueError, match="groups must be"):
        retrieval_metrics(np.ones((4, 3)), np.ones((5, 3)), np.arange(3), np.arange(5))


# ---------------------------------------------------------------------------- leave-one-out (exclude_self)


def reference_excluding_self(x, groups, ks, ndcg_k):
    """The float64 references on each query's row with its own column deleted (not merely made irrelevant)."""
    scores = x.astype(np.float64) @ x.astype(np.float64).T
    rows = []
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        row = reference_metrics_from_scores(scores[i:i + 1, keep], groups[i:i + 1, None] == groups[None, keep], ks,
                                            ndcg_k)
        rows.append(row)
    return {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}


def reference_metrics_from_scores(scores, rel, ks, ndcg_k):
    out = {f"recall@{k}": ref_recall(scores, rel, k) for k in ks}
    out[f"ndcg@{ndcg_k}"] = ref_ndcg(scores, rel.astype(np.float64), ndcg_k)
    out["map"] = ref_average_precision(scores, rel)
    out["r_precision"], out["map@r"] = ref_r_metrics(scores, rel)
    out["precision@1"] = ref_precision_at_1(scores, rel)
    return out


def one_set_with_ties(rng, n=30, dim=4, classes=4):
    """Features on a 0.5 grid (every dot product exact in float32: many ties), with exact duplicates so that some
    query ties with its own score; class 99 holds a single image (no other relevant item)."""
    labels = rng.integers(0, classes, n)
    x = np.round(2 * (labels[:, None] == np.arange(dim)[None, :] % classes) + rng.normal(size=(n, dim))) / 2
    x[[3, 11, 20]] = x[[2, 10, 19]]  # duplicates: a tie with the self score, at the top of the row
    labels[7] = 99
    return x.astype(np.float32), labels


@pytest.mark.parametrize("block_size", [7, 30, 64])  # 7 does not divide 30
def test_retrieval_metrics_exclude_self_matches_deleting_the_column(block_size, path):
    ks, ndcg_k = (1, 3, 40), 5  # 40 > N - 1
    x, labels = one_set_with_ties(np.random.default_rng(11))
    got = retrieval_metrics(x, x, labels, labels, ks=ks, ndcg_k=ndcg_k, block_size=block_size, exclude_self=True)
    want = reference_excluding_self(x, labels, ks, ndcg_k)
    assert_metrics_close(got, want)
    scores = x.astype(np.float64) @ x.T.astype(np.float64)
    assert np.mean([len(set(row)) for row in scores]) < 20  # many ties among 30 candidates
    assert 0.2 < want["precision@1"].mean() < 1 and 0 < want["map@r"].mean() < want["r_precision"].mean() < 1
    for name in got:
        assert got[name][7] == 0, name  # alone in its class
    # Leaving the query in (even as an irrelevant item) gives other numbers: the self score tops most rows.
    kept = reference_metrics_from_scores(scores, (labels[:, None] == labels[None, :]) & ~np.eye(30, dtype=bool),
                                         ks, ndcg_k)
    assert not np.allclose(kept["map@r"], want["map@r"], atol=1e-3)


def test_retrieval_metrics_exclude_self_sharded(path):
    assert jax.device_count() == 8
    x, labels = one_set_with_ties(np.random.default_rng(12), n=48)
    want = reference_excluding_self(x, labels, (1, 5), 10)
    xs = jax.device_put(x, NamedSharding(jax.make_mesh((8,), ("data",)), P("data")))
    # Blocks of 36 rounded up to 40 rows (5 a device): the second block is padded.
    got = retrieval_metrics(xs, xs, labels, labels, ks=(1, 5), block_size=36, exclude_self=True)
    assert_metrics_close(got, want)


def test_retrieval_metrics_exclude_self_edge_cases():
    # Every class a singleton: no query has a relevant item.
    x = np.eye(3, dtype=np.float32)
    got = retrieval_metrics(x, x, np.arange(3), np.arange(3), ks=(1,), exclude_self=True)
    assert all(np.all(v == 0) for v in got.values())
    # One image: no candidate at all.
    got = retrieval_metrics(x[:1], x[:1], np.zeros(1), np.zeros(1), ks=(1,), exclude_self=True)
    assert all(np.all(v == 0) for v in got.values())
    with pytest.raises(ValueError, match="same set on both sides"):
        retrieval_metrics(np.ones((4, 3)), np.ones((5, 3)), np.arange(4), np.arange(5), exclude_self=True)
    with pytest.raises(ValueError, match="same set on both sides"):
        retrieval_metrics(np.ones((4, 3)), np.ones((4, 3)), np.arange(4), np.arange(4) + 1, exclude_self=True)
