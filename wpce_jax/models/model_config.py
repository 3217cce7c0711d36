"""A config -> the dual encoder: every model field read, validated before any compute, and the towers built.

Config fields read (an ml_collections.ConfigDict; `validate_model_config` checks them all before any compute and
raises ValueError naming the bad field; "optional" fields take the default shown when absent or None):

    data.image_size          int   square input image side in pixels; must be divisible by the patch size.
    model.image.variant      str   "Ti" | "S" | "B" | "L", optionally with the patch: "B/16"; or "custom".
    model.image.patch_size   int   patch side; required unless the variant names it (then it must agree).
    model.image.width        int   custom only: token width (a named variant fixes it; setting it is an error).
    model.image.depth        int   custom only: number of blocks.
    model.image.heads        int   custom only: attention heads; must divide width.
    model.image.mlp_dim      int   custom only: MLP hidden size.
    model.image.ln_pre       bool  optional, default False: a LayerNorm before the blocks (OpenAI CLIP's ViT).
    model.image.patch_bias   bool  optional, default True: the patch embedding has a bias (OpenAI CLIP's: none).
    model.image.activation   str   optional, default "gelu": the ViT MLP's activation, "gelu" | "quick_gelu".
    model.image.pixel_stats  str   optional, default "imagenet": mean/std normalising uint8 pixels, "imagenet" |
                                   "clip" (OpenAI CLIP's, which its weights expect).
    model.text.vocab_size    int   tokenizer vocabulary; ids must lie in [0, vocab_size).
    model.text.width         int   token width (paper: 512).
    model.text.depth         int   number of blocks (paper: 12).
    model.text.heads         int   attention heads; must divide width (paper: 8).
    model.text.mlp_dim       int   optional, default 4 * width: MLP hidden size.
    model.text.context_length int  maximum token length L (paper: 77).
    model.text.eot_id        int   end-of-text token id, in [0, vocab_size).
    model.text.activation    str   optional, default "gelu": the text MLP's activation, "gelu" (exact) or
                                   "quick_gelu" (x sigmoid(1.702 x), the reference release's text tower).
    model.text.pool          str   optional, default "first_eot": the position "clip" reads, "first_eot" or
                                   "argmax" (the largest id: OpenAI CLIP's rule).
    model.text.null_rows     int   optional, default context_length: embedding rows for the sequel padding tokens
                                   (context_length - 1: the reference release's table; 0: no sequel tokens,
                                   padding embedded as its own id, as OpenAI CLIP).
    model.text.sequel_rule   str   optional, default "after_end": which positions take sequel rows, "after_end"
                                   (after the first eot) or "zero_id" (every id 0: the reference release's rule).
    model.embed_dim          int   point dimension d shared by both towers.
    model.similarity         str   "wpce" (point clouds) or "clip" (one point per input, cosine baseline).
    model.ln_eps             float optional, default 1e-6: LayerNorm epsilon everywhere.
    model.image.ln_eps       float optional, default model.ln_eps: the ViT's LayerNorm epsilon.
    model.text.ln_eps        float optional, default model.ln_eps: the text tower's (the release's custom models
                                   keep PyTorch's 1e-5 here and timm's 1e-6 in the ViT).
    model.dtype              str   optional, default "float32": compute dtype, "float32" or "bfloat16";
                                   parameters are float32 either way.
    model.remat              str   optional, default "none": what each transformer block keeps for the backward
                                   pass, "none" | "full" | "save_dots" (transformer.REMAT_POLICIES); True and
                                   False (configs saved before) mean "full" and "none".
    model.scan_blocks        bool  optional, default False: run each tower's blocks under nn.scan (compile time
                                   independent of depth; the parameters of the blocks are stacked, so checkpoints
                                   of the two settings are not interchangeable).
    model.attention          str   optional, default "auto": the attention implementation, "auto" | "xla" |
                                   "cudnn" (`resolve_attention`); it changes no parameter and no checkpoint.
    model.weight_alpha       float optional, default 100.0: bound of the soft-clipped point weights.
    model.weight_bias        bool  optional, default True: the point-weight projection has a bias (the reference
                                   release's has none).
    model.weight_activation  str   optional, default "tanh": point weights alpha * tanh(x / alpha), or "sigmoid":
                                   alpha * sigmoid(x / alpha) (positive weights only: the paper's ablation).
    objective                str   optional, default "infonce": the training objective, "infonce" | "sigmoid" |
                                   "nce" (top level, not under model: it picks the logit parameters, models/towers.py).

The image size is not a model attribute: the ViT sizes its position table from the input it is initialised with,
so `init_params` reads `data.image_size` to build that input.
"""
from typing import Optional

