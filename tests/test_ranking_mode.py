"""config.mode = "ranking" (objectives.py) and the built-in digit pairs (configs/digit_pairs.py).

On 8 fake devices: the sharded ranking objective equals losses.ranking_loss on the global batch with the relevance
computed by hand (every kind, every direction; "infonce" equals symmetric InfoNCE); accumulation over 2
micro-batches gives the unsplit loss and gradient; the graded NDCG of the retrieval evaluation against NumPy;
and short digit-pairs runs of every kind train and log graded NDCG."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from runs import ROOT, final_params, tiny_config, train_here
from runs import losses as logged_losses
from test_accumulation import assert_gradients_close
from wpce_jax import losses, train
from wpce_jax.config_validation import RANKING_LOSSES, mode_settings, validate_config
from wpce_jax.data.digit_pairs import PAIRS
from wpce_jax.errors import ConfigError
from wpce_jax.evaluate.retrieval import graded_ndcg
from wpce_jax.models.model_config import make_model
from wpce_jax.optimizer import make_optimizer
from wpce_jax.parallel import BATCH_AXES, global_batch, make_mesh, replicated
from wpce_jax.similarity import train_rff
from wpce_jax.train_step import initial_state, make_grad_fn, make_objective_fn

CONFIG = os.path.join(ROOT, "configs", "digit_pairs.py")
VOCAB = {"model.text.vocab_size": 64, "model.text.eot_id": 1}


def positional(a, b):
    """Grades [len(a), len(b)] by hand: the number of equal positions of two label tuples."""
    return (a[:, None, :] == b[None, :, :]).sum(-1).astype(np.float32)


@pytest.mark.parametrize("direction", ["t2i", "i2t", "both"])
def test_sharded_objective_equals_the_global_loss(direction):
    mesh = make_mesh()
    rng = np.random.default_rng(0)
    b, f = 32, 12
    x, y = rng.normal(size=(2, b, f)).astype(np.float32)
    labels = rng.integers(0, 3, size=(b, 2)).astype(np.int32)  # few values: every grade 0, 1, 2 occurs
    rows = NamedSharding(mesh, P(BATCH_AXES))
    vectors = tuple(jax.device_put(v, rows) for v in (x, y))
    batch = {"labels": jax.device_put(labels, rows)}
    params = {"logit_scale": jnp.float32(7.0)}  # "wpce": the scale as is
    grades = positional(labels, labels)
    for kind in RANKING_LOSSES:
        config = tiny_config("unused", CONFIG, f"wpce,{kind}", **{"ranking.direction": direction})
        objective = jax.jit(make_objective_fn(None, config, mesh, mode_settings(config)))
        got, metrics = objective(params, vectors, batch)
        if kind == "infonce":
            t2i = losses.ranking_loss(y, x, np.eye(b, dtype=np.float32), 7.0, "softmax")
            i2t = losses.ranking_loss(x, y, np.eye(b, dtype=np.float32), 7.0, "softmax")
        else:
            rel = grades / 2 if kind == "pointwise_sigmoid" else grades  # positional: the largest grade is K = 2
            t2i, i2t = losses.ranking_loss(y, x, rel, 7.0, kind), losses.ranking_loss(x, y, rel, 7.0, kind)
        want = {"t2i": t2i, "i2t": i2t, "both": (t2i + i2t) / 2}[direction]
        np.testing.assert_allclose(got, want, rtol=2e-6, err_msg=kind)
        if kind == "infonce" and direction == "both":
            np.testing.assert_allclose(got, losses.symmetric_infonce(x, y, 7.0), rtol=2e-6)
        assert set(metrics) == {"train/logit_scale", "train/i2t_top1", "train/t2i_top1"}


def test_accumulation_2_equals_1():
    mesh = make_mesh()
    key = jax.random.key(3)
    rng = np.random.default_rng(1)
    base = tiny_config("unused", CONFIG, "wpce,approx_ndcg", **VOCAB)
    batch = global_batch({"image": rng.normal(size=(32, 32, 32, 3)).astype(np.float32),
                          "tokens": rng.integers(2, 64, size=(32, base.model.text.context_length)).astype(np.int32),
                          "labels": rng.integers(0, 10, size=(32, 2)).astype(np.int32)}, mesh)
    results = {}
    for k in (1, 2):
        config = tiny_config("unused", CONFIG, "wpce,approx_ndcg", **VOCAB, **{"optim.accum_steps": k})
        settings = validate_config(config)
        model = make_model(config)
        params = jax.device_put(initial_state(model, make_optimizer(config), config, key).params, replicated(mesh))
        out = jax.jit(make_grad_fn(model, config, mesh, settings))(params, batch, train_rff(key, 0, config))
        results[k] = jax.tree.map(np.asarray, out)
    (loss1, metrics1), grads1 = results[1]
    (loss2, metrics2), grads2 = results[2]
    assert np.isfinite(loss1)
    np.testing.assert_allclose(loss2, loss1, rtol=1e-6)
    for name in metrics1:
        np.testing.assert_allclose(metrics2[name], metrics1[name], rtol=1e-6, atol=1e-7, err_msg=name)
    assert_gradients_close(grads2, grads1)


def test_graded_ndcg_against_numpy():
    rng = np.random.default_rng(2)
    queries, candidates = rng.normal(size=(37, 5)), rng.normal(size=(23, 5))
    q_labels, c_labels = rng.integers(0, 3, size=(37, 2)), rng.integers(0, 3, size=(23, 2))
    scores, rel = queries @ candidates.T, positional(q_labels, c_labels)
    gains = 2.0 ** rel - 1
    order = np.argsort(-scores, axis=1)[:, :10]  # continuous random scores: no ties
    discount = 1 / np.log2(np.arange(10) + 2)
    dcg = (np.take_along_axis(gains, order, 1) * discount).sum(1)
    ideal = (-np.sort(-gains, axis=1)[:, :10] * discount).sum(1)
    want = np.mean(np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1), 0))
    got = graded_ndcg(queries.astype(np.float32), candidates.astype(np.float32), q_labels, c_labels, "positional",
                      block=8)  # several blocks, the last one short
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_bad_ranking_fields_fail_validation():
    for overrides, match in (({"ranking.kind": "listnet"}, "ranking.kind"),
                             ({"ranking.direction": "up"}, "ranking.direction"),
                             ({"data.relevance": "fuzzy"}, "data.relevance")):
        with pytest.raises(ConfigError, match=match):
            validate_config(tiny_config("unused", CONFIG, "clip", **overrides))
    with pytest.raises(ValueError, match="digit_pairs.py takes"):
        tiny_config("unused", CONFIG, "wpce,listnet")


def test_records_without_label_tuples_are_refused():
    from wpce_jax.objectives import check_batch

    with pytest.raises(ConfigError, match="label tuple"):
        check_batch("ranking", {"image": np.zeros((2, 4, 4, 3)), "label": np.zeros(2, np.int32)})


@pytest.mark.parametrize("arg", ["wpce,softmax", "wpce,pairwise_logistic", "clip,approx_ndcg",
                                 "wpce,pointwise_sigmoid", "wpce,infonce"])
def test_digit_pairs_trains_and_logs_graded_ndcg(cache_dir, tmp_path, arg):
    config = tiny_config(cache_dir, CONFIG, arg, total_steps=20, eval_every_steps=20, checkpoint_every_steps=20,
                         log_every_steps=1)
    result = train.train_and_evaluate(config, str(tmp_path))
    with open(tmp_path / "metrics.jsonl") as f:
        lines = [json.loads(line) for line in f]
    loss = [m["train/loss"] for m in lines if "train/loss" in m]
    assert len(loss) == 20 and np.all(np.isfinite(loss))
    assert np.mean(loss[-5:]) < np.mean(loss[:5]), loss
    for direction in ("i2t", "t2i"):
        ndcg = result[f"retrieval/digit_pairs/{direction}_ndcg@10"]
        assert 0 < ndcg <= 1
        assert 0 <= result[f"retrieval/digit_pairs/{direction}_recall@1"] <= 1
    assert "retrieval/digit_pairs/t2i_ndcg@10" in lines[-1]
    print(arg, {k: round(v, 4) for k, v in result.items() if "ndcg" in k or "recall@1" in k})


def test_ranking_run_under_fsdp_and_accumulation_resumes_exactly(cache_dir, tmp_path):
    """The ranking mode with the parameters split over 2 devices (FSDP) and 2 micro-batches (GradCache), killed
    after its step-10 checkpoint: the resumed run's losses and final parameters equal the uninterrupted run's, bit
    for bit."""
    overrides = {"mesh.fsdp": 2, "optim.accum_steps": 2, "total_steps": 20, "eval_every_steps": 20,
                 "checkpoint_every_steps": 10, "log_every_steps": 1}
    train_here(tmp_path, cache_dir, CONFIG, "wpce,approx_ndcg", **overrides)
    want, reference = logged_losses(tmp_path), final_params(tmp_path)
    assert sorted(want) == list(range(1, 21)) and np.all(np.isfinite(list(want.values())))
    shutil.rmtree(tmp_path / "checkpoints" / "20")  # as if killed before the step-20 checkpoint
    train_here(tmp_path, cache_dir, CONFIG, "wpce,approx_ndcg", **overrides)
    assert logged_losses(tmp_path) == want
    jax.tree.map(np.testing.assert_array_equal, final_params(tmp_path), reference)


def test_digit_pairs_records_carry_label_tuples(cache_dir):
    from wpce_jax.data.eval_sources import Records
    from wpce_jax.data.run_data import prepare_digit_pairs

    data = prepare_digit_pairs(tiny_config(cache_dir, CONFIG, "wpce"))
    headers = Records(data.test_dir).headers()
    assert {tuple(h["labels"]) for h in headers} == set(data.held_out)
    assert all(PAIRS[h["label"]] == tuple(h["labels"]) for h in headers)
