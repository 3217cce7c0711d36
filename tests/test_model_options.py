"""The model options that imported weights need (and the paper's ablations): weight activation, ln_pre, patch
bias, per-tower activation and LayerNorm eps, pixel statistics, CLIP text pooling, sequel padding rows and rules.

Each against a float64 NumPy reference or an exact identity; tiny models (tests/test_models.py's config). The
publishers' code checks them again end to end (tests/test_import_checkpoint.py).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wpce_jax.data.image_ops import CLIP_MEAN, CLIP_STD, normalize
from wpce_jax.models import PointCloudHead, make_model, init_params, validate_model_config
from wpce_jax.models.text import release_sequel_token_ids, sequel_token_ids
from test_models import CONTEXT, EOT, VOCAB, tiny_config


def test_sigmoid_weights_match_float64_reference():
    tokens = jax.random.normal(jax.random.key(0), (3, 5, 16)) * 40
    head = PointCloudHead(embed_dim=4, weight_alpha=7.0, weight_bias=False, weight_activation="sigmoid")
    params = head.init(jax.random.key(1), tokens)
    raw = np.asarray(tokens, np.float64) @ np.asarray(params["params"]["weights"]["kernel"], np.float64)
    want = 7.0 / (1 + np.exp(-raw[..., 0] / 7.0))
    got = head.apply(params, tokens).weights
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.all(np.asarray(got) > 0) and "bias" not in params["params"]["weights"]


def test_release_sequel_rule():
    """The release's rule: every id 0 is padding, the k-th one taking row vocab + k - 1. It agrees with the
    after-end rule on zero-padded rows without id 0 in the text, and differs (as the release does) when "!"
    (id 0) is inside the text."""
    rows = np.array([[VOCAB - 2, 5, 7, EOT, 0, 0], [VOCAB - 2, 0, 7, EOT, 0, 0]], np.int32)
    got = np.asarray(release_sequel_token_ids(jnp.asarray(rows), VOCAB))
    np.testing.assert_array_equal(got[0], [VOCAB - 2, 5, 7, EOT, VOCAB, VOCAB + 1])
    np.testing.assert_array_equal(got[1], [VOCAB - 2, VOCAB, 7, EOT, VOCAB + 1, VOCAB + 2])
    np.testing.assert_array_equal(got[0], sequel_token_ids(jnp.asarray(rows), VOCAB, EOT)[0])


def _params(config):
    return init_params(make_model(config), jax.random.key(0), config)


def test_options_shape_the_parameter_tree():
    base = _params(tiny_config())
    assert "ln_pre" not in base["image_encoder"] and "bias" in base["image_encoder"]["patch_embed"]
    assert base["text_encoder"]["token_embed"]["embedding"].shape[0] == VOCAB + CONTEXT
    opts = _params(tiny_config(model__image__ln_pre=True, model__image__patch_bias=False,
                               model__text__null_rows=CONTEXT - 1))
    assert "ln_pre" in opts["image_encoder"] and "bias" not in opts["image_encoder"]["patch_embed"]
    assert opts["text_encoder"]["token_embed"]["embedding"].shape[0] == VOCAB + CONTEXT - 1
    none = _params(tiny_config(model__text__null_rows=0))
    assert none["text_encoder"]["token_embed"]["embedding"].shape[0] == VOCAB


@pytest.mark.parametrize("field, value", [("model.text.null_rows", 3), ("model.text.pool", "last"),
                                          ("model.weight_activation", "relu"), ("model.image.activation", "silu"),
                                          ("model.image.pixel_stats", "other"), ("model.image.ln_pre", "yes"),
                                          ("model.text.ln_eps", -1.0), ("model.text.sequel_rule", "x")])
def test_bad_option_names_the_field(field, value):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        validate_model_config(tiny_config(**{field.replace(".", "__"): value}))


def test_argmax_pool_and_no_sequel_read_the_largest_id():
    """OpenAI CLIP's text pooling: the position of the largest id (here placed after a later eot-free tail)."""
    config = tiny_config("clip", model__text__pool="argmax", model__text__null_rows=0)
    model = make_model(config)
    params = init_params(model, jax.random.key(0), config)
    tokens = np.array([[1, 2, EOT, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], np.int32)
    hidden = model.apply({"params": params}, tokens, method=lambda m, t: m.text_encoder(t))
    cloud = model.apply({"params": params}, tokens, method="encode_text")
    want = model.apply({"params": params}, hidden[:, 2:3], method=lambda m, h: m.text_head(h)).points
    np.testing.assert_allclose(cloud.points, want, rtol=1e-6)


def test_clip_pixel_stats_and_quick_gelu_vit():
    """uint8 pixels through pixel_stats "clip" equal floats normalised with CLIP's mean/std by hand; the ViT's
    activation and eps options change its output."""
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    by_hand = ((pixels / 255.0 - CLIP_MEAN) / CLIP_STD).astype(np.float32)
    np.testing.assert_allclose(normalize(pixels, "clip"), by_hand, atol=1e-5)
    config = tiny_config(model__image__pixel_stats="clip")
    model = make_model(config)
    params = init_params(model, jax.random.key(0), config)
    encode = lambda m, p, x: m.apply({"params": p}, x, method="encode_image").points
    np.testing.assert_allclose(encode(model, params, pixels), encode(model, params, by_hand), atol=2e-5)
    for field, value in (("model__image__activation", "quick_gelu"), ("model__image__ln_eps", 0.5)):
        other = make_model(tiny_config(**{field: value}))
        assert not np.allclose(encode(other, params, by_hand), encode(model, params, by_hand), atol=1e-4), field
