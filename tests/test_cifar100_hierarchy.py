"""configs/cifar100_hierarchy.py and the image-only ranking mode ("image_ranking", objectives.py).

On 8 fake devices the sharded image_ranking objective equals losses.ranking_loss on the global batch of the two
views with hierarchical grades computed by hand; on tfds.testing.mock_data's cifar100 (no download), the conversion
keeps each image's (coarse, fine) tuple, the converted test set gives each class its tuple, and a few ranking steps
train in-process and evaluate the graded image retrieval."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from runs import ROOT, tiny_config
from wpce_jax import losses, train
from wpce_jax.config_validation import RANKING_LOSSES, mode_settings, validate_config
from wpce_jax.parallel import BATCH_AXES, make_mesh
from wpce_jax.train_step import make_objective_fn

tfds = pytest.importorskip("tensorflow_datasets")

CONFIG = os.path.join(ROOT, "configs", "cifar100_hierarchy.py")


def hierarchical(a, b):
    """Grades [len(a), len(b)] by hand: the length of the common prefix of two label tuples."""
    g = np.zeros((len(a), len(b)), np.float32)
    for i, s in enumerate(a):
        for j, t in enumerate(b):
            n = 0
            while n < len(s) and s[n] == t[n]:
                n += 1
            g[i, j] = n
    return g


@pytest.mark.parametrize("direction", ["i2t", "both"])
def test_image_ranking_objective_equals_the_global_loss(direction):
    mesh = make_mesh()
    rng = np.random.default_rng(1)
    b, f = 32, 12
    x, y = rng.normal(size=(2, b, f)).astype(np.float32)
    fine = rng.integers(0, 6, b)
    labels = np.stack([fine // 3, fine], axis=1).astype(np.int32)  # every grade 0, 1, 2 occurs
    rows = NamedSharding(mesh, P(BATCH_AXES))
    vectors = tuple(jax.device_put(v, rows) for v in (x, y))
    batch = {"labels": jax.device_put(labels, rows)}
    params = {"logit_scale": jnp.float32(5.0)}  # "wpce": the scale as is
    grades = hierarchical(labels, labels)
    for kind in RANKING_LOSSES:
        config = tiny_config("unused", CONFIG, f"ranking,wpce,{kind}", **{"ranking.direction": direction})
        got, metrics = jax.jit(make_objective_fn(None, config, mesh, mode_settings(config)))(params, vectors, batch)
        if kind == "infonce":  # the partner view only
            rel = np.eye(b, dtype=np.float32)
            kind = "softmax"
        else:
            rel = grades / 2 if kind == "pointwise_sigmoid" else grades
        i2t, t2i = losses.ranking_loss(x, y, rel, 5.0, kind), losses.ranking_loss(y, x, rel, 5.0, kind)
        want = {"i2t": i2t, "both": (i2t + t2i) / 2}[direction]
        np.testing.assert_allclose(got, want, rtol=2e-6, err_msg=kind)
        assert set(metrics) == {"train/view_top1"}


def test_config_args():
    for arg in ("ranking", "ranking,clip,approx_ndcg", "labelled", "labelled,clip"):
        config = tiny_config("unused", CONFIG, arg, **{"data.train_dir": "/d/train", "data.tokenizer_path": "/d/s",
                                                      "eval.image_retrieval": "c=arrayrecord:/d/test"})
        validate_config(config)
        assert config.data.relevance == "hierarchical"
        assert config.mode == ("labelled" if arg.startswith("labelled") else "image_ranking")
    for bad in ("ranking,listnet", "labelled,softmax", "two_view"):
        with pytest.raises(ValueError, match="cifar100_hierarchy"):
            tiny_config("unused", CONFIG, bad)


class _Hierarchical:
    """mock_data draws coarse and fine labels independently; CIFAR-100's fine class has one superclass. This
    source makes it so (coarse = fine // 5), everything else as mock_data made it."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        ex = self.source[i]
        return dict(ex, coarse_label=np.int64(int(ex["label"]) // 5))


def test_cifar100_conversion_keeps_tuples_and_ranking_trains(tmp_path, monkeypatch):
    from wpce_jax.data import records, tfds_to_records
    from wpce_jax.data.eval_sources import records_source
    from wpce_jax.data.train_tokenizer import train_sentencepiece

    open_sources = tfds_to_records.open_sources

    def sources(*args, **kwargs):
        builder, found = open_sources(*args, **kwargs)
        return builder, {s: _Hierarchical(v) for s, v in found.items()}

    monkeypatch.setattr(tfds_to_records, "open_sources", sources)
    out = tmp_path / "out"
    with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
        _, found = tfds_to_records.open_sources("cifar100", str(tmp_path / "tfds"))
        source = {f"{s}/{i}": found[s][i] for s in found for i in range(len(found[s]))}
        tfds_to_records.convert("cifar100", str(tmp_path / "tfds"), str(out), progress=False,
                                labels_features=["coarse_label", "label"])
    recs = []
    for half in ("train", "test"):
        manifest = records.read_manifest(str(out / half))
        assert manifest["labels_features"] == ["coarse_label", "label"]
        for path in records.shard_paths(str(out / half), manifest):
            recs += [(half, records.decode_record(r)) for r in records.read_records(path)]
    assert len(recs) == len(source) == 48
    for half, r in recs:
        ex = source[r["key"]]
        assert r["labels"] == [int(ex["label"]) // 5, int(ex["label"])]  # (coarse, fine), the original numbers
        assert r["label"] == int(ex["label"]) - (50 if half == "test" else 0)
    test = records_source(str(out / "test"))
    for _, r in (p for p in recs if p[0] == "test"):
        assert list(test.label_tuples[r["label"]]) == r["labels"]

    captions = [r["caption"] for _, r in recs]
    model = train_sentencepiece(iter(captions * 4), str(tmp_path / "spm"), 40)
    config = tiny_config("unused", CONFIG, "ranking,wpce,approx_ndcg", total_steps=3, eval_every_steps=3,
                         checkpoint_every_steps=3, log_every_steps=1, batch_size=16, **{
                             "data.train_dir": str(out / "train"), "data.tokenizer_path": model,
                             "eval.image_retrieval": f"c100h=arrayrecord:{out / 'test'}", "eval.batch_size": 16})
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        lines = [json.loads(line) for line in f]
    loss = [m["train/loss"] for m in lines if "train/loss" in m]
    assert len(loss) == 3 and np.all(np.isfinite(loss))
    assert 0 < result["image_retrieval/c100h/ndcg@10"] <= 1
    assert 0 <= result["image_retrieval/c100h/precision@1"] <= 1
