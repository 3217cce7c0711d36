"""python -m wpce_jax.import_checkpoint against the publishers' own code.

tests/reference/imports/ (written by tests/reference/make_import_refs.py with torch, timm 0.6.7, open_clip,
transformers and the reference release) holds tiny models with perturbed weights in the files a user has, the
inputs, and the outputs of the publishers' code. Each test imports in-process, reloads the workdir with
`checkpoint.load`, and compares: points, weights, CLIP embeddings and feature maps within 1e-4 relative (largest
absolute difference over the largest reference magnitude; float32 throughout, so the differences are rounding:
they measure about 1e-6). The B/16 mapping is checked on names and shapes only: the release's config.yaml and
state-dict shapes, with zero-stride arrays standing in for the tensors, so nothing B/16-sized is allocated.
"""
import hashlib
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import yaml

from wpce_jax import checkpoint
from wpce_jax.errors import UserError
from wpce_jax.import_checkpoint import _check_tree, build_config, import_checkpoint
from wpce_jax.kernels import RFF
from wpce_jax.logit_scale import value as logit_scale_value
from wpce_jax.models.model_config import init_params, make_model
from wpce_jax.pointcloud import feature_map
from wpce_jax.weights import wpse
from wpce_jax.weights.imported import as_wpce

ROOT = pathlib.Path(__file__).resolve().parents[1]
REF = ROOT / "tests" / "reference" / "imports"
BPE = str(REF / "bpe_tiny.txt.gz")
RTOL = 1e-4


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.fixture(scope="module")
def inputs():
    data = np.load(REF / "inputs.npz")
    return data["images"], data["tokens"]


def imported(tmp_path, fmt, source, **kwargs):
    workdir = tmp_path / "imported"
    import_checkpoint(fmt, source, workdir, BPE, log=lambda *_: None, **kwargs)
    return workdir, checkpoint.load(workdir)


def clouds(loaded, images, tokens):
    apply = lambda method, x: loaded.model.apply({"params": loaded.params}, x, method=method)
    return apply("encode_image", images), apply("encode_text", tokens)


