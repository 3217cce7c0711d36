"""The paper's release (sony/wpse): a run directory -> an `Imported` model and its kernel.

Input: the directory holding `checkpoint_best.pt` (torch.save of {"epoch", "state_dict", "optimizer", "scaler",
"best_acc1", "args"}) and `config.yaml` (the Hydra config the run wrote; without it, the checkpoint's own `args`).
Only `state_dict`, the model section and the criterion section are read; DDP's "module." prefix is dropped.

Model (`model._target_`): `models.CLIP_WPSE_VITB16` / `models.CLIP_WPSE_two_proj` (WPCE: every token a point) or
`models.CLIP_VITB16` / `models.CLIP` (the CLIP baseline). The image tower is timm 0.6.7's VisionTransformer
(`visual.patch_embed.proj` with a bias, `visual.cls_token`, `visual.pos_embed`, `visual.blocks.N.{norm1,
attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `visual.norm`; no norm before the blocks; exact GELU); the text
tower is OpenAI CLIP's (QuickGELU). Points: `image_projection`/`text_projection` [width, d]; weights:
`image_weight_proj`/`text_weight_proj` [width, 1] through `weight_act` (ScaledTanh / ScaledSigmoid with alpha),
no biases. "sequel" null tokens: the table has vocab + L - 1 rows and every id-0 token takes the next one.
LayerNorm eps: `ln_eps` everywhere for the *_VITB16 factories (the only ones that apply it); otherwise PyTorch's
1e-5 in the text tower and timm's 1e-6 in the ViT. The logit scale is `config_logit_scale.activation` of the parameter
(LogitScaleIdentity for WPCE, LogitScaleExp, the default, for CLIP), clamped after every update to
`config_logit_scale.min`/`max` (default raw 0 and 4.6052: [1, 100] for LogitScaleExp); they become
logit_scale_min/max. Heads: the config's `transformer_heads` and
`vision_model.num_heads` when it names them, otherwise width / 64 (the B/16 models: 8 and 12).

Criterion: `losses.CLIP_WPSE_Loss` with `rff_trick` `losses.RFFFeaturesGaussian(sigma)` or
`losses.RFFFeaturesIMQ(imq_c)`, `dim_out` features, and `comb_weights` (a_lin, a_rff) (none: the RFF kernel
alone); `losses.CLIPLoss` for the baseline.
"""
import numpy as np
import yaml
from etils import epath

from wpce_jax import logit_scale
from wpce_jax.weights.imported import HEAD_DIM, Imported, custom_vit_fields, head, image_size, openai_text_tower
from wpce_jax.weights.state_dict import StateDict, check_heads, conv_kernel, count_blocks
from wpce_jax.weights.torch_file import WeightsFileError, load_torch_file

CHECKPOINT = "checkpoint_best.pt"
CONFIG = "config.yaml"
WPCE_TARGETS = ("models.CLIP_WPSE_VITB16", "models.CLIP_WPSE_two_proj")
CLIP_TARGETS = ("models.CLIP_VITB16", "models.CLIP")
WEIGHT_ACTS = {"models.ScaledTanh": "tanh", "models.ScaledSigmoid": "sigmoid"}
KERNELS = {"losses.RFFFeaturesGaussian": ("gaussian", "sigma"), "losses.RFFFeaturesIMQ": ("imq", "imq_c")}


def _files(path: epath.Path) -> tuple[epath.Path, epath.Path | None]:
    if not path.exists():
        raise WeightsFileError(f"--input {path}: no such file or directory")
    checkpoint = path / CHECKPOINT if path.is_dir() else path
    if not checkpoint.exists():
        raise WeightsFileError(f"--input {path}: no {CHECKPOINT}; expected the release's run directory "
                               f"({CHECKPOINT} and {CONFIG})")
    config = checkpoint.parent / CONFIG
    return checkpoint, config if config.exists() else None


