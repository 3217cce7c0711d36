"""OpenAI / open_clip CLIP state dicts -> an `Imported` CLIP model (similarity "clip").

Input: a file (`open_clip_model.safetensors`, `open_clip_pytorch_model.bin`, or any plain state dict in .bin/.pt/
.safetensors), or a directory holding one. With `open_clip_config.json` beside it ({"model_cfg": {...},
"preprocess_cfg": {...}}, or a bare model config) the architecture and activation come from it; without, they are
read from the tensor shapes as OpenAI's `build_model` reads them (heads = width / 64) with OpenAI's QuickGELU and
pixel statistics.

Names: `visual.conv1` (no bias), `visual.class_embedding`, `visual.positional_embedding`, `visual.ln_pre`,
`visual.transformer.resblocks.N.*`, `visual.ln_post`, `visual.proj`; `token_embedding`, `positional_embedding`,
`transformer.resblocks.N.*`, `ln_final`, `text_projection`, `logit_scale` (the log of the scale). LayerNorm eps
is PyTorch's default 1e-5; the text embedding is read at the largest token id (OpenAI's end-of-text rule).
"""
import json

import numpy as np
from etils import epath

from wpce_jax.data.image_ops import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from wpce_jax.weights.imported import (HEAD_DIM, Imported, custom_vit_fields, head, image_size, openai_blocks,
                                       openai_text_tower)
from wpce_jax.weights.safetensors_file import load_safetensors
from wpce_jax.weights.state_dict import StateDict, conv_kernel
from wpce_jax.weights.torch_file import WeightsFileError, load_torch_file

WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors",
                "pytorch_model.bin")
CONFIG_FILE = "open_clip_config.json"
# Entries of OpenAI's original state dicts that hold no parameter.
_OPENAI_SCALARS = ("input_resolution", "context_length", "vocab_size")


def read_tensors(path: epath.Path) -> dict:
    """A state dict from a .safetensors or a torch.save file (a dict of tensors, or {"state_dict": ...})."""
    if path.name.endswith(".safetensors"):
        return load_safetensors(path)
    obj = load_torch_file(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, (np.ndarray, int, float)) for v in obj.values()):
        raise WeightsFileError(f"{path}: expected a state dict (tensor names to tensors), got {type(obj).__name__}")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def _weights_file(path: epath.Path) -> epath.Path:
    if not path.exists():
        raise WeightsFileError(f"--input {path}: no such file or directory")
    if not path.is_dir():
        return path
    for name in WEIGHT_FILES:
        if (path / name).exists():
            return path / name
    raise WeightsFileError(f"--input {path}: a directory without any of {', '.join(WEIGHT_FILES)}")


def _pixel_stats(config_path: epath.Path, preprocess: dict) -> str:
    mean, std = preprocess.get("mean"), preprocess.get("std")
    if mean is None and std is None:
        return "clip"
    for name, (m, s) in (("clip", (CLIP_MEAN, CLIP_STD)), ("imagenet", (IMAGENET_MEAN, IMAGENET_STD))):
        if np.allclose(mean, m, atol=1e-4) and np.allclose(std, s, atol=1e-4):
            return name
    raise WeightsFileError(f"{config_path}: preprocess_cfg mean {mean} / std {std} are neither OpenAI CLIP's nor "
                           f"ImageNet's, the two normalisations this project's ViT knows")


def _model_config(config_path: epath.Path) -> tuple[dict, dict]:
    """(model_cfg, preprocess_cfg) of an open_clip config, with the architectures this project cannot run
    refused by name."""
    try:
        cfg = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise WeightsFileError(f"{config_path}: not JSON ({e})") from e
    model_cfg = cfg.get("model_cfg", cfg)
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    unsupported = [f"vision_cfg.{k}" for k in ("timm_model_name", "attentional_pool", "no_ln_pre",
                                               "final_ln_after_pool", "output_tokens") if vision.get(k)]
    unsupported += [f"text_cfg.{k}" for k in ("hf_model_name", "proj_bias", "no_causal_mask") if text.get(k)]
    if isinstance(vision.get("layers"), (list, tuple)):
        unsupported.append("vision_cfg.layers (a ResNet)")
    if vision.get("pool_type", "tok") != "tok":
        unsupported.append(f"vision_cfg.pool_type={vision['pool_type']!r}")
    if text.get("pool_type", "argmax") != "argmax":
        unsupported.append(f"text_cfg.pool_type={text['pool_type']!r}")
    if text.get("proj_type", "linear") != "linear" and text.get("proj_type") is not None:
        unsupported.append(f"text_cfg.proj_type={text['proj_type']!r}")
    if unsupported:
        raise WeightsFileError(f"{config_path}: this project's towers cannot run {', '.join(unsupported)}; only "
                               f"OpenAI-style ViT + causal text transformer CLIPs import")
    return model_cfg, cfg.get("preprocess_cfg", {})