import jax
import jax.numpy as jnp

from wpce_jax.config_fields import get as _get, positive_int as _positive_int
from wpce_jax.data.image_ops import PIXEL_STATS
from wpce_jax.errors import ConfigError, UserError
from wpce_jax.logit_scale import SIMILARITIES
from wpce_jax.models.heads import WEIGHT_ACTIVATIONS
from wpce_jax.models.text import POOLS, SEQUEL_RULES, TextTransformer
from wpce_jax.models.towers import OBJECTIVES, DualEncoder
from wpce_jax.models.transformer import ACTIVATIONS, REMAT_POLICIES
from wpce_jax.models.vit import VIT_SIZES, VisionTransformer, ViTDims, check_tiles, parse_variant

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ATTENTION_CHOICES = ("auto", "xla", "cudnn")


class AttentionUnavailableError(UserError, ValueError):
    """config model.attention = "cudnn" where cuDNN's fused attention cannot run (a ValueError too, as every other
    config error)."""


def _image_dims(config) -> tuple[ViTDims, int]:
    """(ViTDims, patch size) from model.image.*; ValueError naming the field on any inconsistency."""
    variant = _get(config, "model.image.variant")
    patch_field = _get(config, "model.image.patch_size", None)
    if variant == "custom":
        dims = ViTDims(*(_positive_int(config, f"model.image.{f}") for f in ViTDims._fields))
        return dims, _positive_int(config, "model.image.patch_size")
    if isinstance(variant, str) and variant in VIT_SIZES:  # size name alone: the patch comes from patch_size
        dims, patch = VIT_SIZES[variant], None
    else:
        try:
            dims, patch = parse_variant(variant)
        except ValueError as e:
            raise ConfigError(f"config field model.image.variant: {e}; or 'custom' with explicit "
                              f"model.image.width/depth/heads/mlp_dim/patch_size") from None
    for field in ViTDims._fields:
        if _get(config, f"model.image.{field}", None) is not None:
            raise ConfigError(f"config field model.image.{field} is set but model.image.variant={variant!r} fixes "
                              f"it; use variant='custom' to choose the dimensions")
    if patch_field is not None:
        patch_field = _positive_int(config, "model.image.patch_size")
        if patch is not None and patch != patch_field:
            raise ConfigError(f"config field model.image.patch_size={patch_field} disagrees with "
                              f"model.image.variant={variant!r}")
        patch = patch_field
    if patch is None:
        raise ConfigError(f"config field model.image.patch_size is required: model.image.variant={variant!r} "
                          f"does not name a patch size")
    return dims, patch


def validate_model_config(config, require_vocabulary: bool = True) -> None:
    """Check every field `make_model` and `init_params` read (see the module docstring); ValueError naming the
    first bad field. Cheap, no JAX computation: the trainer calls it before anything else. With
    require_vocabulary=False, an unset model.text.vocab_size / eot_id passes (the tokenizer fills them in later)."""
    dims, patch = _image_dims(config)
    if dims.width % dims.heads:
        raise ConfigError(f"config field model.image.heads={dims.heads} does not divide model.image.width="
                          f"{dims.width}")
    image_size = _positive_int(config, "data.image_size")
    check_tiles(f"config field data.image_size={image_size}", image_size, patch, ConfigError)
    vocab = _get(config, "model.text.vocab_size", None)
    if vocab is not None or require_vocabulary:
        vocab = _positive_int(config, "model.text.vocab_size")
    width = _positive_int(config, "model.text.width")
    _positive_int(config, "model.text.depth")
    heads = _positive_int(config, "model.text.heads")
    if width % heads:
        raise ConfigError(f"config field model.text.heads={heads} does not divide model.text.width={width}")
    _positive_int(config, "model.text.mlp_dim", 4 * width)
    _positive_int(config, "model.text.context_length")
    eot = _get(config, "model.text.eot_id", None)
    if vocab is not None and (isinstance(eot, bool) or not isinstance(eot, int) or not 0 <= eot < vocab):
        raise ConfigError(f"config field model.text.eot_id must be an int in [0, {vocab}), got {eot!r}")
    _positive_int(config, "model.embed_dim")
    similarity = _get(config, "model.similarity")
    if similarity not in SIMILARITIES:
        raise ConfigError(f"config field model.similarity must be one of {SIMILARITIES}, got {similarity!r}")
    for path, default in (("model.ln_eps", 1e-6), ("model.weight_alpha", 100.0), ("model.image.ln_eps", 1.0),
                          ("model.text.ln_eps", 1.0)):
        value = _get(config, path, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"config field {path} must be a positive number, got {value!r}")
    dtype = _get(config, "model.dtype", "float32")
    if dtype not in DTYPES:
        raise ConfigError(f"config field model.dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    for path, default in (("model.scan_blocks", False), ("model.weight_bias", True), ("model.image.ln_pre", False),
                          ("model.image.patch_bias", True)):
        flag = _get(config, path, default)
        if not isinstance(flag, bool):
            raise ConfigError(f"config field {path} must be a bool, got {flag!r}")
    _remat_policy(config)
    resolve_attention(config)
    for path, default, allowed in (("model.text.activation", "gelu", ACTIVATIONS),
                                   ("model.image.activation", "gelu", ACTIVATIONS),
                                   ("model.image.pixel_stats", "imagenet", tuple(PIXEL_STATS)),
                                   ("model.text.pool", "first_eot", POOLS),
                                   ("model.text.sequel_rule", "after_end", SEQUEL_RULES),
                                   ("model.weight_activation", "tanh", tuple(WEIGHT_ACTIVATIONS))):
        value = _get(config, path, default)
        if value not in allowed:
            raise ConfigError(f"config field {path} must be one of {allowed}, got {value!r}")
    length = _get(config, "model.text.context_length")
    null_rows = _get(config, "model.text.null_rows", None)
    if null_rows is not None and (isinstance(null_rows, bool) or not isinstance(null_rows, int)
                                  or not (null_rows == 0 or null_rows >= length - 1)):
        raise ConfigError(f"config field model.text.null_rows must be 0 (no sequel padding tokens) or at least "
                          f"model.text.context_length - 1 = {length - 1}, got {null_rows!r}")
    objective = _get(config, "objective", "infonce")
    if objective not in OBJECTIVES:
        raise ConfigError(f"config field objective must be one of {OBJECTIVES}, got {objective!r}")


