"""The image-only training modes (config.mode "two_view" and "labelled"): the sharded step against the loss computed
by hand, the SimCLR views (different, deterministic, repeated by a resumed iterator), end-to-end runs of the digits
configs with an exact resume, and config validation."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wpce_jax import losses as losses_lib, train
from wpce_jax.cli import load_config_file
from wpce_jax.config_validation import mode_settings
from wpce_jax.data import run_data
from wpce_jax.data import digits, image_ops
from wpce_jax.data.pipeline import TrainDataOptions, make_train_dataset
from wpce_jax.data.records import decode_header, read_manifest, read_records, shard_paths
from wpce_jax.models.model_config import make_model
from wpce_jax.optimizer import make_optimizer
from wpce_jax.parallel import global_batch, make_mesh, replicated
from wpce_jax.similarity import embed, train_rff
from wpce_jax.train_step import initial_state, make_loss_fn, make_train_step
from runs import ROOT, final_params, losses, tiny_config, train_here

TWO_VIEW = os.path.join(ROOT, "configs", "digits_two_view.py")
LABELLED = os.path.join(ROOT, "configs", "digits_labelled.py")


# ------------------------------------------------------------------------------------------ the step, by hand

@pytest.mark.parametrize("path,arg", [(TWO_VIEW, "wpce"), (TWO_VIEW, "clip"), (LABELLED, "wpce,triplet"),
                                      (LABELLED, "clip,margin_contrastive")])
def test_one_step_on_8_devices_equals_the_loss_by_hand(cache_dir, tmp_path, path, arg):
    assert jax.device_count() == 8
    config = tiny_config(cache_dir, path, arg)
    config = run_data.resolve(config, str(tmp_path)).config  # with the tokenizer's vocabulary
    model, tx = make_model(config), make_optimizer(config)
    key = jax.random.key(3)
    state0 = initial_state(model, tx, config, key)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(32, 32, 32, 3)).astype(np.float32),
             "image2": rng.normal(size=(32, 32, 32, 3)).astype(np.float32),
             "label": rng.integers(0, 5, size=32).astype(np.int32)}
    if config.mode == "labelled":
        del batch["image2"]

    # By hand, on one device: the image tower, the compared vectors, the losses module without an axis.
    rff = train_rff(key, 0, config)
    compared = lambda images: embed(model.apply({"params": state0.params}, images, method="encode_image"), rff,
                                    config)
    x = compared(batch["image"])
    if config.mode == "two_view":
        want = losses_lib.nt_xent(x, compared(batch["image2"]), config.mode_temperature)
    elif config.metric_loss == "triplet":
        want = losses_lib.triplet_loss(x, jnp.asarray(batch["label"]), config.margin, config.mining)
    else:
        want = losses_lib.margin_contrastive_loss(x, jnp.asarray(batch["label"]), config.margin)

    mesh = make_mesh()
    step = jax.jit(make_train_step(model, config, mesh, tx, mode_settings(config)), out_shardings=replicated(mesh))
    state, metrics = step(jax.device_put(state0, replicated(mesh)), global_batch(batch, mesh))
    assert float(want) > 0
    np.testing.assert_allclose(float(metrics["train/loss"]), float(want), rtol=1e-5)
    assert set(metrics) >= {"train/loss", "train/grad_norm", "train/learning_rate"}
    assert ("train/view_top1" in metrics) == (config.mode == "two_view")
    # The text tower and the logit scale are untouched; the image tower moved.
    params, init = jax.tree.map(np.asarray, state.params), jax.tree.map(np.asarray, state0.params)
    for name in ("text_encoder", "text_head", "logit_scale"):
        jax.tree.map(np.testing.assert_array_equal, params[name], init[name])
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), params["image_encoder"], init["image_encoder"])
    assert max(jax.tree.leaves(moved)) > 0


def test_text_tower_gets_zero_gradient_and_is_not_run(cache_dir, tmp_path):
    config = tiny_config(cache_dir, LABELLED, "wpce")
    config = run_data.resolve(config, str(tmp_path)).config
    model, tx = make_model(config), make_optimizer(config)
    state0 = initial_state(model, tx, config, jax.random.key(0))
    # No "tokens": a loss that ran the text tower would fail on this batch.
    batch = {"image": np.random.default_rng(0).normal(size=(32, 32, 32, 3)).astype(np.float32),
             "label": np.arange(32, dtype=np.int32) % 4}
    mesh = make_mesh()
    loss_fn = make_loss_fn(model, config, mesh, mode_settings(config))
    grads = jax.jit(jax.grad(lambda p, b: loss_fn(p, b, train_rff(jax.random.key(0), 0, config))[0]))(
        jax.device_put(state0.params, replicated(mesh)), global_batch(batch, mesh))
    for name in ("text_encoder", "text_head", "logit_scale"):
        assert all(not np.asarray(g).any() for g in jax.tree.leaves(grads[name]))
    assert any(np.asarray(g).any() for g in jax.tree.leaves(grads["image_encoder"]))


# ------------------------------------------------------------------------------------------------ the views

def _first_jpeg(cache_dir):
    built = digits.prepare(cache_dir, image_side=32)
    record = next(iter(read_records(shard_paths(built.train_dir, read_manifest(built.train_dir))[0])))
    _, offset = decode_header(record)
    return built, record[offset:]


def test_views_differ_and_are_deterministic(cache_dir):
    _, jpeg = _first_jpeg(cache_dir)
    augment = image_ops.ViewAugment(strength=0.5)
    a1, a2 = image_ops.train_views(jpeg, 32, np.random.default_rng(7), augment, (0.4, 1.0))
    b1, b2 = image_ops.train_views(jpeg, 32, np.random.default_rng(7), augment, (0.4, 1.0))
    c1, _ = image_ops.train_views(jpeg, 32, np.random.default_rng(8), augment, (0.4, 1.0))
    assert a1.shape == a2.shape == (32, 32, 3) and a1.dtype == np.uint8
    assert not np.array_equal(a1, a2) and not np.array_equal(a1, c1)
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)


def test_flip_is_configurable():
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :2] = 255  # left-heavy: a flip is visible
    plain = image_ops.ViewAugment(strength=0.0, grayscale_prob=0.0)
    flipping = image_ops.ViewAugment(strength=0.0, grayscale_prob=0.0, flip=True)
    seen = set()
    for seed in range(20):
        assert np.array_equal(plain(image, np.random.default_rng(seed)), image)
        out = flipping(image, np.random.default_rng(seed))
        assert np.array_equal(out, image) or np.array_equal(out, image[:, ::-1])
        seen.add(np.array_equal(out, image))
    assert seen == {True, False}


def test_view_pipeline_resumes_exactly(cache_dir, tmp_path):
    built, _ = _first_jpeg(cache_dir)
    data = run_data.resolve(tiny_config(cache_dir, TWO_VIEW, "wpce"), str(tmp_path))
    make = lambda start=0: make_train_dataset(built.train_dir, TrainDataOptions(
        tokenizer=data.tokenizer, image_size=32, batch_size=16, seed=5, crop_scale=(0.4, 1.0), read_threads=1,
        views=image_ops.ViewAugment(strength=0.5), start_example=start))
    it = iter(make())
    first = next(it)
    assert first["image"].shape == first["image2"].shape == (16, 32, 32, 3)
    assert first["image"].dtype == first["image2"].dtype == np.uint8
    assert not np.array_equal(first["image"], first["image2"])
    want = [next(it) for _ in range(2)]
    resumed = iter(make(start=16))  # a run that consumed one batch of 16
    for expected in want:
        got = next(resumed)
        for key in ("image", "image2", "label", "tokens"):
            np.testing.assert_array_equal(got[key], expected[key])
    np.testing.assert_array_equal(next(iter(make()))["image2"], first["image2"])  # same seed, same views


# -------------------------------------------------------------------------------- end to end, exact resume

@pytest.mark.parametrize("path,arg,probe,metric", [(TWO_VIEW, "wpce", "digits", "train/view_top1"),
                                                   (LABELLED, "clip,triplet", "", "train/positive_sq_dist")])
def test_digits_run_and_exact_resume(cache_dir, tmp_path, capsys, path, arg, probe, metric):
    workdir = str(tmp_path)
    train_here(workdir, cache_dir, path, arg, **{"eval.linear_probe": probe})  # in this process: no start-up
    want = losses(workdir)
    assert sorted(want) == list(range(1, 31)) and all(np.isfinite(list(want.values())))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        names = {k for line in f for k in json.loads(line)}
    assert metric in names and not any(n.startswith(("zeroshot/", "retrieval/")) for n in names)
    assert "image_retrieval/digits/map@r" in names  # image-only models are evaluated image to image
    assert ("linear_probe/digits/top1" in names) == bool(probe)
    reference = final_params(workdir)
    # As if killed between the step-20 checkpoint and the step-30 one: the last checkpoint never happened.
    shutil.rmtree(os.path.join(workdir, "checkpoints", "30"))
    capsys.readouterr()
    train_here(workdir, cache_dir, path, arg)  # without the probe (eval.* may change on resume): its C search is slow
    assert "resumed from the step-20 checkpoint" in capsys.readouterr().out
    assert losses(workdir) == want  # bit-identical, every step
    jax.tree.map(np.testing.assert_array_equal, final_params(workdir), reference)


# ------------------------------------------------------------------------------------------------ validation

@pytest.mark.parametrize("path,arg,overrides,match", [
    (TWO_VIEW, "wpce", {"mode": "simclr"}, "config field mode must be one of"),
    (LABELLED, "wpce", {"metric_loss": "hinge"}, "config field metric_loss must be one of"),
    (LABELLED, "wpce", {"mining": "easy"}, "config field mining must be one of"),
    (LABELLED, "wpce", {"margin": 0.0}, "config field margin must be a number > 0"),
    (TWO_VIEW, "wpce", {"mode_temperature": 0.0}, "config field mode_temperature must be a number > 0"),
    (TWO_VIEW, "wpce", {"views.grayscale_prob": 1.5}, "config field views.grayscale_prob"),
])
def test_bad_mode_fields_fail_validation(cache_dir, tmp_path, path, arg, overrides, match):
    with pytest.raises(ValueError, match=match):
        train.train_and_evaluate(tiny_config(cache_dir, path, arg, **overrides), str(tmp_path))
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def test_digits_config_arguments():
    assert load_config_file(LABELLED, "clip,margin_contrastive").margin == 1.0
    c = load_config_file(LABELLED, "wpce")
    assert (c.model.similarity, c.metric_loss, c.mining, c.eval.zeroshot, c.eval.retrieval, c.eval.linear_probe) == \
        ("wpce", "triplet", "semihard", "", "", "digits")
    with pytest.raises(ValueError, match="margin_contrastive"):
        load_config_file(LABELLED, "wpce,hinge")
    c = load_config_file(TWO_VIEW, "clip")
    assert (c.mode, c.model.similarity, c.views.flip) == ("two_view", "clip", False)
