"""The evaluation suite: class vectors (CLIP vs WPCE), draw-averaged zero-shot scores, retrieval over several
draws, and `python -m wpce_jax.evaluate` end to end on the shared digits run: contract names, the feature cache,
overrides, 8 devices against 1, and two processes against one."""
import contextlib
import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import logging
from absl.testing import flagsaver
from jax.sharding import PartitionSpec as P

from wpce_jax import checkpoint, inference
from wpce_jax.config_validation import mode_settings
from wpce_jax.data.tokenizers import get_tokenizer
from wpce_jax.evaluate import retrieval, zeroshot
from wpce_jax.evaluate import __main__ as evaluate_cli
from wpce_jax.errors import ConfigError
from wpce_jax.evaluate.__main__ import apply_config_flags, format_table
from wpce_jax.evaluate.evaluator import Evaluator
from wpce_jax.parallel import make_mesh
from runs import cpu_env, run_two_processes


def test_class_vectors_clip_renormalised_wpce_averaged():
    rng = np.random.default_rng(0)
    prompts = rng.normal(size=(3 * 4, 2, 5))  # 3 classes x 4 templates, 2 draws, F = 5
    unit = prompts / np.linalg.norm(prompts, axis=-1, keepdims=True)
    mean = unit.reshape(3, 4, 2, 5).mean(1)
    np.testing.assert_allclose(zeroshot.class_vectors(unit, 3, "clip"),
                               mean / np.linalg.norm(mean, axis=-1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(zeroshot.class_vectors(prompts, 3, "wpce"), prompts.reshape(3, 4, 2, 5).mean(1),
                               rtol=1e-6)
    assert not np.allclose(np.linalg.norm(zeroshot.class_vectors(unit, 3, "clip"), axis=-1), np.linalg.norm(mean, axis=-1))


def test_zero_shot_scores_average_the_draws():
    rng = np.random.default_rng(1)
    images, classes = rng.normal(size=(5000, 3, 6)).astype(np.float32), rng.normal(size=(7, 3, 6)).astype(np.float32)
    labels = rng.integers(0, 7, 5000)
    top, per_draw = zeroshot.predict(images, classes)  # 5000 > one block: the padded last block is exercised
    logits = np.einsum("nrf,crf->nrc", images.astype(np.float64), classes)
    np.testing.assert_array_equal(top, np.argsort(-logits.mean(1), axis=1, kind="stable")[:, :5])
    np.testing.assert_array_equal(per_draw, logits.argmax(-1))
    got = zeroshot.scores(top, per_draw, labels, 7)
    pred = logits.mean(1).argmax(1)
    assert got["top1"] == pytest.approx(np.mean(pred == labels))
    recalls = [np.mean(pred[labels == c] == c) for c in range(7)]
    assert got["mean_per_class_recall"] == pytest.approx(np.mean(recalls))
    assert got["top1_draw_std"] == pytest.approx(np.std([np.mean(logits[:, r].argmax(1) == labels) for r in range(3)]))


def test_retrieval_over_draws_is_the_mean_similarity():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(9, 4, 5)), rng.normal(size=(11, 4, 5))
    flat = retrieval._flatten_draws(a) @ retrieval._flatten_draws(b).T
    np.testing.assert_allclose(flat, np.einsum("nrf,krf->nk", a, b) / 4, rtol=1e-5)


def _evaluate_cli(workdir, *args):
    """`python -m wpce_jax.evaluate --workdir=WORKDIR ARGS` in this process (its argument handling, flag parsing and
    error reporting; the subprocess itself only in test_two_processes_equal_one): its returncode, stdout, stderr."""
    stdout, stderr, verbosity = io.StringIO(), io.StringIO(), logging.get_verbosity()
    try:
        with flagsaver.flagsaver(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            evaluate_cli.main(evaluate_cli.parse_known_flags(["evaluate", f"--workdir={workdir}", *args]))
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        logging.set_verbosity(verbosity)  # main() lowers it to WARNING
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


CONTRACT = [f"zeroshot/digits/{m}" for m in ("top1", "top5", "mean_per_class_recall")] + \
    [f"retrieval/digits/{d}_{m}" for d in ("i2t", "t2i") for m in ("recall@1", "recall@5", "recall@10", "ndcg@10",
                                                                   "map")] + ["linear_probe/digits/top1"]


@pytest.fixture(scope="module")
def evaluated(digits_run, tmp_path_factory):
    """The CLI (in this process) on a copy of the shared run (it writes eval/ into the workdir)."""
    import shutil

    workdir = str(tmp_path_factory.mktemp("evaluated") / "run")
    shutil.copytree(digits_run, workdir)
    out = _evaluate_cli(workdir, "--config.eval.linear_probe=digits")
    assert out.returncode == 0, out.stderr[-3000:]
    with open(os.path.join(workdir, "eval", "step_30.json")) as f:
        return workdir, out.stdout, json.load(f)


def test_cli_writes_every_contract_metric(evaluated, digits_run):
    workdir, stdout, results = evaluated
    assert set(CONTRACT) <= set(results)
    assert all(0 <= results[k] <= 1 for k in CONTRACT)
    assert "zeroshot/digits/top1" in stdout and "retrieval  " in stdout and "wrote" in stdout
    assert "restored " in stdout and "the checkpoint holds" in stdout  # the parameters only, and how they are placed
    assert "linear probe, C spacing 16" in stdout  # the command shows the C search
    with open(os.path.join(digits_run, "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f if "zeroshot/digits/top1" in line][-1]
    for name in ("zeroshot/digits/top1", "retrieval/digits/i2t_recall@1", "retrieval/digits/t2i_map"):
        assert results[name] == pytest.approx(logged[name], abs=1e-6), name  # the trainer ran the same evaluator


def test_cli_reuses_cached_features_and_checks_overrides(evaluated):
    workdir, _, results = evaluated
    out = _evaluate_cli(workdir, "--config.eval.linear_probe=digits", "--config.eval.retrieval=")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "features of digits (train): read from" in out.stdout and "features of digits (test): read from" in out.stdout
    with open(os.path.join(workdir, "eval", "step_30.json")) as f:
        again = json.load(f)
    for name in ("zeroshot/digits/top1", "linear_probe/digits/top1"):
        assert again[name] == results[name]
    bad = _evaluate_cli(workdir, "--config.model.embed_dim=8")
    assert bad.returncode != 0 and "only eval." in bad.stderr
    bad = _evaluate_cli(workdir, "--config.eval.nope=1")
    assert bad.returncode == 2 and bad.stderr.splitlines() == [
        "error: --config.eval.nope: no such field in the run's config"]
    bad = _evaluate_cli(workdir, "--step=7")
    assert bad.returncode != 0 and "no step-7 checkpoint" in bad.stderr
    skipped = _evaluate_cli(workdir, "--config.eval.zeroshot=cifar10", "--config.eval.retrieval=",
                            "--config.eval.image_retrieval=")
    assert skipped.returncode == 1 and "skipping zeroshot on cifar10 (test): cifar10: config field eval.tfds_data_dir" \
        in skipped.stdout
    with open(os.path.join(workdir, "eval", "step_30.json")) as f:
        assert json.load(f) == again  # a run that evaluated nothing leaves the results as they were
    bad = _evaluate_cli(workdir, "--config.eval.zeroshot=cifar11")
    assert bad.returncode != 0 and "unknown dataset 'cifar11'" in bad.stderr and "Traceback" not in bad.stderr
    redrawn = _evaluate_cli(workdir, "--config.eval.linear_probe=", "--config.eval.retrieval=",
                            "--config.eval.rff_draws=2")  # other features than the cached ones: encoded again
    assert redrawn.returncode == 0, redrawn.stderr[-3000:]
    assert "read from" not in redrawn.stdout and "top1_draw_std" in redrawn.stdout


def _saved_config():
    """A config as a checkpoint gives it back (JSON): tuples as lists, unset placeholders as None."""
    from ml_collections import ConfigDict

    return ConfigDict({"seed": 0, "model": {"embed_dim": 64},
                       "data": {"crop_scale": [0.7, 1.0], "worker_count": 0, "cache_dir": None},
                       "eval": {"rff_draws": 1, "zeroshot": "", "cache_features": True, "tfds_data_dir": None,
                                "zeroshot_every_steps": None}})


def _config_flags(config, *args):
    with flagsaver.flagsaver():
        rest = evaluate_cli.parse_known_flags(["evaluate", "--workdir=unused", *args])  # as app.run does first
        return apply_config_flags(config, rest)


def test_overrides_take_the_fields_type():
    config = _saved_config()
    rest, changes = _config_flags(config, "--config.eval.rff_draws=3", "--config.eval.zeroshot=cifar10,digits",
                                  "--config.eval.cache_features=false", "--config.eval.tfds_data_dir=gs://b/tfds",
                                  "--config.eval.zeroshot_every_steps=100", "--config.data.worker_count", "4")
    assert rest == ["evaluate"]
    assert config.eval.to_dict() == {"rff_draws": 3, "zeroshot": "cifar10,digits", "cache_features": False,
                                     "tfds_data_dir": "gs://b/tfds", "zeroshot_every_steps": 100}
    assert config.data.worker_count == 4
    assert len(changes) == 6 and "eval.rff_draws = 3" in changes and "eval.cache_features = False" in changes
    for bad in ("--config.eval.rff_draws=many", "--config.eval.rff_draws=2.5", "--config.eval.cache_features=maybe"):
        with pytest.raises(ConfigError, match="config.eval."):
            _config_flags(_saved_config(), bad)
    table = format_table({"zeroshot/a/top1": 0.5, "zeroshot/a/top5": 0.75, "retrieval/b/i2t_map": 0.25})
    assert table.splitlines() == ["zeroshot      top1      top5", "a           0.5000    0.7500", "",
                                  "retrieval   i2t_map", "b            0.2500"]
    assert format_table({"image_retrieval/c/queries_without_match": 1}).splitlines()[1].split() == ["c", "1"]


def test_overrides_bools_and_tuples_as_main_parses_them():
    config = _saved_config()
    _, changes = _config_flags(config, "--noconfig.eval.cache_features")
    assert config.eval.cache_features is False and changes == ["eval.cache_features = False"]
    config = _saved_config()
    _, changes = _config_flags(config, "--config.data.crop_scale=(0.7, 1.0)")  # a tuple, as the run's own
    assert config.data.crop_scale == (0.7, 1.0) and changes == []  # the same value: nothing changed


def test_override_errors_are_one_line_and_name_the_field():
    with pytest.raises(ConfigError) as unknown:
        _config_flags(_saved_config(), "--config.eval.rff_draws=2", "--config.eval.nope=1")
    assert str(unknown.value) == "--config.eval.nope: no such field in the run's config"
    with pytest.raises(ConfigError) as unknown:
        _config_flags(_saved_config(), "--config.nope.deeper=1")
    assert str(unknown.value) == "--config.nope.deeper: no such field in the run's config"
    for field, value in (("seed", "3"), ("model.embed_dim", "8"), ("data.crop_scale", "(0.5, 1.0)")):
        with pytest.raises(ConfigError) as forbidden:
            _config_flags(_saved_config(), "--config.eval.rff_draws=2", f"--config.{field}={value}")
        assert str(forbidden.value) == (f"--config.{field}: only eval., data.worker_count, data.cache_dir fields "
                                        f"can change when evaluating a trained model")


    table = format_table({"zeroshot/a/top1": 0.5, "zeroshot/a/top5": 0.75, "retrieval/b/i2t_map": 0.25})
    assert table.splitlines() == ["zeroshot      top1      top5", "a           0.5000    0.7500", "",
                                  "retrieval   i2t_map", "b            0.2500"]
    assert format_table({"image_retrieval/c/queries_without_match": 1}).splitlines()[1].split() == ["c", "1"]


def test_flags_before_the_checkpoint_is_read(capsys):
    with flagsaver.flagsaver():
        rest = evaluate_cli.parse_known_flags(["evaluate", "--workdir=w", "--config.eval.rff_draws=2", "--step=3",
                                               "--config.eval.zeroshot", "digits"])
        assert rest == ["evaluate", "--config.eval.rff_draws=2", "--config.eval.zeroshot", "digits"]
        assert (evaluate_cli.FLAGS.workdir, evaluate_cli.FLAGS.step) == ("w", 3)
    with flagsaver.flagsaver(), pytest.raises(SystemExit) as exited:
        evaluate_cli.parse_known_flags(["evaluate", "--workdir=w", "--bogus=1", "--config.eval.rff_draws=2"])
    assert exited.value.code == 2 and capsys.readouterr().err.splitlines() == [
        "error: Unknown command line flag 'bogus'"]


def _in_process(workdir, devices, **overrides):
    config, model, state, _, mesh, _ = checkpoint.restore(workdir, devices=devices)
    with config.unlocked():
        config.eval.update(overrides)
    tokenizer = get_tokenizer(config.data.tokenizer, config.data.tokenizer_path, config.model.text.context_length)
    evaluator = Evaluator(model, config, mesh, tokenizer, mode_settings(config).relevance, log=lambda line: None)
    return evaluator(state.params, state.rng, state.eval_rff)


@pytest.fixture(scope="module")
def fsdp8_run(digits_run, tmp_path_factory):
    """The shared run's last checkpoint saved again as a run with config.mesh.fsdp = 8 saves it: parameters and
    Adam's moments split over the 8 devices (a copy in seconds instead of a training run)."""
    import shutil

    import orbax.checkpoint as ocp
    from ml_collections import ConfigDict

    from wpce_jax import rng
    from wpce_jax.models.model_config import make_model
    from wpce_jax.optimizer import make_optimizer
    from wpce_jax.parallel import state_shardings
    from wpce_jax.train_step import initial_state

    workdir = str(tmp_path_factory.mktemp("fsdp8") / "run")
    shutil.copytree(digits_run, workdir, ignore=shutil.ignore_patterns("checkpoints", "eval"))  # the tokenizer
    source = ocp.CheckpointManager(checkpoint.checkpoint_dir(digits_run),
                                   options=ocp.CheckpointManagerOptions(read_only=True))
    step = source.latest_step()
    config = ConfigDict(source.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])
    config.mesh.fsdp = 8
    model = make_model(config)
    abstract = jax.eval_shape(lambda: initial_state(model, make_optimizer(config), config, rng.root_key(config.seed)))
    mesh = make_mesh(fsdp=8)
    saved = source.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(checkpoint.abstract_like(abstract, state_shardings(abstract, mesh))),
        position=ocp.args.JsonRestore()))
    source.close()
    state = saved["state"]
    assert state.params["image_encoder"]["cls_token"].sharding.spec == P(None, None, "fsdp")
    target = checkpoint.Checkpointer(workdir, max_to_keep=1, async_save=False)
    target.save(step, state, saved["position"]["examples_seen"], config)
    target.close()
    return workdir, jax.tree.map(np.asarray, state.params)


def test_fsdp8_checkpoint_evaluates_the_same_split_on_eight_devices_and_whole_on_one(fsdp8_run, monkeypatch):
    import orbax.checkpoint as ocp

    workdir, params = fsdp8_run
    read = []  # the arrays Orbax reads: never the optimiser state
    original = ocp.type_handlers.ArrayHandler.deserialize

    async def deserialize(self, infos, args=None):
        read.extend(info.name for info in infos)
        return await original(self, infos, args)

    monkeypatch.setattr(ocp.type_handlers.ArrayHandler, "deserialize", deserialize)
    restored = checkpoint.restore(workdir)
    assert isinstance(restored.state, inference.EvalState) and restored.mesh.shape["fsdp"] == 8
    assert read and not [name for name in read if not name.startswith(("params.", "rng", "eval_rff."))]
    assert len(read) == len(jax.tree.leaves(restored.state))
    token = restored.state.params["image_encoder"]["cls_token"]
    assert token.sharding.spec == P(None, None, "fsdp")
    assert token.addressable_shards[0].data.shape[-1] * 8 == token.shape[-1]  # each device holds 1/8 of it
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, restored.state.params), params)
    # "restored 0.12 MB (parameters 0.12 MB; the checkpoint holds 0.36 MB)": parameters, key and draw, not Adam's
    # two moments.
    assert restored.summary.startswith("restored ") and "split over fsdp 8 of 8 devices" in restored.summary

    overrides = {"rff_draws": 2, "linear_probe": "", "image_retrieval": "digits"}
    eight, one = _in_process(workdir, jax.devices(), **overrides), _in_process(workdir, jax.devices()[:1],
                                                                               **overrides)
    assert set(eight) == set(one) and "zeroshot/digits/top1_draw_std" in eight
    for name in eight:  # float32 sums in another order: rates of a few hundred images move by whole counts or not
        assert eight[name] == pytest.approx(one[name], rel=1e-5, abs=1e-6), name

    six = checkpoint.restore(workdir, devices=jax.devices()[:6])  # 8 does not divide 6: 6 splits, said so
    assert six.mesh.shape["fsdp"] == 6 and "does not divide 6" in six.summary

    # checkpoint.load (notebooks): split over this process's 8 devices, the same vectors as whole on one.
    split, whole = checkpoint.load(workdir), checkpoint.load(workdir, devices=jax.devices()[:1])
    assert split.params["image_encoder"]["cls_token"].sharding.spec == P(None, None, "fsdp")
    images = np.random.default_rng(0).integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)
    np.testing.assert_allclose(split.encode_images(images), whole.encode_images(images), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(split.encode_texts(["a 3", "seven"]), whole.encode_texts(["a 3", "seven"]),
                               rtol=1e-5, atol=1e-6)


def test_two_processes_equal_one(evaluated, tmp_path):
    workdir, _, results = evaluated
    # The probe is left out here: its C search over two processes takes 100 s on 2 cores (each solver step is a gloo
    # collective); test_linear_probe.py::test_two_processes_fit_as_one fits it over two processes at one C.
    args = ["--config.eval.linear_probe=", "--config.eval.cache_features=false"]
    run_two_processes(lambda port, i: [sys.executable, "-m", "wpce_jax.evaluate", f"--workdir={workdir}", *args,
                                       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                       f"--process_id={i}"], cpu_env(4))
    with open(os.path.join(workdir, "eval", "step_30.json")) as f:
        two = json.load(f)
    for name in CONTRACT:
        if not name.startswith("linear_probe/"):
            assert two[name] == pytest.approx(results[name], abs=1e-6), name


def _numpy_image_retrieval(compared: np.ndarray, labels: np.ndarray, by: str = "similarity") -> dict[str, float]:
    """Brute force in float64: each image ranks the others (its own column deleted) by the draw-averaged
    similarity (or the negative squared distance), stable descending (ties to the lower index); the metrics'
    means over the queries that have another image of their class, and the count of those that have none."""
    n, draws = compared.shape[:2]
    v = compared.astype(np.float64)
    scores = np.einsum("nrf,mrf->nm", v, v) / draws
    if by == "distance":
        scores = -np.sum((v[:, None] - v[None, :]) ** 2, axis=(2, 3)) / draws
    p1, rp, mapr = [], [], []
    for i in range(n):
        keep = np.arange(n) != i
        rel = (labels[keep] == labels[i])[np.argsort(-scores[i, keep], kind="stable")]
        r = int(rel.sum())
        if r == 0:
            continue
        hits = np.cumsum(rel)
        p1.append(float(rel[0]))
        rp.append(hits[r - 1] / r)
        mapr.append(np.sum((hits / np.arange(1, n))[:r] * rel[:r]) / r)
    return {"precision@1": np.mean(p1), "recall@1": np.mean(p1), "r_precision": np.mean(rp), "map@r": np.mean(mapr),
            "queries_without_match": n - len(p1)}


def test_image_retrieval_by_class_matches_numpy(digits_run, monkeypatch):
    from wpce_jax.data.run_data import prepare_digits
    from wpce_jax.evaluate import registry
    from wpce_jax.evaluate.encode import Encoders
    from wpce_jax.similarity import eval_rff_draws

    encoded = []  # the descriptions of every image pass: the digits test images must be encoded once
    original = Encoders.images
    monkeypatch.setattr(Encoders, "images", lambda self, *a: encoded.append(a[3]) or original(self, *a))
    overrides = {"rff_draws": 2, "zeroshot": "digits", "linear_probe": "", "retrieval": "",
                 "image_retrieval": "digits"}
    one = _in_process(digits_run, jax.devices()[:1], **overrides)
    assert encoded == ["digits (test)"]  # image retrieval reused the zero-shot features
    eight = _in_process(digits_run, jax.devices(), **overrides)
    names = [f"image_retrieval/digits/{m}" for m in ("precision@1", "r_precision", "map@r", "recall@1")]
    assert set(names) <= set(one) and set(one) == set(eight)
    for name in one:
        assert eight[name] == pytest.approx(one[name], abs=1e-6), name

    # The same features, encoded on their own: the digits test images under both evaluation draws.
    config, model, state, *_ = checkpoint.restore(digits_run, devices=jax.devices()[:1])
    with config.unlocked():
        config.eval.rff_draws = 2
    data, _ = registry.resolve_classification(registry.Spec("digits", "digits", ""), "test", config.eval,
                                              prepare_digits(config))
    rffs = eval_rff_draws(jax.random.wrap_key_data(state.rng), state.eval_rff, config, 2)
    features = Encoders(model, config, make_mesh(jax.devices()[:1])).images(state.params, rffs, data.source, "test")
    assert features.compared.shape[:2] == (len(data.source), 2) and len(set(features.labels.tolist())) == 10
    # float64 ranks against the device's float32 ones: scores 1e-8 apart could swap; none do on this run.
    want = _numpy_image_retrieval(features.compared, features.labels)
    for metric, value in want.items():
        assert one[f"image_retrieval/digits/{metric}"] == pytest.approx(value, abs=1e-6), metric
    # The shared run is short (near chance: about 0.1 precision@1); MAP@R is the strictest of the metrics.
    assert 0 < want["map@r"] < want["r_precision"] < 1 and 0 < want["precision@1"] < 1


def test_image_retrieval_by_distance_differs_from_similarity_and_matches_numpy():
    from wpce_jax.evaluate import image_retrieval

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 60)
    # Class directions plus noise, with norms spread over a decade: distance and similarity rank differently.
    compared = (np.eye(8)[labels][:, None, :] + 0.8 * rng.normal(size=(60, 2, 8))) * rng.uniform(0.3, 3, (60, 1, 1))
    compared = compared.astype(np.float32)
    for by in ("similarity", "distance"):
        got = image_retrieval.scores(compared, labels, by=by)
        want = _numpy_image_retrieval(compared, labels, by)
        for name in want:
            assert got[name] == pytest.approx(want[name], abs=1e-6), (by, name)
    assert image_retrieval.scores(compared, labels, by="distance") != image_retrieval.scores(compared, labels)
    with pytest.raises(ValueError, match="by must be one of"):
        image_retrieval.scores(compared, labels, by="cosine")