def _timm_vit(sd: StateDict, heads: int | None) -> tuple[dict, dict]:
    """timm 0.6.7's VisionTransformer under "visual." -> (image_encoder params, config fields)."""
    width, _, patch, _ = sd.shape("visual.patch_embed.proj.weight")
    heads = heads or width // HEAD_DIM
    check_heads(sd.source, "visual", width, heads)
    depth = count_blocks(sd, "visual.blocks.", "norm1.weight")
    mlp_dim = sd.shape("visual.blocks.0.mlp.fc1.weight")[0]
    encoder = {}
    for i in range(depth):
        p = f"visual.blocks.{i}."
        encoder[f"block_{i}"] = {
            "ln_attn": sd.layer_norm(p + "norm1", width),
            "attn": sd.fused_attention(p + "attn.qkv.weight", p + "attn.qkv.bias", p + "attn.proj", width, heads),
            "ln_mlp": sd.layer_norm(p + "norm2", width),
            "mlp": {"fc1": sd.dense(p + "mlp.fc1", width, mlp_dim), "fc2": sd.dense(p + "mlp.fc2", mlp_dim, width)},
        }
    encoder["ln_final"] = sd.layer_norm("visual.norm", width)
    tokens = sd.shape("visual.pos_embed")[1]
    params = {"patch_embed": {"kernel": conv_kernel(sd.take("visual.patch_embed.proj.weight", (width, 3, patch, patch))),
                              "bias": sd.take("visual.patch_embed.proj.bias", (width,))},
              "cls_token": sd.take("visual.cls_token", (1, 1, width)),
              "pos_embed": sd.take("visual.pos_embed", (1, tokens, width)), "encoder": encoder}
    return params, custom_vit_fields(width, depth, heads, mlp_dim, patch, image_size(sd.source, tokens, patch))


def _target(section, where: str, known) -> str:
    target = section.get("_target_") if isinstance(section, dict) else None
    if target not in known:
        raise WeightsFileError(f"{where}._target_ is {target!r}; expected one of {', '.join(known)}")
    return target


def _kernel(criterion: dict, where: str) -> dict:
    """The criterion section -> the run's wpce.* fields."""
    _target(criterion, where, ("losses.CLIP_WPSE_Loss",))
    rff = criterion.get("rff_trick") or {}
    kind, scale_key = KERNELS[_target(rff, f"{where}.rff_trick", tuple(KERNELS))]
    if not rff.get("first_normalize", False) or criterion.get("normalize_weights_p") or \
            criterion.get("norm_linear_feat"):
        raise WeightsFileError(f"{where}: first_normalize false, normalize_weights_p or norm_linear_feat set: "
                               f"variants this project's feature map does not compute")
    comb = criterion.get("comb_weights")
    a_lin, a_rff = (0.0, 1.0) if comb is None else (float(comb[0]), float(comb[1]))
    return {"wpce.kernel": kind, "wpce.scale": float(rff[scale_key]), "wpce.num_features": int(rff["dim_out"]),
            "wpce.a_lin": a_lin, "wpce.a_rff": a_rff}


def _logit_scale(raw: np.ndarray, model_cfg: dict, similarity: str) -> tuple[np.ndarray, dict]:
    """The release's parameter -> (this project's: the scale itself ("wpce") or its log ("clip"), the clamp's
    logit_scale_min/max fields in scale units)."""
    cfg = model_cfg.get("config_logit_scale") or {}
    activation = (cfg.get("activation") or {}).get("_target_", "models.LogitScaleExp")
    if activation not in ("models.LogitScaleExp", "models.LogitScaleIdentity"):
        raise WeightsFileError(f"config_logit_scale.activation {activation!r} is neither LogitScaleExp nor "
                               f"LogitScaleIdentity")
    act = np.exp if activation == "models.LogitScaleExp" else (lambda x: x)

    def bound(entry, default: float) -> float:  # the release's CLIP.raw_logit_scale, then its activation
        entry = entry or {"type": "raw_scale", "value": default}
        value = float(entry["value"])
        return float(act(value)) if entry["type"] == "raw_scale" else value

    # This project's clamp needs a positive lower bound (the release's default 0 is raw, i.e. exp(0) = 1 for CLIP).
    bounds = {"logit_scale_min": max(bound(cfg.get("min"), 0.0), 1e-6),
              "logit_scale_max": bound(cfg.get("max"), 4.6052)}
    scale = act(raw)
    return np.float32(logit_scale.to_parameter(np.float32(scale), similarity)), bounds