def test_wpse_wpce_matches_the_release(tmp_path, inputs):
    images, tokens = inputs
    ref = np.load(REF / "wpse_wpce" / "outputs.npz")
    workdir, loaded = imported(tmp_path, "wpse", REF / "wpse_wpce")
    image, text = clouds(loaded, images, tokens)
    for name, got in (("image_points", image.points), ("image_weights", image.weights),
                      ("text_points", text.points), ("text_weights", text.weights)):
        assert rel_err(got, ref[name]) < RTOL, name
    config = loaded.config
    assert (config.wpce.kernel, config.wpce.scale, config.wpce.num_features) == ("gaussian", 0.5, 64)
    assert (config.wpce.a_lin, config.wpce.a_rff) == (0.667, 0.333)
    assert (config.model.weight_activation, config.model.weight_alpha) == ("tanh", 2.0)
    # The release's feature map with its own RFF draw: the whole similarity path, not only the towers.
    rff = RFF(frequencies=ref["rff_w"], phases=ref["rff_b"])
    for cloud, name in ((image, "image_features"), (text, "text_features")):
        assert rel_err(feature_map(cloud, rff, config.wpce.a_lin, config.wpce.a_rff), ref[name]) < RTOL, name
    np.testing.assert_allclose(logit_scale_value(loaded.params, "wpce"), ref["logit_scale"], rtol=1e-6)
    # The run record names the source, with the bytes' digest; the tokenizer travels with the workdir.
    record = json.loads((workdir / "config.json").read_text())["imported"]
    pt = REF / "wpse_wpce" / "checkpoint_best.pt"
    assert record["format"] == "wpse" and record["sources"][0]["file"] == str(pt)
    assert record["sources"][0]["sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest()
    assert (workdir / "tokenizer" / "bpe_tiny.txt.gz").read_bytes() == pathlib.Path(BPE).read_bytes()
    assert loaded.encode_texts(["a photo"]).shape == (1, 16 + 64)  # the loaded model runs end to end


@pytest.mark.parametrize("fmt, source", [("wpse", "wpse_clip"), ("open_clip", "open_clip_cfg"),
                                         ("open_clip", "open_clip_nocfg/model.pt"), ("hf_clip", "hf_clip")])
def test_clip_sources_match_the_publishers(tmp_path, inputs, fmt, source):
    images, tokens = inputs
    ref = np.load(REF / source.split("/")[0] / "outputs.npz")
    _, loaded = imported(tmp_path, fmt, REF / source)
    assert loaded.config.model.similarity == "clip"
    image, text = clouds(loaded, images, tokens)
    assert rel_err(image.points[:, 0], ref["image_embed"]) < RTOL
    assert rel_err(text.points[:, 0], ref["text_embed"]) < RTOL
    np.testing.assert_allclose(logit_scale_value(loaded.params, "clip"), ref["logit_scale"], rtol=1e-5)


def test_as_wpce_starts_from_the_clip_embeddings(tmp_path, inputs):
    """A WPCE model from CLIP: the class token's point is CLIP's image embedding and the end-of-text token's
    point CLIP's text embedding (before normalisation); every other token is a point too, with a weight."""
    images, tokens = inputs
    ref = np.load(REF / "open_clip_cfg" / "outputs.npz")
    _, loaded = imported(tmp_path, "open_clip", REF / "open_clip_cfg", as_wpce=True, kernel="imq",
                         kernel_scale=0.7)
    config = loaded.config
    assert (config.model.similarity, config.wpce.kernel, config.wpce.scale) == ("wpce", "imq", 0.7)
    image, text = clouds(loaded, images, tokens)
    assert image.points.shape == (4, 1 + (32 // 8) ** 2, 16) and text.points.shape == (4, 16, 16)
    assert rel_err(image.points[:, 0], ref["image_embed"]) < RTOL
    eot = np.argmax(tokens, axis=1)
    assert rel_err(np.asarray(text.points)[np.arange(4), eot], ref["text_embed"]) < RTOL
    weights = np.asarray(image.weights)
    assert np.all(np.abs(weights) < 100) and np.std(weights) > 0.1  # drawn, not constant
    np.testing.assert_allclose(logit_scale_value(loaded.params, "wpce"), 1 / 0.07, rtol=1e-6)


def test_as_wpce_refuses_a_wpce_source():
    with pytest.raises(ValueError, match="CLIP sources"):
        as_wpce(wpse.read(REF / "wpse_wpce"))


def _b16(name: str, args: dict):
    shapes = json.loads((REF / "b16" / "state_dict_shapes.json").read_text())[name]
    zero = np.zeros((), np.float32)
    fake = {k: np.broadcast_to(zero, tuple(s)) for k, s in shapes.items()}  # zero strides: no B/16 allocation
    return wpse.from_state_dict(fake, f"{name} state dict", args, "config.yaml")


@pytest.mark.parametrize("name", ["CLIP_WPSE_VITB16", "CLIP_VITB16"])
def test_b16_release_maps_onto_the_model(name):
    """Every tensor of the release's B/16 models is read (check_all_taken inside), into exactly the tree
    make_model builds from the imported config (paths and shapes; jax.eval_shape allocates nothing)."""
    args = yaml.safe_load((REF / "b16" / "config.yaml").read_text())
    if name == "CLIP_VITB16":
        args = {"model": {"_target_": "models.CLIP_VITB16", "ln_eps": 1e-6}, "criterion": {}}
    result = _b16(name, args)
    config = build_config(result.fields, "unused", 49407)
    model = make_model(config)
    abstract = jax.eval_shape(lambda: init_params(model, jax.random.key(0), config))
    _check_tree(result.params, abstract, name)
    m = config.model
    assert (m.image.width, m.image.depth, m.image.heads, m.image.mlp_dim, m.image.patch_size) == (768, 12, 12, 3072, 16)
    assert (m.text.width, m.text.depth, m.text.heads, m.text.context_length, m.text.vocab_size) == (512, 12, 8, 77, 49408)
    assert (config.data.image_size, m.embed_dim, m.ln_eps, m.text.ln_eps) == (224, 512, 1e-6, 1e-6)
    assert (m.image.ln_pre, m.image.patch_bias, m.image.activation, m.text.activation) == \
        (False, True, "gelu", "quick_gelu")
    np.testing.assert_allclose([config.logit_scale_min, config.logit_scale_max], [1, 100], rtol=1e-4)
    if name == "CLIP_WPSE_VITB16":
        assert (m.similarity, m.text.null_rows, m.text.sequel_rule) == ("wpce", 76, "zero_id")
        assert (m.weight_activation, m.weight_alpha, m.weight_bias) == ("tanh", 100.0, False)
        w = config.wpce
        assert (w.kernel, w.scale, w.num_features, w.a_lin, w.a_rff) == ("gaussian", 0.5, 1024, 0.667, 0.333)
    else:
        assert (m.similarity, m.text.null_rows, m.text.pool) == ("clip", 0, "argmax")


def _copy_safetensors(tmp_path, edit):
    """open_clip_cfg's weights edited by `edit`, written beside a copy of its config."""
    from safetensors.numpy import save_file
    from wpce_jax.weights import load_safetensors
    tensors = load_safetensors(REF / "open_clip_cfg" / "open_clip_model.safetensors")
    edit(tensors)
    path = tmp_path / "edited.safetensors"
    save_file(tensors, str(path))
    config = REF / "open_clip_cfg" / "open_clip_config.json"
    (tmp_path / config.name).write_bytes(config.read_bytes())
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("visual.ln_pre.weight"), r"tensor 'visual.ln_pre.weight' is missing"),
    (lambda t: t.update(extra=np.zeros(3, np.float32)), r"unexpected tensors the import does not use: extra"),
    (lambda t: t.update({"ln_final.bias": np.zeros(5, np.float32)}), r"'ln_final.bias' has shape \(5,\), expected \[32\]"),
])
def test_bad_weights_name_the_file_and_tensor(tmp_path, edit, message):
    path = _copy_safetensors(tmp_path, edit)
    with pytest.raises(UserError, match=message) as error:
        import_checkpoint("open_clip", path, tmp_path / "wd", BPE, log=lambda *_: None)
    assert str(path) in str(error.value)