def singleton_data():
    """(vectors float32 [70, 6], labels int [70]): four classes of 15, ten classes of one (no other image of their
    class), shuffled; the same as tests/reference/pml_image_retrieval.py's."""
    rng = np.random.default_rng(16)
    labels = rng.permutation(np.concatenate([np.repeat(np.arange(4), 15), np.arange(10, 20)]))
    vectors = (np.eye(6)[labels % 6] + 0.9 * rng.normal(size=(70, 6))) * rng.uniform(0.3, 3, (70, 1))
    return vectors.astype(np.float32), labels


def test_image_retrieval_leaves_out_queries_without_match_as_pytorch_metric_learning_does():
    from wpce_jax.evaluate import image_retrieval

    vectors, labels = singleton_data()
    with open(os.path.join(os.path.dirname(__file__), "reference", "pml_image_retrieval.json")) as f:
        pml = json.load(f)  # AccuracyCalculator's numbers on these vectors (tests/reference/pml_image_retrieval.py)
    assert float(vectors.sum()) == pytest.approx(pml["checksum"], rel=1e-6)  # the same data as the script's
    for by in image_retrieval.BY:
        got = image_retrieval.scores(vectors[:, None], labels, by=by)
        want = _numpy_image_retrieval(vectors[:, None], labels, by)
        assert got["queries_without_match"] == want["queries_without_match"] == 10
        for name in want:
            assert got[name] == pytest.approx(want[name], abs=1e-6), (by, name)
        for name in ("precision@1", "r_precision", "map@r"):  # no ties in random data: the same rankings
            assert got[name] == pytest.approx(pml[by][name], abs=1e-6), (by, name)
    # Every image alone in its class: no query is defined.
    alone = image_retrieval.scores(vectors[:5, None], np.arange(5))
    assert alone["queries_without_match"] == 5 and all(np.isnan(alone[m]) for m in image_retrieval.METRICS)


