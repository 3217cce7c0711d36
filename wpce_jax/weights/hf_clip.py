"""A transformers `CLIPModel` directory -> an `Imported` CLIP model (similarity "clip").

Input: the directory `CLIPModel.save_pretrained` writes: `config.json` and `model.safetensors` (or
`pytorch_model.bin`), with `preprocessor_config.json` when present for the pixel statistics (default OpenAI's).
Names: `vision_model.embeddings.{patch_embedding (no bias), class_embedding, position_embedding}`,
`vision_model.pre_layrnorm`, `vision_model.encoder.layers.N.{self_attn.{q,k,v,out}_proj, layer_norm1, mlp.fc1,
mlp.fc2, layer_norm2}`, `vision_model.post_layernorm`, `visual_projection`; `text_model.embeddings.{token_embedding,
position_embedding}`, `text_model.encoder.layers.N.*`, `text_model.final_layer_norm`, `text_projection`;
`logit_scale` (the log). Heads, activation (`hidden_act`) and LayerNorm eps come from the config; the text
embedding is read at the largest token id when `eos_token_id` is 2 (transformers' rule for configs of OpenAI's
models) and at the first `eos_token_id` otherwise.
"""
import json

import numpy as np
from etils import epath

from wpce_jax.data.image_ops import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from wpce_jax.weights.imported import Imported, custom_vit_fields, head, image_size
from wpce_jax.weights.open_clip import read_tensors
from wpce_jax.weights.state_dict import StateDict, check_heads, conv_kernel, count_blocks
from wpce_jax.weights.torch_file import WeightsFileError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}


def _layers(sd: StateDict, prefix: str, width: int, heads: int) -> dict:
    check_heads(sd.source, prefix.rstrip("."), width, heads)
    mlp_dim = sd.shape(f"{prefix}0.mlp.fc1.weight")[0]
    encoder = {}
    for i in range(count_blocks(sd, prefix, "layer_norm1.weight")):
        p = f"{prefix}{i}."
        encoder[f"block_{i}"] = {
            "ln_attn": sd.layer_norm(p + "layer_norm1", width),
            "attn": sd.separate_attention(p + "self_attn", width, heads),
            "ln_mlp": sd.layer_norm(p + "layer_norm2", width),
            "mlp": {"fc1": sd.dense(p + "mlp.fc1", width, mlp_dim), "fc2": sd.dense(p + "mlp.fc2", mlp_dim, width)},
        }
    return encoder


def _pixel_stats(directory: epath.Path) -> str:
    path = directory / "preprocessor_config.json"
    if not path.exists():
        return "clip"
    cfg = json.loads(path.read_text())
    mean, std = cfg.get("image_mean"), cfg.get("image_std")
    for name, (m, s) in (("clip", (CLIP_MEAN, CLIP_STD)), ("imagenet", (IMAGENET_MEAN, IMAGENET_STD))):
        if mean is None or (np.allclose(mean, m, atol=1e-4) and np.allclose(std, s, atol=1e-4)):
            return name
    raise WeightsFileError(f"{path}: image_mean {mean} / image_std {std} are neither OpenAI CLIP's nor ImageNet's")