def test_input_errors(tmp_path):
    with pytest.raises(UserError, match="--tokenizer is required"):
        import_checkpoint("open_clip", REF / "open_clip_cfg", tmp_path / "a", None)
    with pytest.raises(UserError, match="not an OpenAI / open_clip ViT CLIP state dict.*--format=hf_clip"):
        import_checkpoint("open_clip", REF / "hf_clip", tmp_path / "b", BPE, log=lambda *_: None)
    with pytest.raises(UserError, match="no checkpoint_best.pt"):
        import_checkpoint("wpse", REF / "hf_clip", tmp_path / "c", BPE, log=lambda *_: None)
    full_bpe = ROOT / "tests" / "reference" / "bpe_simple_vocab_16e6.txt.gz"
    with pytest.raises(UserError, match="has 49408 token ids but the model's text embedding has 544"):
        import_checkpoint("hf_clip", REF / "hf_clip", tmp_path / "d", str(full_bpe), log=lambda *_: None)


def test_cli_prints_one_line_errors(tmp_path):
    """The command line: a user's mistake is one "error: ..." line and exit status 2, no traceback."""
    command = [sys.executable, "-m", "wpce_jax.import_checkpoint", "--format=open_clip",
               f"--input={REF / 'open_clip_cfg'}", f"--workdir={tmp_path / 'wd'}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: --tokenizer is required") and "Traceback" not in result.stderr


@pytest.mark.parametrize("similarity,as_wpce_import", [("clip", False), ("wpce", True)])
def test_finetune_clip_config_takes_the_imported_parameters_whole(tmp_path, similarity, as_wpce_import):
    """configs/finetune_clip.py sets the fields that make an OpenAI-style CLIP (ln_pre, no patch bias, argmax
    pooling, padding rows) as the importer records them: with the tiny source's sizes put in, init_from finds every
    parameter, nothing missing, nothing unused, no shape differing. (The tiny source is an open_clip GELU model
    with its own pixel statistics; the config's QuickGELU and CLIP statistics are OpenAI's.)"""
    from configs.finetune_clip import get_config
    from wpce_jax.checkpoint import restore_params

    workdir, loaded = imported(tmp_path, "open_clip", REF / "open_clip_cfg", as_wpce=as_wpce_import)
    config = get_config(f"full,{similarity}")
    source = loaded.config
    with config.unlocked():
        config.data.image_size = source.data.image_size
        config.model.embed_dim = source.model.embed_dim
        for tower in ("image", "text"):
            for key, value in source.model[tower].items():
                if key in ("variant", "width", "depth", "heads", "mlp_dim", "patch_size", "context_length",
                           "vocab_size", "eot_id"):
                    config.model[tower][key] = value
    for field in ("image.ln_pre", "image.patch_bias", "text.pool", "text.null_rows", "similarity"):
        tower, _, key = field.rpartition(".")
        got = config.model[tower][key] if tower else config.model[key]
        want = source.model[tower][key] if tower else source.model[key]
        assert got == want, (field, got, want)
    model = make_model(config)
    abstract = jax.eval_shape(lambda: init_params(model, jax.random.key(0), config))
    found = restore_params(workdir, None, abstract)
    assert not found.missing and not found.unused
