"""Tests of wpce_jax.models: tower shapes and dtypes, sequel padding, causality, CLIP pooling, remat, config checks.

Everything runs on a tiny custom config (ViT: image 32, patch 8 -> 17 tokens; text: context 16) so the file takes
well under a minute on two CPU cores; the B/16 parameter count uses jax.eval_shape and allocates nothing.
"""
import math
import re

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from wpce_jax.models import (DualEncoder, PointCloudHead, VisionTransformer, end_positions,
                             init_params, logit_scale_value, make_model, parse_variant, sequel_token_ids,
                             soft_clip, validate_model_config)
from wpce_jax.models.transformer import EncoderBlock, MlpBlock, TransformerStack, quick_gelu

IMAGE_SIZE, PATCH, CONTEXT, VOCAB, EOT, EMBED = 32, 8, 16, 50, 49, 8
BATCH = 4


def tiny_config(similarity="wpce", dtype="float32", remat=False, **overrides) -> ml_collections.ConfigDict:
    """The tiny test config; `overrides` maps dotted paths (with "__" for ".") to replacement values."""
    fields = {
        "data": {"image_size": IMAGE_SIZE},
        "model": {
            "image": {"variant": "custom", "patch_size": PATCH, "width": 32, "depth": 2, "heads": 4,
                      "mlp_dim": 64},
            "text": {"vocab_size": VOCAB, "width": 32, "depth": 2, "heads": 4, "context_length": CONTEXT,
                     "eot_id": EOT},
            "embed_dim": EMBED, "similarity": similarity, "ln_eps": 1e-6, "dtype": dtype, "remat": remat,
            "weight_alpha": 100.0,
        },
    }
    for path, value in overrides.items():
        *parents, leaf = path.split("__")
        node = fields
        for key in parents:
            node = node[key]
        node[leaf] = value
    return ml_collections.ConfigDict(fields)


def random_tokens(rng: np.random.Generator, batch: int, length: int = CONTEXT) -> np.ndarray:
    """Rows of random non-eot ids with the eot at a random position; the last row has no eot (truncated text)."""
    tokens = rng.integers(0, VOCAB - 1, size=(batch, length), dtype=np.int32)  # EOT = VOCAB - 1 excluded
    for row in range(batch - 1):
        tokens[row, rng.integers(0, length)] = EOT
    return tokens


def random_images(seed: int, batch: int = BATCH) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (batch, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)


@pytest.fixture(scope="module")
def built():
    """(model, params, jitted apply) per (similarity, dtype); parameters are shared across dtypes, since the
    parameter tree does not depend on the compute dtype."""
    cache = {}

    def get(similarity="wpce", dtype="float32", remat=False):
        key = (similarity, dtype, remat)
        if key not in cache:
            model = make_model(tiny_config(similarity, dtype, remat))
            base = (similarity, "float32", False)
            if key == base:
                params = init_params(model, jax.random.key(0), tiny_config(similarity))
            else:
                params = get(similarity)[1]
            cache[key] = (model, params, jax.jit(model.apply, static_argnames="method"))
        return cache[key]
    return get


# ------------------------------------------------------------------------------------------------ shapes, dtypes

