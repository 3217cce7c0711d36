"""model.attention: JAX's attention implementations against the towers' Flax attention and a float64 NumPy
reference, and the choice of implementation ("auto", "cudnn" where it cannot run).

The tiny config of tests/test_models.py (head dimension 8); a few seconds on two CPU cores. cuDNN's kernel itself
needs an NVIDIA GPU: benchmarks/device_check.py compares it there.
"""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wpce_jax.errors import UserError
from wpce_jax.models.model_config import (AttentionUnavailableError, cudnn_attention_unavailable, init_params,
                                          make_model, resolve_attention, validate_model_config)
from wpce_jax.models.transformer import attention_fn
from test_models import BATCH, random_images, random_tokens, tiny_config


def numpy_attention(q, k, v, causal):
    """float64 reference: q [B, L, N, H], k and v [B, S, N, H] -> [B, L, N, H]."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    logits = np.einsum("blnh,bsnh->bnls", q, k) / np.sqrt(q.shape[-1])
    if causal:
        logits = np.where(np.tril(np.ones(logits.shape[-2:], bool)), logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bnls,bsnh->blnh", weights, v)


@pytest.mark.parametrize("causal", [False, True])
def test_xla_attention_fn_matches_float64_reference(causal):
    """The attention_fn the towers get for "xla", on random q, k, v: float32 within rtol 1e-5 / atol 1e-6."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, 7, 3, 8)).astype(np.float32) for _ in range(3))
    got = attention_fn("xla", causal)(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
    np.testing.assert_allclose(got, numpy_attention(q, k, v, causal), rtol=1e-5, atol=1e-6)
    assert attention_fn("flax", causal) is None  # Flax's own, the MultiHeadDotProductAttention default


def _encode_and_grads(config):
    """(image points, image weights, text points, text weights, gradients of a scalar of all four) for `config`'s
    model on fixed random weights and inputs."""
    model = make_model(config)
    params = init_params(model, jax.random.key(0), config)
    images = random_images(1)
    tokens = jnp.asarray(random_tokens(np.random.default_rng(2), BATCH))

    def outputs(p):
        image, text = model.apply({"params": p}, images, tokens)
        return image.points, image.weights, text.points, text.weights

    def scalar(p):  # random projections, so that no gradient vanishes by symmetry
        return sum(jnp.sum(jnp.sin(3 * o)) for o in outputs(p))

    return params, jax.jit(outputs)(params), jax.jit(jax.grad(scalar))(params)


@pytest.mark.parametrize("dtype,rtol,atol", [("float32", 1e-5, 1e-5), ("bfloat16", 0.0, 0.05)])
def test_xla_attention_equals_flax_attention(dtype, rtol, atol):
    """Both towers (images: no mask; text: causal) with model.attention="xla" against Flax's attention ("auto" on
    this CPU), on the same random weights and inputs: the same parameters, outputs and gradients.
    Tolerances: float32 outputs rtol 1e-5 / atol 1e-5, gradients |g_xla - g| <= 1e-4 |g| + 1e-5 (L2 norm per leaf).
    bfloat16: outputs within atol 0.05 (points have unit norm; bf16 keeps 8 mantissa bits and the two round the
    attention weights at different places: Flax scales the query and takes logits in bf16, JAX takes them in
    float32 and rounds the softmax to bf16), gradients within 5% of each leaf's norm (the attention key biases,
    whose exact gradient is zero, left out)."""
    config_flax, config_xla = tiny_config(dtype=dtype), tiny_config(dtype=dtype, model__attention="xla")
    assert resolve_attention(config_flax) == "flax" and resolve_attention(config_xla) == "xla"
    params, out, grads = _encode_and_grads(config_flax)
    params_x, out_x, grads_x = _encode_and_grads(config_xla)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_x)):
        np.testing.assert_array_equal(a, b)
    assert jax.tree.structure(params) == jax.tree.structure(params_x)
    for a, b in zip(out, out_x):
        np.testing.assert_allclose(np.asarray(b, np.float32), np.asarray(a, np.float32), rtol=rtol, atol=atol)
    rel, floor = (1e-4, 1e-5) if dtype == "float32" else (0.05, 1e-3)
    for (path, g_x), g in zip(jax.tree_util.tree_leaves_with_path(grads_x), jax.tree.leaves(grads)):
        if dtype == "bfloat16" and "['key']['bias']" in jax.tree_util.keystr(path):
            continue  # exactly zero in exact arithmetic (softmax ignores a shift shared by all keys): bf16 noise
        err, scale = np.linalg.norm(g_x - g), np.linalg.norm(g)
        assert err <= rel * scale + floor, (dtype, jax.tree_util.keystr(path), err, scale)
    assert any(np.abs(g).max() > 1e-2 for g in jax.tree.leaves(grads))