def read(path) -> Imported:
    """--input of --format=hf_clip (the CLIPModel directory) -> Imported (similarity "clip")."""
    directory = epath.Path(path)
    config_path = directory / "config.json"
    if not directory.is_dir() or not config_path.exists():
        raise WeightsFileError(f"--input {directory}: expected a transformers CLIPModel directory with config.json "
                               f"and model.safetensors")
    cfg = json.loads(config_path.read_text())
    if cfg.get("model_type", "clip") != "clip" or "vision_config" not in cfg or "text_config" not in cfg:
        raise WeightsFileError(f"{config_path}: model_type {cfg.get('model_type')!r}, expected a CLIPModel config "
                               f"(model_type 'clip' with text_config and vision_config)")
    files = [directory / n for n in WEIGHT_FILES if (directory / n).exists()]
    if not files:
        raise WeightsFileError(f"--input {directory}: no {' or '.join(WEIGHT_FILES)} beside config.json")
    vcfg, tcfg = cfg["vision_config"], cfg["text_config"]
    eps = {vcfg.get("layer_norm_eps", 1e-5), tcfg.get("layer_norm_eps", 1e-5)}
    acts = {vcfg.get("hidden_act", "quick_gelu"), tcfg.get("hidden_act", "quick_gelu")}
    if len(eps) != 1:
        raise WeightsFileError(f"{config_path}: the towers' layer_norm_eps differ ({sorted(eps)}); this project's "
                               f"model has one LayerNorm eps")
    unknown = acts - set(ACTIVATIONS)
    if unknown:
        raise WeightsFileError(f"{config_path}: hidden_act {sorted(unknown)} is not one of {tuple(ACTIVATIONS)}")

    sd = StateDict(read_tensors(files[0]), str(files[0]))
    sd.skip("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")
    v = "vision_model."
    width, _, patch, _ = sd.shape(v + "embeddings.patch_embedding.weight")
    heads = int(vcfg.get("num_attention_heads", width // 64))
    encoder = _layers(sd, v + "encoder.layers.", width, heads)
    encoder["ln_final"] = sd.layer_norm(v + "post_layernorm", width)
    tokens = sd.shape(v + "embeddings.position_embedding.weight")[0]
    image = {"patch_embed": {"kernel": conv_kernel(sd.take(v + "embeddings.patch_embedding.weight",
                                                           (width, 3, patch, patch)))},
             "cls_token": sd.take(v + "embeddings.class_embedding", (width,)).reshape(1, 1, width),
             "pos_embed": sd.take(v + "embeddings.position_embedding.weight", (tokens, width))[None],
             "ln_pre": sd.layer_norm(v + "pre_layrnorm", width), "encoder": encoder}
    t = "text_model."
    vocab, text_width = sd.shape(t + "embeddings.token_embedding.weight")
    context = sd.shape(t + "embeddings.position_embedding.weight")[0]
    text_heads = int(tcfg.get("num_attention_heads", text_width // 64))
    text_encoder = _layers(sd, t + "encoder.layers.", text_width, text_heads)
    text_encoder["ln_final"] = sd.layer_norm(t + "final_layer_norm", text_width)
    text = {"token_embed": {"embedding": sd.take(t + "embeddings.token_embedding.weight", (vocab, text_width))},
            "pos_embed": sd.take(t + "embeddings.position_embedding.weight", (context, text_width)),
            "encoder": text_encoder}
    embed_dim = sd.shape("visual_projection.weight")[0]
    params = {"image_encoder": image, "text_encoder": text,
              "image_head": head(sd.dense("visual_projection", width, embed_dim, bias=False)["kernel"]),
              "text_head": head(sd.dense("text_projection", text_width, embed_dim, bias=False)["kernel"]),
              "logit_scale": sd.take("logit_scale", ())}
    sd.check_all_taken()
    mlp = lambda enc: enc["block_0"]["mlp"]["fc1"]["kernel"].shape[1]
    fields = {**custom_vit_fields(width, len(encoder) - 1, heads, mlp(encoder), patch,
                                  image_size(sd.source, tokens, patch)),
              "model.text.width": text_width, "model.text.depth": len(text_encoder) - 1,
              "model.text.heads": text_heads, "model.text.mlp_dim": mlp(text_encoder),
              "model.text.context_length": context, "model.text.vocab_size": vocab,
              "model.embed_dim": embed_dim, "model.similarity": "clip", "model.ln_eps": float(eps.pop()),
              "model.image.ln_pre": True, "model.image.patch_bias": False,
              "model.image.activation": ACTIVATIONS[vcfg.get("hidden_act", "quick_gelu")],
              "model.image.pixel_stats": _pixel_stats(directory),
              "model.text.activation": ACTIVATIONS[tcfg.get("hidden_act", "quick_gelu")],
              "model.text.pool": "argmax" if tcfg.get("eos_token_id", 2) == 2 else "first_eot",
              "model.text.null_rows": 0}
    return Imported(fields, params, [files[0], config_path])