def _numpy_graded_ndcg(compared: np.ndarray, tuples: np.ndarray, rule: str, by: str, k: int = 10) -> float:
    """Brute force in float64: each image ranks the others (its own column deleted) by draw-averaged similarity or
    negative squared distance; grades from the tuples (exact: all equal, positional: equal positions,
    hierarchical: common prefix), DCG@k = sum (2^g - 1) / log2(1 + rank), over the ideal DCG@k of the others'
    grades; the mean over queries with some other image of grade > 0."""
    n, draws = compared.shape[:2]
    v = compared.astype(np.float64)
    scores = np.einsum("nrf,mrf->nm", v, v) / draws
    if by == "distance":
        scores = -np.sum((v[:, None] - v[None, :]) ** 2, axis=(2, 3)) / draws
    out = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        equal = tuples[others] == tuples[i]
        grades = {"exact": equal.all(1), "positional": equal.sum(1),
                  "hierarchical": np.cumprod(equal, axis=1).sum(1)}[rule].astype(np.float64)
        if not (grades > 0).any():
            continue
        ranked = grades[np.argsort(-scores[i, others], kind="stable")]
        discount = 1 / np.log2(np.arange(2, k + 2))
        dcg = np.sum((2 ** ranked[:k] - 1) * discount[:len(ranked[:k])])
        ideal = np.sort(grades)[::-1][:k]
        out.append(dcg / np.sum((2 ** ideal - 1) * discount[:len(ideal)]))
    return float(np.mean(out))


