"""What every weight mapping returns, and the pieces the OpenAI-lineage state dicts share.

An `Imported` is a model the project can run: its parameter tree (the inner "params" dict of
`models.towers.DualEncoder`, NumPy float32) and the config fields that make `make_model` build the architecture
those parameters belong to (dotted paths into configs/common.py's config). OpenAI CLIP's text tower (token and
position embeddings, `transformer.resblocks.N.*` with packed in_proj attention, `ln_final`) is also the reference
release's and open_clip's, so it is read here once.
"""
import dataclasses
from typing import Any

import numpy as np
from etils import epath

from wpce_jax import logit_scale
from wpce_jax.weights.state_dict import StateDict, check_heads, count_blocks
from wpce_jax.weights.torch_file import WeightsFileError

# Every transformer-based CLIP of OpenAI's lineage uses 64-dimensional heads (OpenAI's build_model derives the head
# count from the width this way, and timm's named ViTs follow the same rule).
HEAD_DIM = 64


@dataclasses.dataclass
class Imported:
    fields: dict[str, Any]     # dotted config path -> value (model.*, data.image_size, wpce.*)
    params: dict               # the DualEncoder's parameter tree, NumPy float32
    sources: list[epath.Path]  # the files read, for the run record


def openai_blocks(sd: StateDict, prefix: str, width: int, heads: int) -> dict:
    """`prefix`N.{ln_1, attn.in_proj_*, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj} -> {"block_N": ...};
    the MLP hidden size is read from c_fc."""
    check_heads(sd.source, prefix.rstrip("."), width, heads)
    depth = count_blocks(sd, prefix, "ln_1.weight")
    mlp_dim = sd.shape(f"{prefix}0.mlp.c_fc.weight")[0]
    blocks = {}
    for i in range(depth):
        p = f"{prefix}{i}."
        blocks[f"block_{i}"] = {
            "ln_attn": sd.layer_norm(p + "ln_1", width),
            "attn": sd.fused_attention(p + "attn.in_proj_weight", p + "attn.in_proj_bias", p + "attn.out_proj",
                                       width, heads),
            "ln_mlp": sd.layer_norm(p + "ln_2", width),
            "mlp": {"fc1": sd.dense(p + "mlp.c_fc", width, mlp_dim), "fc2": sd.dense(p + "mlp.c_proj", mlp_dim, width)},
        }
    return blocks


def openai_text_tower(sd: StateDict, heads: int | None, prefix: str = "") -> tuple[dict, dict]:
    """OpenAI CLIP's text tower -> (text_encoder params, its config fields under model.text, vocab_size left as
    the embedding's row count: the caller knows how many rows are sequel tokens). heads None: width / 64."""
    rows, width = sd.shape(prefix + "token_embedding.weight")
    context = sd.shape(prefix + "positional_embedding")[0]
    heads = heads or width // HEAD_DIM
    encoder = openai_blocks(sd, prefix + "transformer.resblocks.", width, heads)
    encoder["ln_final"] = sd.layer_norm(prefix + "ln_final", width)
    params = {"token_embed": {"embedding": sd.take(prefix + "token_embedding.weight", (rows, width))},
              "pos_embed": sd.take(prefix + "positional_embedding", (context, width)), "encoder": encoder}
    fields = {"model.text.width": width, "model.text.depth": len(encoder) - 1, "model.text.heads": heads,
              "model.text.mlp_dim": encoder["block_0"]["mlp"]["fc1"]["kernel"].shape[1],
              "model.text.context_length": context, "model.text.vocab_size": rows}
    return params, fields


def image_size(source: str, tokens: int, patch: int) -> int:
    """The square input side from a position table of 1 + (S/p)^2 rows."""
    side = int(round(np.sqrt(tokens - 1)))
    if side * side != tokens - 1:
        raise WeightsFileError(f"{source}: the image position embedding has {tokens} rows, not 1 + a square number "
                               f"of patches")
    return side * patch


def head(points: np.ndarray, weights: np.ndarray | None = None) -> dict:
    """A PointCloudHead's parameters: point kernel [width, d], weight kernel [width, 1] (no bias)."""
    out = {"points": {"kernel": points}}
    if weights is not None:
        out["weights"] = {"kernel": weights}
    return out


def custom_vit_fields(width: int, depth: int, heads: int, mlp_dim: int, patch: int, size: int) -> dict:
    return {"model.image.variant": "custom", "model.image.width": width, "model.image.depth": depth,
            "model.image.heads": heads, "model.image.mlp_dim": mlp_dim, "model.image.patch_size": patch,
            "data.image_size": size}


def as_wpce(imported: Imported, seed: int = 0) -> Imported:
    """A CLIP import turned into a WPCE model that starts from CLIP's towers.

    CLIP's projections become the point projections, applied to every token; the point-weight projections are
    new, bias-free and drawn as the reference release draws them (normal, std width^-1/2), with alpha tanh(x /
    alpha) weights; the logit scale starts at the release's 1/0.07. The sequel padding rows start as copies of
    the padding token's row (id 0), so that the text tower first computes exactly CLIP's hidden states: the point
    of the end-of-text token is then CLIP's text embedding, and that of the class token CLIP's image embedding.
    """
    fields, params = dict(imported.fields), dict(imported.params)
    if fields.get("model.similarity") != "clip":
        raise ValueError("--as_wpce applies to CLIP sources (open_clip, hf_clip, or the release's CLIP baseline)")
    rng = np.random.default_rng(seed)
    for tower in ("image", "text"):
        kernel = params[f"{tower}_head"]["points"]["kernel"]
        width = kernel.shape[0]
        weights = rng.normal(0.0, width ** -0.5, size=(width, 1)).astype(np.float32)
        params[f"{tower}_head"] = head(kernel, weights)
    text = dict(params["text_encoder"])
    table = text["token_embed"]["embedding"]
    context = fields["model.text.context_length"]
    if fields.get("model.text.null_rows") == 0:
        text["token_embed"] = {"embedding": np.concatenate([table, np.repeat(table[:1], context, axis=0)])}
    params["text_encoder"] = text
    params["logit_scale"] = np.float32(logit_scale.to_parameter(1 / logit_scale.INIT_TEMPERATURE, "wpce"))
    fields.update({"model.similarity": "wpce", "model.weight_bias": False, "model.weight_activation": "tanh",
                   "model.weight_alpha": 100.0, "model.text.null_rows": None, "model.text.sequel_rule": "after_end"})
    return Imported(fields, params, imported.sources)