def read(path) -> Imported:
    """--input of --format=open_clip -> Imported (similarity "clip")."""
    file = _weights_file(epath.Path(path))
    config_path = file.parent / CONFIG_FILE
    model_cfg, preprocess = _model_config(config_path) if config_path.exists() else (None, {})
    sd = StateDict(read_tensors(file), str(file))
    sd.skip(*_OPENAI_SCALARS, "attn_mask", "visual.attn_mask")
    if "visual.conv1.weight" not in sd or "visual.proj" not in sd:
        raise WeightsFileError(f"{file}: not an OpenAI / open_clip ViT CLIP state dict (no visual.conv1.weight or "
                               f"visual.proj); for a transformers CLIPModel use --format=hf_clip, for the paper's "
                               f"release --format=wpse")
    vision_cfg = (model_cfg or {}).get("vision_cfg", {})
    text_cfg = (model_cfg or {}).get("text_cfg", {})

    width, _, patch, _ = sd.shape("visual.conv1.weight")
    heads = width // int(vision_cfg.get("head_width", HEAD_DIM))
    blocks = openai_blocks(sd, "visual.transformer.resblocks.", width, heads)
    tokens = sd.shape("visual.positional_embedding")[0]
    embed_dim = sd.shape("visual.proj")[1]
    image = {"patch_embed": {"kernel": conv_kernel(sd.take("visual.conv1.weight", (width, 3, patch, patch)))},
             "cls_token": sd.take("visual.class_embedding", (width,)).reshape(1, 1, width),
             "pos_embed": sd.take("visual.positional_embedding", (tokens, width))[None],
             "ln_pre": sd.layer_norm("visual.ln_pre", width),
             "encoder": {**blocks, "ln_final": sd.layer_norm("visual.ln_post", width)}}
    text, text_fields = openai_text_tower(sd, text_cfg.get("heads", 8) if model_cfg else None)  # open_clip: 8
    text_width = text_fields["model.text.width"]
    params = {"image_encoder": image, "text_encoder": text,
              "image_head": head(sd.take("visual.proj", (width, embed_dim))),
              "text_head": head(sd.take("text_projection", (text_width, embed_dim))),
              "logit_scale": sd.take("logit_scale", ())}
    sd.check_all_taken()

    quick_gelu = bool(model_cfg.get("quick_gelu", False)) if model_cfg else True  # OpenAI's weights: QuickGELU
    activation = "quick_gelu" if quick_gelu else "gelu"
    size = image_size(str(file), tokens, patch)
    fields = {**custom_vit_fields(width, len(blocks), heads, blocks["block_0"]["mlp"]["fc1"]["kernel"].shape[1],
                                  patch, size), **text_fields,
              "model.embed_dim": embed_dim, "model.similarity": "clip", "model.ln_eps": 1e-5,
              "model.image.ln_pre": True, "model.image.patch_bias": False, "model.image.activation": activation,
              "model.image.pixel_stats": _pixel_stats(config_path, preprocess), "model.text.activation": activation,
              "model.text.pool": "argmax", "model.text.null_rows": 0}
    if model_cfg:
        _check_config(config_path, model_cfg, fields, size)
    return Imported(fields, params, [file] + ([config_path] if model_cfg else []))


def _check_config(config_path: epath.Path, model_cfg: dict, fields: dict, size: int) -> None:
    """The config's dimensions must be the tensors' (a config of another model beside the weights)."""
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    config_size = vision.get("image_size")
    if isinstance(config_size, (list, tuple)) and len(set(config_size)) == 1:
        config_size = config_size[0]
    expected = {"embed_dim": (model_cfg.get("embed_dim"), fields["model.embed_dim"]),
                "vision_cfg.width": (vision.get("width"), fields["model.image.width"]),
                "vision_cfg.layers": (vision.get("layers"), fields["model.image.depth"]),
                "vision_cfg.patch_size": (vision.get("patch_size"), fields["model.image.patch_size"]),
                "vision_cfg.image_size": (config_size, size),
                "text_cfg.width": (text.get("width"), fields["model.text.width"]),
                "text_cfg.layers": (text.get("layers"), fields["model.text.depth"]),
                "text_cfg.context_length": (text.get("context_length"), fields["model.text.context_length"]),
                "text_cfg.vocab_size": (text.get("vocab_size"), fields["model.text.vocab_size"])}
    wrong = [f"{k}={c} (tensors: {t})" for k, (c, t) in expected.items() if c is not None and c != t]
    if wrong:
        raise WeightsFileError(f"{config_path} does not describe the weights beside it: {', '.join(wrong)}")