def test_image_retrieval_graded_ndcg_matches_numpy():
    from wpce_jax.data.eval_sources import ClassificationSet
    from wpce_jax.evaluate import image_retrieval
    from wpce_jax.evaluate.encode import ImageFeatures

    rng = np.random.default_rng(5)
    # (coarse, fine) of 12 fine classes in 4 coarse ones (coarse = fine // 3); one fine class has a single image.
    labels = rng.permutation(np.concatenate([rng.integers(0, 11, 69), [11]]))
    class_tuples = np.stack([np.arange(12) // 3, np.arange(12)], axis=1)
    compared = (np.eye(8)[labels % 8][:, None, :] + np.eye(8)[labels // 3][:, None, :]
                + 0.9 * rng.normal(size=(70, 2, 8))) * rng.uniform(0.3, 3, (70, 1, 1))
    compared = compared.astype(np.float32)
    values = {}
    for rule in ("exact", "positional", "hierarchical"):
        for by in ("similarity", "distance"):
            got = image_retrieval.scores(compared, labels, by=by, label_tuples=class_tuples[labels], rule=rule)
            # Continuous random scores: no ties, so float32 and float64 rank alike; 1e-5 covers float32 sums.
            assert got["ndcg@10"] == pytest.approx(_numpy_graded_ndcg(compared, class_tuples[labels], rule, by),
                                                   abs=1e-5), (rule, by)
            values[rule, by] = got["ndcg@10"]
            # The binary metrics beside it are unchanged by the tuples.
            plain = image_retrieval.scores(compared, labels, by=by)
            assert {m: got[m] for m in plain} == plain
    assert values["exact", "similarity"] != values["hierarchical", "similarity"]
    # evaluate() takes each class's tuple from the set, and names the metric.
    data = ClassificationSet(None, [str(c) for c in range(12)], None, class_tuples)
    features = ImageFeatures(compared, compared[:, 0], labels, 0)
    named = image_retrieval.evaluate("h", data, images=features, rule="hierarchical")
    assert named["image_retrieval/h/ndcg@10"] == pytest.approx(values["hierarchical", "similarity"], abs=1e-7)
    assert "image_retrieval/h/ndcg@10" not in image_retrieval.evaluate("h", data._replace(label_tuples=None),
                                                                       images=features)