@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("similarity,m_img,m_txt", [("wpce", 1 + (IMAGE_SIZE // PATCH) ** 2, CONTEXT),
                                                    ("clip", 1, 1)])
def test_output_shapes_and_float32(built, similarity, m_img, m_txt, dtype):
    model, params, apply = built(similarity, dtype)
    tokens = random_tokens(np.random.default_rng(1), BATCH)
    image_cloud, text_cloud = apply({"params": params}, random_images(1), tokens)
    for cloud, m in ((image_cloud, m_img), (text_cloud, m_txt)):
        assert cloud.points.shape == (BATCH, m, EMBED)
        assert cloud.weights.shape == (BATCH, m)
        assert cloud.mask is None
        assert cloud.points.dtype == jnp.float32 and cloud.weights.dtype == jnp.float32
        assert np.all(np.isfinite(cloud.points)) and np.all(np.isfinite(cloud.weights))
    if similarity == "clip":
        np.testing.assert_array_equal(image_cloud.weights, 1.0)
        np.testing.assert_array_equal(text_cloud.weights, 1.0)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_uint8_pixels_are_normalised_on_the_device(built, dtype):
    """The pipeline hands uint8 pixels; the tower's output on them equals its output on the host-normalised
    float32 images (image_ops.normalize; 1e-6 in float32: the same arithmetic, possibly fused differently)."""
    from wpce_jax.data.image_ops import normalize

    model, params, apply = built("wpce", dtype)
    pixels = np.random.default_rng(0).integers(0, 256, (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    on_device = apply({"params": params}, pixels, method="encode_image")
    on_host = apply({"params": params}, normalize(pixels), method="encode_image")
    tol = 1e-6 if dtype == "float32" else 2e-2
    for a, b in zip(on_device, on_host):
        if a is not None:
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def test_bfloat16_compute_tracks_float32(built):
    """Same parameters, bf16 compute: outputs agree with float32 to bf16 accuracy (relative error < 5%), so the
    dtype really is only the compute precision."""
    tokens = random_tokens(np.random.default_rng(2), BATCH)
    _, params, apply32 = built("wpce", "float32")
    _, _, apply16 = built("wpce", "bfloat16")
    out32 = apply32({"params": params}, random_images(2), tokens)
    out16 = apply16({"params": params}, random_images(2), tokens)
    for c32, c16 in zip(out32, out16):
        err = np.linalg.norm(c16.points - c32.points) / np.linalg.norm(c32.points)
        assert err < 5e-2
        assert not np.array_equal(c16.points, c32.points)  # bf16 must actually have been used


# ------------------------------------------------------------------------------------------------------ weights

def test_soft_clip_matches_float64_reference():
    x = np.random.default_rng(3).normal(scale=200.0, size=(64,)).astype(np.float32)
    ref = 100.0 * np.tanh(x.astype(np.float64) / 100.0)
    np.testing.assert_allclose(soft_clip(jnp.asarray(x), 100.0), ref, rtol=1e-5, atol=1e-4)


def test_weights_bounded_by_alpha():
    """Huge raw weights saturate at +-alpha, never beyond; small ones pass almost unchanged (slope 1 at 0)."""
    alpha = 100.0
    head = PointCloudHead(embed_dim=EMBED, weight_alpha=alpha)
    tokens = jax.random.normal(jax.random.key(4), (3, 5, 32))
    params = head.init(jax.random.key(5), tokens)["params"]
    big = jax.tree_util.tree_map(lambda x: x, params)
    big["weights"]["kernel"] = params["weights"]["kernel"] * 1e4
    weights = head.apply({"params": big}, tokens).weights
    assert np.all(np.abs(weights) <= alpha)
    assert np.max(np.abs(weights)) > 0.99 * alpha  # the bound is reached, so the test can fail
    small = head.apply({"params": params}, tokens)
    raw = tokens @ params["weights"]["kernel"][:, 0] + params["weights"]["bias"][0]
    np.testing.assert_allclose(small.weights, alpha * np.tanh(np.asarray(raw, np.float64) / alpha), rtol=1e-5,
                               atol=1e-5)


# ----------------------------------------------------------------------------------------------- sequel padding

def brute_force_ids(tokens: np.ndarray) -> np.ndarray:
    """Independent reference: walk each row, after the first eot count k = 1, 2, ... and use VOCAB + k - 1."""
    out = tokens.copy()
    for r, row in enumerate(tokens):
        k = 0
        seen_end = False
        for t, tok in enumerate(row):
            if seen_end:
                k += 1
                out[r, t] = VOCAB + k - 1
            elif tok == EOT:
                seen_end = True
    return out


def test_sequel_ids_against_brute_force():
    rng = np.random.default_rng(6)
    tokens = random_tokens(rng, 64)
    tokens[0, -1] = EOT                                # eot at the last position: no padding
    tokens[1, :] = rng.integers(0, VOCAB - 1, CONTEXT)  # no eot at all
    tokens[2, [3, 7]] = EOT                            # two eots: the first one ends the text
    tokens[2, :3] = rng.integers(0, VOCAB - 1, 3)
    ids = np.asarray(sequel_token_ids(jnp.asarray(tokens), VOCAB, EOT))
    np.testing.assert_array_equal(ids, brute_force_ids(tokens))
    assert ids.max() >= VOCAB  # padding occurred, so the test exercises the sequel rows
    assert np.asarray(end_positions(jnp.asarray(tokens), EOT))[1] == CONTEXT - 1


def test_model_embeds_sequel_ids(built):
    """The embedded input the text tower sees is the embedding table at the brute-force ids."""
    model, params, _ = built("wpce")
    tokens = random_tokens(np.random.default_rng(7), BATCH)
    _, state = model.apply({"params": params}, jnp.asarray(tokens), method=DualEncoder.encode_text,
                           capture_intermediates=lambda mdl, _: isinstance(mdl, nn.Embed))
    embedded = state["intermediates"]["text_encoder"]["token_embed"]["__call__"][0]
    table = np.asarray(params["text_encoder"]["token_embed"]["embedding"])
    assert table.shape[0] == VOCAB + CONTEXT
    np.testing.assert_array_equal(embedded, table[brute_force_ids(tokens)])


# -------------------------------------------------------------------------------------- causality, CLIP pooling

def _text_tower(model, tokens):
    return model.text_encoder(tokens)


def _image_tower(model, images):
    return model.image_encoder(images)


def text_hidden(apply, params, tokens):
    """Final-normed text tokens [B, L, width] (before the head). `_text_tower` is a module-level function so
    that the jitted apply (method is a static argument) compiles once, not once per call."""
    return apply({"params": params}, jnp.asarray(tokens), method=_text_tower)


def test_text_is_causal(built):
    """Changing the token at position t leaves the outputs at positions < t unchanged and changes position t.
    Changes include turning a token into the eot and the eot into a plain token (which moves the end)."""
    _, params, apply = built("wpce")
    rng = np.random.default_rng(8)
    base = random_tokens(rng, BATCH)
    before = np.asarray(text_hidden(apply, params, base))
    for t in (1, 5, 11, CONTEXT - 1):
        changed = base.copy()
        for r in range(BATCH):
            changed[r, t] = (base[r, t] + 1 + rng.integers(0, VOCAB - 1)) % VOCAB  # any different id
        changed[0, t] = EOT if base[0, t] != EOT else 0
        after = np.asarray(text_hidden(apply, params, changed))
        np.testing.assert_allclose(after[:, :t], before[:, :t], rtol=0, atol=1e-6)
        # Row r's position t changes unless both versions are padding (then the token is ignored).
        ends_before = brute_force_ids(base)[:, t] >= VOCAB
        ends_after = brute_force_ids(changed)[:, t] >= VOCAB
        moved = ~(ends_before & ends_after)
        assert moved.any()
        assert np.all(np.abs(after[moved, t] - before[moved, t]).max(axis=-1) > 1e-4)


def test_clip_text_reads_the_eot_position(built):
    model, params, apply = built("clip")
    rng = np.random.default_rng(9)
    tokens = random_tokens(rng, BATCH)
    tokens[0, :] = rng.integers(0, VOCAB - 1, CONTEXT)
    tokens[0, 4] = EOT                                 # row 0: eot early, many positions after it
    cloud = apply({"params": params}, jnp.asarray(tokens), method=DualEncoder.encode_text)
    hidden = np.asarray(text_hidden(apply, params, tokens), np.float64)
    end = np.array([list(row).index(EOT) if EOT in row else CONTEXT - 1 for row in tokens])
    kernel = np.asarray(params["text_head"]["points"]["kernel"], np.float64)
    expected = hidden[np.arange(BATCH), end] @ kernel
    np.testing.assert_allclose(cloud.points[:, 0], expected, rtol=1e-5, atol=1e-5)
    # Tokens after the eot do not matter; a token before it does.
    after_end = tokens.copy()
    after_end[0, 5:] = rng.integers(0, VOCAB, CONTEXT - 5)
    same = apply({"params": params}, jnp.asarray(after_end), method=DualEncoder.encode_text)
    np.testing.assert_allclose(same.points, cloud.points, rtol=0, atol=1e-6)
    before_end = tokens.copy()
    before_end[0, 2] = (tokens[0, 2] + 1) % (VOCAB - 1)
    other = apply({"params": params}, jnp.asarray(before_end), method=DualEncoder.encode_text)
    assert np.abs(other.points[0] - cloud.points[0]).max() > 1e-4


def test_clip_image_reads_the_class_token(built):
    model, params, apply = built("clip")
    images = random_images(10)
    cloud = apply({"params": params}, images, method=DualEncoder.encode_image)
    hidden = apply({"params": params}, images, method=_image_tower)
    kernel = np.asarray(params["image_head"]["points"]["kernel"], np.float64)
    np.testing.assert_allclose(cloud.points[:, 0], np.asarray(hidden[:, 0], np.float64) @ kernel,
                               rtol=1e-5, atol=1e-5)


def test_logit_scale_parameterisation(built):
    _, wpce_params, _ = built("wpce")
    _, clip_params, _ = built("clip")
    assert math.isclose(float(wpce_params["logit_scale"]), 1 / 0.07, rel_tol=1e-6)
    assert math.isclose(float(clip_params["logit_scale"]), math.log(1 / 0.07), rel_tol=1e-6)
    assert math.isclose(float(logit_scale_value(wpce_params, "wpce")), 1 / 0.07, rel_tol=1e-6)
    assert math.isclose(float(logit_scale_value({"params": clip_params}, "clip")), 1 / 0.07, rel_tol=1e-5)


# ------------------------------------------------------------------------------------------------------- remat

def _stack_blocks(params, depth):
    """A loop stack's parameters ("block_0", ...) -> the scanned stack's ("blocks", leading depth axis)."""
    blocks = [params[f"block_{i}"] for i in range(depth)]
    return {"blocks": jax.tree.map(lambda *xs: jnp.stack(xs), *blocks), "ln_final": params["ln_final"]}


@pytest.mark.parametrize("remat,scan", [("full", False), ("save_dots", False), ("none", True), ("full", True),
                                        ("save_dots", True)])
def test_remat_and_scan_same_outputs_and_gradients(remat, scan):
    """nn.remat changes memory and nn.scan the program, not the maths. Checked on TransformerStack (with a causal
    mask, as the text tower uses it) against the plain loop of blocks on the same weights (stacked for scan):
    outputs and gradients equal to float32 rounding.
    Tolerances: outputs rtol 1e-5 / atol 1e-6; each gradient leaf |g_new - g| <= 1e-4 |g| + 1e-5 (L2 norms).
    XLA fuses the recomputed graph differently, so single entries differ by rounding; the absolute floor covers
    leaves whose exact gradient is zero (attention key biases: softmax ignores a shift shared by all keys)."""
    depth = 3
    kwargs = dict(depth=depth, num_heads=2, mlp_dim=32, ln_eps=1e-6)
    plain, other = TransformerStack(**kwargs), TransformerStack(**kwargs, remat=remat, scan=scan)
    x = jax.random.normal(jax.random.key(11), (2, 6, 16))
    mask = nn.make_causal_mask(jnp.ones((1, 6), jnp.int32), dtype=jnp.bool_)
    params = jax.jit(plain.init)(jax.random.key(12), x, mask)["params"]  # jitted: op-by-op init is slower
    converted = _stack_blocks(params, depth) if scan else params
    other_shapes = jax.eval_shape(other.init, jax.random.key(12), x, mask)["params"]
    assert jax.tree.map(lambda a: a.shape, other_shapes) == jax.tree.map(lambda a: a.shape, converted)
    probe = jax.random.normal(jax.random.key(13), x.shape)

    def loss(p, module):
        out = module.apply({"params": p}, x, mask)
        return jnp.sum(jnp.tanh(out) * probe), out

    run = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    grads, out = run(params, plain)
    grads_o, out_o = run(converted, other)
    np.testing.assert_allclose(out_o, out, rtol=1e-5, atol=1e-6)
    want = _stack_blocks(grads, depth) if scan else grads
    for (path, g_o), g in zip(jax.tree_util.tree_leaves_with_path(grads_o), jax.tree_util.tree_leaves(want)):
        err, scale = np.linalg.norm(g_o - g), np.linalg.norm(g)
        assert err <= 1e-4 * scale + 1e-5, (jax.tree_util.keystr(path), err, scale)
    assert any(np.abs(g).max() > 1e-3 for g in jax.tree_util.tree_leaves(grads))


def test_scanned_program_does_not_grow_with_depth():
    x = jnp.ones((2, 6, 16))

    def program_size(depth, scan):
        stack = TransformerStack(depth=depth, num_heads=2, mlp_dim=32, ln_eps=1e-6, scan=scan)
        params = jax.eval_shape(stack.init, jax.random.key(0), x)
        return len(jax.jit(stack.apply).lower(params, x).as_text())

    assert program_size(8, True) < 1.1 * program_size(2, True)
    assert program_size(8, False) > 2.5 * program_size(2, False)


def test_remat_config_reaches_both_towers(built):
    """model.remat=True turns remat on in both towers and leaves the parameter tree unchanged, so the stack-level
    test above covers the whole model."""
    model = make_model(tiny_config(remat=True))
    assert model.image_encoder.remat == model.text_encoder.remat == "full"  # a bool from an older config
    assert make_model(tiny_config(remat="save_dots")).text_encoder.remat == "save_dots"
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0), tiny_config(remat=True)))
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(built("wpce")[1])


# ----------------------------------------------------------------------------------------- validation, errors

@pytest.mark.parametrize("path,value,message", [
    ("model.image.variant", "X/16", "model.image.variant"),
    ("model.image.variant", "B/sixteen", "B/<patch>"),
    ("data.image_size", 30, "data.image_size"),
    ("model.image.heads", 5, "model.image.heads"),
    ("model.image.width", None, "model.image.width"),
    ("model.text.heads", 3, "model.text.heads"),
    ("model.text.vocab_size", None, "model.text.vocab_size"),
    ("model.text.eot_id", VOCAB, "model.text.eot_id"),
    ("model.text.context_length", 0, "model.text.context_length"),
    ("model.embed_dim", 2.5, "model.embed_dim"),
    ("model.similarity", "cosine", "model.similarity"),
    ("model.dtype", "float16", "model.dtype"),
    ("model.remat", "yes", "model.remat"),
    ("model.scan_blocks", "yes", "model.scan_blocks"),
    ("model.ln_eps", -1.0, "model.ln_eps"),
    ("model.weight_alpha", 0.0, "model.weight_alpha"),
    ("model.weight_bias", "no", "model.weight_bias"),
    ("model.text.activation", "relu", "model.text.activation"),
])
def test_config_validation_names_the_field(path, value, message):
    config = tiny_config(**{path.replace(".", "__"): value})
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_model_config(config)
    with pytest.raises(ValueError):
        make_model(config)


def test_named_variants_in_config():
    config = tiny_config()
    config.model.image = ml_collections.ConfigDict({"variant": "Ti/16"})
    validate_model_config(config)
    assert make_model(config).image_encoder.width == 192
    config.model.image = ml_collections.ConfigDict({"variant": "S", "patch_size": 16})
    assert make_model(config).image_encoder.patch_size == 16
    for image, message in [({"variant": "B"}, "model.image.patch_size is required"),
                           ({"variant": "B/16", "patch_size": 8}, "disagrees"),
                           ({"variant": "B/16", "depth": 2}, "model.image.depth is set")]:
        config.model.image = ml_collections.ConfigDict(image)
        with pytest.raises(ValueError, match=message):
            validate_model_config(config)


def test_parse_variant():
    assert parse_variant("L/14")[0].depth == 24 and parse_variant("L/14")[1] == 14
    with pytest.raises(ValueError, match=r"'H/14'.*Ti/<patch>.*L/<patch>"):
        parse_variant("H/14")


def test_vit_rejects_image_not_divisible_by_patch():
    vit = VisionTransformer(patch_size=8, width=16, depth=1, heads=2, mlp_dim=32)
    with pytest.raises(ValueError, match="not divisible by the ViT patch size 8"):
        jax.eval_shape(vit.init, jax.random.key(0), jnp.ones((1, 30, 32, 3)))


def test_text_rejects_tokens_longer_than_context(built):
    model, params, _ = built("wpce")
    with pytest.raises(ValueError, match="context_length"):
        jax.eval_shape(lambda t: model.apply({"params": params}, t, method=DualEncoder.encode_text),
                       jnp.ones((1, CONTEXT + 1), jnp.int32))


# ----------------------------------------------------------------------------------------------- B/16 size

def test_vit_b16_parameter_count():
    """ViT-B/16 at 224 px, encoder only (no heads): 85,798,656 parameters, the published count of the
    headless ViT-B/16 (e.g. timm vit_base_patch16_224 with num_classes=0). Shapes only, via eval_shape."""
    dims, patch = parse_variant("B/16")
    vit = VisionTransformer(patch_size=patch, width=dims.width, depth=dims.depth, heads=dims.heads,
                            mlp_dim=dims.mlp_dim)
    shapes = jax.eval_shape(vit.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
    count = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes))
    assert abs(count - 85_798_656) / 85_798_656 < 0.01


