"""Fine-tuning: `config.init_from` (a new run from another run's parameters) and `optim.frozen` (locked
parameters, no optimiser state). The source is the shared 30-step tiny digits run (WPCE, InfoNCE)."""
import math
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from runs import ROOT, tiny_config
from wpce_jax import checkpoint, run_record, train
from wpce_jax.checkpoint import ParamsMismatchError
from wpce_jax.cli import load_config_file
from wpce_jax.config_validation import validate
from wpce_jax.errors import ConfigError
from wpce_jax.logit_scale import SIGMOID_INIT_BIAS
from wpce_jax.optimizer import param_path

# A few steps with no evaluation: what is checked here is the parameters and the checkpoint.
QUICK = {"total_steps": 3, "checkpoint_every_steps": 3, "log_every_steps": 3, "eval_every_steps": 3,
         "eval.zeroshot": "", "eval.retrieval": "", "eval.image_retrieval": ""}


def _flat(params) -> dict:
    return {param_path(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def _state_bytes(workdir, step) -> int:
    """Bytes of the arrays a checkpoint's state item holds, from its metadata (on disk, a tiny model's files are
    mostly per-file overhead, which depends on the FSDP split rather than on what is stored)."""
    tree = ocp.PyTreeCheckpointHandler().metadata(checkpoint.checkpoint_dir(workdir) / str(step) / "state").tree
    return sum(math.prod(m.shape) * np.dtype(m.dtype).itemsize for m in jax.tree.leaves(tree))


def test_lit_from_a_run_under_fsdp_and_accumulation(digits_run, cache_dir, tmp_path, capsys):
    """A locked image tower: the image parameters end bit-identical to the source's, every other parameter
    moved; the frozen ones have no optimiser state, so the checkpoint is smaller than the source's full one.
    FSDP (2-way) and GradCache accumulation (2 micro-batches) run with the smaller optimiser-state tree."""
    config = tiny_config(cache_dir, init_from=digits_run, **QUICK, **{"optim.frozen": "image_.*", "mesh.fsdp": 2,
                                                                      "optim.accum_steps": 2})
    train.train_and_evaluate(config, str(tmp_path))
    out = capsys.readouterr().out
    source = _flat(checkpoint.load(digits_run).params)
    restored = checkpoint.restore(str(tmp_path))
    tuned = _flat(restored.state.params)
    assert set(tuned) == set(source)
    frozen = {p for p in tuned if p.startswith(("image_encoder/", "image_head/"))}
    assert frozen and len(frozen) < len(tuned)
    for p in frozen:
        np.testing.assert_array_equal(tuned[p], source[p], err_msg=p)
    moved = [p for p in set(tuned) - frozen if not np.array_equal(tuned[p], source[p])]
    assert sorted(moved) == sorted(set(tuned) - frozen)  # logit scale and every text parameter
    n_frozen = sum(source[p].size for p in frozen)
    n_trained = sum(x.size for x in source.values()) - n_frozen
    assert f"{n_frozen:,} parameters frozen (no update, no optimiser state), {n_trained:,} trained" in out
    # AdamW's two moments for the trained parameters only (plus scalar step counters).
    saved = ocp.PyTreeCheckpointHandler().metadata(checkpoint.checkpoint_dir(str(tmp_path)) / "3" / "state").tree
    moments = [math.prod(m.shape) for m in jax.tree.leaves(saved["opt_state"]) if np.dtype(m.dtype).kind == "f"]
    assert sum(moments) == 2 * n_trained
    lit, full = _state_bytes(str(tmp_path), 3), _state_bytes(digits_run, 30)
    print(f"frozen {n_frozen:,}, trained {n_trained:,}; array bytes in the state item: LiT {lit:,}, full {full:,}")
    assert lit < full
    assert "init_from: 49 of 49 parameter arrays from the step-30 checkpoint" in out


def test_init_from_fills_missing_parameters_fresh(digits_run, cache_dir, tmp_path, capsys):
    """A sigmoid-objective run from an InfoNCE source: logit_bias is initialised fresh (and listed); with a zero
    learning rate every other parameter stays the source's after a step, in float32 exactly."""
    zero_lr = {"optim.lr": 0.0, "optim.init_lr": 0.0, "optim.end_lr": 0.0}
    config = tiny_config(cache_dir, init_from=f"{digits_run}:20", objective="sigmoid",
                         **{**QUICK, "total_steps": 1, "checkpoint_every_steps": 1}, **zero_lr)
    train.train_and_evaluate(config, str(tmp_path))
    out = capsys.readouterr().out
    assert "init_from: initialised fresh (the source lacks them): logit_bias" in out
    assert "step-20 checkpoint" in out
    source = _flat(checkpoint.load(digits_run, step=20).params)
    tuned = _flat(checkpoint.load(str(tmp_path)).params)
    assert tuned.pop("logit_bias") == SIGMOID_INIT_BIAS
    assert set(tuned) == set(source)
    for p in source:
        np.testing.assert_array_equal(tuned[p], source[p], err_msg=p)


def test_shape_mismatch_is_named(digits_run, cache_dir, tmp_path):
    config = tiny_config(cache_dir, init_from=digits_run, **QUICK, **{"model.embed_dim": 24})
    with pytest.raises(ParamsMismatchError, match=r"image_head/\S+: source \(32, 16\), model \(32, 24\)"):
        train.train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "checkpoints" / "1").exists()


def test_frozen_must_match_something(cache_dir, tmp_path):
    with pytest.raises(ConfigError, match="optim.frozen = 'vision_.*' matches no parameter.*image_encoder"):
        train.train_and_evaluate(tiny_config(cache_dir, **QUICK, **{"optim.frozen": "vision_.*"}), str(tmp_path))
    with pytest.raises(ConfigError, match="optim.frozen.*not a regular expression"):
        validate(tiny_config(cache_dir, **{"optim.frozen": "image_("}))


def test_resume_check_knows_the_fields(cache_dir):
    """init_from may differ on resume (the run's own checkpoint wins); optim.frozen may not."""
    saved = checkpoint.config_to_json(tiny_config(cache_dir, init_from="/a", **{"optim.frozen": "image_.*"}))
    fatal, allowed = run_record.compare(saved, tiny_config(cache_dir, init_from="/b",
                                                           **{"optim.frozen": "image_.*"}))
    assert fatal == [] and allowed == ["init_from: '/a' -> '/b'"]
    fatal, _ = run_record.compare(saved, tiny_config(cache_dir, init_from="/a", **{"optim.frozen": "text_.*"}))
    assert fatal == ["optim.frozen: 'image_.*' -> 'text_.*'"]


FINETUNE_CLIP = os.path.join(ROOT, "configs", "finetune_clip.py")


@pytest.mark.parametrize("arg", ["lit", "full", "lit,wpce", "lit,clip", "full,wpce", "full,clip"])
def test_finetune_clip_config_validates(arg, tmp_path):
    """Each documented argument builds a config that validates (no data is read); without init_from it stops
    with an error naming the field."""
    config = load_config_file(FINETUNE_CLIP, arg)
    assert config.model.similarity == (arg.partition(",")[2] or "wpce")
    assert config.optim.frozen == ("image_.*" if arg.startswith("lit") else None)
    config.data.train_dir, config.data.tokenizer_path = str(tmp_path / "train"), str(tmp_path / "bpe.txt.gz")
    config.model.text.vocab_size, config.model.text.eot_id = 49408, 49407  # the tokenizer fills these at start-up
    with pytest.raises(ConfigError, match="config field init_from is required"):
        validate(config)
    config.init_from = str(tmp_path / "imported")
    validate(config)
    with pytest.raises(ValueError, match=":lit' or ':full'"):
        load_config_file(FINETUNE_CLIP, "partial")


def test_block_layout_must_match_the_source(digits_run, cache_dir, tmp_path):
    """A source with per-block parameters into a model with stacked (scanned) blocks: every block would start
    fresh; the run stops naming model.scan_blocks instead."""
    config = tiny_config(cache_dir, init_from=digits_run, **QUICK, **{"model.scan_blocks": True})
    with pytest.raises(ConfigError, match="model.scan_blocks = True .* set --config.model.scan_blocks=False"):
        train.train_and_evaluate(config, str(tmp_path))