def test_cudnn_where_it_cannot_run_is_a_config_error():
    """On this CPU "cudnn" fails at validation (before any compute), as a UserError naming the field."""
    config = tiny_config(dtype="bfloat16", model__attention="cudnn")
    for check in (validate_model_config, make_model):
        with pytest.raises(AttentionUnavailableError, match=r"model\.attention='cudnn'.*NVIDIA GPU"):
            check(config)
    assert issubclass(AttentionUnavailableError, UserError) and issubclass(AttentionUnavailableError, ValueError)
    with pytest.raises(ValueError, match=r"model\.attention must be one of \('auto', 'xla', 'cudnn'\)"):
        validate_model_config(tiny_config(model__attention="flash"))


def _fake_gpu(capability="9.0", platform_version="cuda 12080"):
    return types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H200", compute_capability=capability,
                                 client=types.SimpleNamespace(platform_version=platform_version))


@pytest.mark.parametrize("device,dtype,image_width,want", [
    (_fake_gpu(), "bfloat16", 32, None),                              # head dim 8
    (_fake_gpu(), "float32", 32, "model.dtype='bfloat16'"),
    (_fake_gpu(), "bfloat16", 36, "model.image.width / model.image.heads = 9"),
    (_fake_gpu("8.0"), "bfloat16", 4 * 192, "at most 128"),              # head dim 192: Hopper only
    (_fake_gpu("9.0"), "bfloat16", 4 * 192, None),
    (_fake_gpu("7.5"), "bfloat16", 32, "compute capability 8.0"),
    (_fake_gpu(platform_version="rocm 6.2"), "bfloat16", 32, "NVIDIA GPU"),
])
def test_cudnn_conditions_and_auto(device, dtype, image_width, want):
    """cudnn_attention_unavailable follows jax's cuDNN checks; "auto" takes cuDNN exactly where it can run."""
    config = tiny_config(dtype=dtype, model__image__width=image_width)
    reason = cudnn_attention_unavailable(config, device)
    if want is None:
        assert reason is None
        assert resolve_attention(config, device) == "cudnn"
    else:
        assert want in reason
        assert resolve_attention(config, device) == "flax"
        config.model.attention = "cudnn"
        with pytest.raises(AttentionUnavailableError):
            resolve_attention(config, device)


def test_checkpoint_of_a_cudnn_run_loads_without_cudnn(tmp_path):
    """checkpoint.restore of a run saved with model.attention="cudnn", on this CPU: the config falls back to "auto"
    (the implementation has no parameters) and the parameters come back as saved."""
    from wpce_jax.cli import load_config_file

    from wpce_jax import checkpoint
    from wpce_jax.optimizer import make_optimizer
    from wpce_jax.train_step import initial_state

    config = load_config_file("configs/digits.py")
    config.model.text.vocab_size, config.model.text.eot_id = 64, 63
    config.model.image.update(dict(width=16, depth=1, heads=2, mlp_dim=32))
    config.model.text.update(dict(width=16, depth=1, heads=2, mlp_dim=32))
    config.data.tokenizer_path = str(tmp_path / "absent.model")
    config.model.attention = "auto"
    state = initial_state(make_model(config), make_optimizer(config), config, jax.random.key(0))
    config.model.attention = "cudnn"  # as a GPU run would have saved it
    saver = checkpoint.Checkpointer(tmp_path, max_to_keep=1, async_save=False)
    saver.save(1, state, 0, config)
    saver.close()
    restored = checkpoint.restore(tmp_path)
    assert restored.config.model.attention == "auto" and restored.step == 1
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(restored.state.params)):
        np.testing.assert_array_equal(a, b)