def read(path) -> Imported:
    """--input of --format=wpse -> Imported (similarity "wpce" or "clip"; the wpce.* fields set for "wpce")."""
    checkpoint_path, config_path = _files(epath.Path(path))
    checkpoint = load_torch_file(checkpoint_path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise WeightsFileError(f"{checkpoint_path}: expected the release's checkpoint (a dict with 'state_dict'), "
                               f"got {type(checkpoint).__name__} with keys {list(checkpoint)[:6] if isinstance(checkpoint, dict) else ''}")
    if config_path is not None:
        try:
            args = yaml.safe_load(config_path.read_text())
        except yaml.YAMLError as e:
            raise WeightsFileError(f"{config_path}: not YAML ({e})") from e
        where = str(config_path)
    else:
        args, where = checkpoint.get("args"), f"{checkpoint_path} (args)"
    imported = from_state_dict(checkpoint["state_dict"], str(checkpoint_path), args, where)
    imported.sources = [checkpoint_path] + ([config_path] if config_path else [])
    return imported


def from_state_dict(state_dict: dict, source: str, args: dict, where: str) -> Imported:
    """The release's state dict (names -> arrays; read from `source`) and Hydra config (`args`, read from
    `where`) -> Imported with no sources."""
    if not isinstance(args, dict) or not isinstance(args.get("model"), dict):
        raise WeightsFileError(f"{where}: no model section; expected the release's Hydra config")
    model_cfg = args["model"]
    target = _target(model_cfg, f"{where}: model", WPCE_TARGETS + CLIP_TARGETS)
    similarity = "wpce" if target in WPCE_TARGETS else "clip"
    ln_eps = model_cfg.get("ln_eps") if target.endswith("_VITB16") else None
    image_eps, text_eps = (1e-6, 1e-5) if ln_eps is None else (float(ln_eps), float(ln_eps))

    tensors = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    sd = StateDict(tensors, source)
    vision_heads = (model_cfg.get("vision_model") or {}).get("num_heads")
    image, fields = _timm_vit(sd, vision_heads)
    text, text_fields = openai_text_tower(sd, model_cfg.get("transformer_heads"))
    fields.update(text_fields)
    context = fields["model.text.context_length"]
    null = model_cfg.get("transformer_null_token_emb") or "none"
    if null == "sequel":
        fields.update({"model.text.vocab_size": text_fields["model.text.vocab_size"] - (context - 1),
                       "model.text.null_rows": context - 1, "model.text.sequel_rule": "zero_id"})
    elif null == "none":
        fields["model.text.null_rows"] = 0
    else:
        raise WeightsFileError(f"{where}: model.transformer_null_token_emb {null!r} is neither 'sequel' nor 'none'")

    vision_width, text_width = fields["model.image.width"], fields["model.text.width"]
    embed_dim = sd.shape("image_projection")[1]
    with_weights = similarity == "wpce"
    params = {"image_encoder": image, "text_encoder": text,
              "image_head": head(sd.take("image_projection", (vision_width, embed_dim)),
                                 sd.take("image_weight_proj", (vision_width, 1)) if with_weights else None),
              "text_head": head(sd.take("text_projection", (text_width, embed_dim)),
                                sd.take("text_weight_proj", (text_width, 1)) if with_weights else None),
              "logit_scale": None}
    params["logit_scale"], bounds = _logit_scale(sd.take("logit_scale", ()), model_cfg, similarity)
    fields.update(bounds)
    sd.check_all_taken()
    fields.update({"model.embed_dim": embed_dim, "model.similarity": similarity, "model.ln_eps": image_eps,
                   "model.image.ln_eps": image_eps, "model.text.ln_eps": text_eps,
                   "model.image.ln_pre": False, "model.image.patch_bias": True, "model.image.activation": "gelu",
                   "model.image.pixel_stats": "imagenet", "model.text.activation": "quick_gelu",
                   "model.text.pool": "argmax", "model.weight_bias": False})
    if with_weights:
        act = model_cfg.get("weight_act") or {}
        kind = WEIGHT_ACTS.get(act.get("_target_"))
        if kind is None:
            raise WeightsFileError(f"{where}: model.weight_act {act.get('_target_')!r} is not one of "
                                   f"{', '.join(WEIGHT_ACTS)}")
        fields.update({"model.weight_activation": kind, "model.weight_alpha": float(act["alpha"])})
        fields.update(_kernel(args.get("criterion") or {}, f"{where}: criterion"))
    return Imported(fields, params, [])