# ----------------------------------------------------------------------------- parity with the reference release

def test_quick_gelu_matches_float64_reference():
    x = np.random.default_rng(0).normal(scale=3.0, size=1000)
    want = x / (1 + np.exp(-1.702 * x))
    np.testing.assert_allclose(np.asarray(quick_gelu(jnp.asarray(x, jnp.float32))), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["gelu", "quick_gelu"])
def test_mlp_activation_against_numpy(activation):
    x = np.random.default_rng(1).normal(size=(3, 5, 16)).astype(np.float32)
    block = MlpBlock(32, activation=activation)
    params = jax.tree.map(np.asarray, block.init(jax.random.key(0), x))["params"]
    h = x.astype(np.float64) @ params["fc1"]["kernel"] + params["fc1"]["bias"]
    if activation == "quick_gelu":
        h = h / (1 + np.exp(-1.702 * h))
    else:
        h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    want = h @ params["fc2"]["kernel"] + params["fc2"]["bias"]
    np.testing.assert_allclose(np.asarray(block.apply({"params": params}, x)), want, rtol=1e-5, atol=1e-5)


def test_scan_blocks_reaches_both_towers():
    config = tiny_config(model__scan_blocks=True)
    model = make_model(config)
    assert model.image_encoder.scan and model.text_encoder.scan
    params = jax.eval_shape(lambda: init_params(model, jax.random.key(0), config))
    for tower in ("image_encoder", "text_encoder"):
        assert params[tower]["encoder"]["blocks"]["attn"]["query"]["kernel"].shape[0] == 2  # depth 2, stacked