def _head_dims(config) -> dict[str, int]:
    """{"model.image": image head dim, "model.text": text head dim} (width / heads of each tower)."""
    dims, _ = _image_dims(config)
    return {"model.image": dims.width // dims.heads,
            "model.text": _get(config, "model.text.width") // _get(config, "model.text.heads")}


def cudnn_attention_unavailable(config, device=None) -> Optional[str]:
    """Why cuDNN's fused attention cannot run this config's towers on `device` (default: the first device), or
    None when it can. The conditions are those of jax.nn.dot_product_attention(implementation="cudnn") in the
    installed JAX (jax/_src/cudnn/fused_attention_stablehlo.py: check_layout, check_is_flash_attention): an NVIDIA
    GPU (CUDA) of compute capability 8.0 or later (flash attention), bfloat16 inputs (the project's other dtype,
    float32, is not taken), head dimension a multiple of 8 and at most 128 (256 from compute capability 9.0, Hopper).
    The towers' masks are none (images) and causal (text), both the kernel's own."""
    device = device or jax.devices()[0]
    capability = getattr(device, "compute_capability", None)
    if device.platform != "gpu" or capability is None or "cuda" not in device.client.platform_version.lower():
        return f"cuDNN's fused attention needs an NVIDIA GPU; this process runs on {device.device_kind} " \
               f"({device.platform})"
    major_minor = tuple(int(part) for part in str(capability).split(".")[:2])
    if major_minor < (8, 0):
        return f"cuDNN's fused attention needs compute capability 8.0 or later; {device.device_kind} has {capability}"
    dtype = _get(config, "model.dtype", "float32")
    if dtype != "bfloat16":
        return f"cuDNN's fused attention needs model.dtype='bfloat16', got {dtype!r}"
    largest = 256 if major_minor >= (9, 0) else 128
    for tower, head_dim in _head_dims(config).items():
        if head_dim % 8 or head_dim > largest:
            return (f"cuDNN's fused attention needs a head dimension that is a multiple of 8 and at most {largest}; "
                    f"{tower}.width / {tower}.heads = {head_dim}")
    return None


def resolve_attention(config, device=None) -> str:
    """model.attention -> the towers' implementation, a transformer.ATTENTIONS name: "flax", "xla" or "cudnn".

    "auto": "cudnn" where `cudnn_attention_unavailable` finds nothing against it (NVIDIA GPUs, bfloat16), else
    "flax", Flax's own attention (the towers' attention before this field existed): on the CPU, JAX's "xla"
    implementation is slower over a training step (ViT-Ti/16 forward and backward, docs/performance.md); on TPUs
    and on GPUs in float32 the two have not been compared, so nothing changes there.
    "xla": jax.nn.dot_product_attention's XLA implementation everywhere. "cudnn": the fused kernel, or
    AttentionUnavailableError (raised by validate_model_config, before any compute) where it cannot run.
    device: the device the towers will run on (default: the first device).
    """
    attention = _get(config, "model.attention", "auto")
    if attention not in ATTENTION_CHOICES:
        raise ConfigError(f"config field model.attention must be one of {ATTENTION_CHOICES}, got {attention!r}")
    if attention == "xla":
        return "xla"
    reason = cudnn_attention_unavailable(config, device)
    if attention == "cudnn":
        if reason:
            raise AttentionUnavailableError(f"config field model.attention='cudnn': {reason}; use 'auto' (cuDNN "
                                            f"where it can run) or 'xla'")
        return "cudnn"
    return "flax" if reason else "cudnn"


def _remat_policy(config) -> str:
    """model.remat as a REMAT_POLICIES name (bools from configs saved before the policies: True is "full")."""
    remat = _get(config, "model.remat", "none")
    if isinstance(remat, bool):
        return "full" if remat else "none"
    if remat not in REMAT_POLICIES:
        raise ConfigError(f"config field model.remat must be one of {tuple(REMAT_POLICIES)}, got {remat!r}")
    return remat


def make_model(config) -> DualEncoder:
    """Validated config -> DualEncoder (unbound; parameters come from `init_params`)."""
    validate_model_config(config)
    dims, patch = _image_dims(config)
    ln_eps = float(_get(config, "model.ln_eps", 1e-6))
    dtype = DTYPES[_get(config, "model.dtype", "float32")]
    remat, scan = _remat_policy(config), _get(config, "model.scan_blocks", False)
    text_width, attention = _get(config, "model.text.width"), resolve_attention(config)
    image_encoder = VisionTransformer(patch_size=patch, width=dims.width, depth=dims.depth, heads=dims.heads,
                                      mlp_dim=dims.mlp_dim, ln_eps=float(_get(config, "model.image.ln_eps", ln_eps)),
                                      dtype=dtype, remat=remat, scan=scan,
                                      ln_pre=_get(config, "model.image.ln_pre", False),
                                      patch_bias=_get(config, "model.image.patch_bias", True),
                                      activation=_get(config, "model.image.activation", "gelu"),
                                      pixel_stats=_get(config, "model.image.pixel_stats", "imagenet"),
                                      attention=attention)
    text_encoder = TextTransformer(
        vocab_size=_get(config, "model.text.vocab_size"), width=text_width,
        depth=_get(config, "model.text.depth"), heads=_get(config, "model.text.heads"),
        mlp_dim=_get(config, "model.text.mlp_dim", 4 * text_width),
        context_length=_get(config, "model.text.context_length"), eot_id=_get(config, "model.text.eot_id"),
        ln_eps=float(_get(config, "model.text.ln_eps", ln_eps)), dtype=dtype, remat=remat, scan=scan,
        activation=_get(config, "model.text.activation", "gelu"),
        null_rows=_get(config, "model.text.null_rows", None),
        sequel_rule=_get(config, "model.text.sequel_rule", "after_end"), attention=attention)
    return DualEncoder(image_encoder=image_encoder, text_encoder=text_encoder,
                       embed_dim=_get(config, "model.embed_dim"), similarity=_get(config, "model.similarity"),
                       weight_alpha=float(_get(config, "model.weight_alpha", 100.0)),
                       objective=_get(config, "objective", "infonce"),
                       weight_bias=_get(config, "model.weight_bias", True),
                       weight_activation=_get(config, "model.weight_activation", "tanh"),
                       text_pool=_get(config, "model.text.pool", "first_eot"))


def dummy_inputs(config, batch_size: int = 1) -> tuple[jax.Array, jax.Array]:
    """Inputs of the configured shapes: images [batch, S, S, 3] f32 (S = data.image_size), tokens
    [batch, context_length] int32. For initialisation and shape inference only."""
    size = _get(config, "data.image_size")
    length = _get(config, "model.text.context_length")
    return jnp.zeros((batch_size, size, size, 3), jnp.float32), jnp.zeros((batch_size, length), jnp.int32)


def init_params(model: DualEncoder, rng: jax.Array, config) -> dict:
    """Parameters of `model` (the inner "params" dict: apply with `model.apply({"params": params}, ...)`),
    initialised from `rng` on batch-1 dummy inputs of the configured shapes. Jitted: one compile instead of
    op-by-op dispatch, which matters for B/16 and larger."""
    images, tokens = dummy_inputs(config)
    return jax.jit(model.init)(rng, images, tokens)["params"]


__all__ = ["make_model", "init_params", "dummy_inputs", "validate_model_config", "resolve_attention",
           "cudnn_attention_unavailable", "AttentionUnavailableError", "DTYPES", "ATTENTION_CHOICES"]