def test_text_activation_and_weight_bias_reach_the_model():
    config = tiny_config(model__text__activation="quick_gelu", model__weight_bias=False)
    model = make_model(config)
    assert model.text_encoder.activation == "quick_gelu" and model.image_encoder.__class__ is VisionTransformer
    params = init_params(model, jax.random.key(0), config)
    for head in ("image_head", "text_head"):
        assert set(params[head]["weights"]) == {"kernel"}  # no bias
    assert set(init_params(make_model(tiny_config()), jax.random.key(0), tiny_config())["image_head"]["weights"]) \
        == {"kernel", "bias"}
    # The activation changes the text tower's output, not the image tower's.
    tokens = random_tokens(np.random.default_rng(2), BATCH)
    gelu_model = make_model(tiny_config(model__weight_bias=False))
    quick = model.apply({"params": params}, tokens, method="encode_text").points
    exact = gelu_model.apply({"params": params}, tokens, method="encode_text").points
    assert float(jnp.abs(quick - exact).max()) > 1e-4
    images = random_images(3)
    np.testing.assert_array_equal(model.apply({"params": params}, images, method="encode_image").points,
                                  gelu_model.apply({"params": params}, images, method="encode_image").points)


def test_attention_softmax_runs_in_float32_under_bfloat16():
    block = EncoderBlock(num_heads=4, mlp_dim=64, ln_eps=1e-6, dtype=jnp.bfloat16)
    x = jnp.ones((2, 9, 32), jnp.bfloat16)
    params = block.init(jax.random.key(0), x)
    jaxpr = jax.make_jaxpr(lambda p, x: block.apply(p, x))(params, x)

    def exps(jaxpr):
        yield from (e.outvars[0].aval.dtype for e in jaxpr.eqns if e.primitive.name == "exp")
        for sub in jax.extend.core.subjaxprs(jaxpr):
            yield from exps(sub)

    dtypes = list(exps(jaxpr.jaxpr))
    assert dtypes and all(d == jnp.float32 for d in dtypes), dtypes  # the softmax's exp; GELU uses erf, not exp
