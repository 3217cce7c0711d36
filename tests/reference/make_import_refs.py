"""Writes tests/reference/imports/: tiny models built with the publishers' own code, and their outputs.

Not run by the tests or CI: it needs torch and the publishers' packages, which this project does not depend on.
Run it in a scratch virtual environment (CPU torch; timm 0.6.7 is the reference release's ViT):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 numpy
    /tmp/refvenv/bin/pip install --no-deps torchvision==0.28.0 timm==0.6.7 open_clip_torch
    /tmp/refvenv/bin/pip install transformers hydra-core omegaconf regex ftfy tqdm huggingface_hub safetensors \\
        mpmath pyyaml pillow
    git clone https://github.com/sony/wpse /tmp/wpse_release   # the reference release (read at c6a965d)
    /tmp/refvenv/bin/python tests/reference/make_import_refs.py --wpse=/tmp/wpse_release

What it writes (each model with every parameter moved away from its initialisation, so that a mis-mapped tensor
shows; all in float32; about 1.5 MB in all):
    bpe_tiny.txt.gz          CLIP's BPE file cut to its first 30 merges: a 544-id vocabulary (eot 543), so that
                             the tiny text towers stay small; the project's clip_bpe tokenizer reads it.
    inputs.npz               images [4, 32, 32, 3] (already normalised floats, NHWC), tokens [4, 16] int32 (sot,
                             random ids in [1, 542), eot, zero padding; the last row is full; row 1 holds an id 0, "!", inside its text).
    wpse_wpce/               the release's CLIP_WPSE_two_proj (timm ViT, sequel null tokens, ScaledTanh alpha 2,
                             identity logit scale, Gaussian RFF criterion) built by hydra.utils.instantiate from its
                             config.yaml, saved as the release saves it (checkpoint_best.pt with DDP's "module."
                             prefix and the OmegaConf args); outputs.npz: image/text points [B, M, d] and weights
                             [B, M], an RFF draw (rff_w [D, d], rff_b [D]) and the criterion's feature maps of both
                             sides with it (feature_oneside), the logit scale.
    wpse_clip/               the release's CLIP baseline (no null tokens, exp logit scale); outputs.npz: image/text
                             embeddings [B, d] (before normalisation) and the logit scale.
    open_clip_cfg/           open_clip's CLIP (GELU, head width 16) as open_clip_model.safetensors with its
                             open_clip_config.json; outputs.npz as wpse_clip.
    open_clip_nocfg/         an OpenAI-layout CLIP (QuickGELU, width 64 = one 64-wide head) as a bare torch.save
                             state dict, model.pt, without a config; outputs.npz as wpse_clip.
    hf_clip/                 a transformers CLIPModel (vision GELU, text QuickGELU, eos_token_id 543) as written by
                             save_pretrained; outputs.npz as wpse_clip.
    b16/                     the release's composed Hydra config for its example WPCE run (config.yaml, as main.py
                             writes it) and the names and shapes of the state dicts of its CLIP_WPSE_VITB16 and
                             CLIP_VITB16 (state_dict_shapes.json): the B/16 mapping is tested on these without
                             allocating a B/16 model.
"""
import argparse
import gzip
import json
import os
import pathlib
import sys

import types

import numpy as np
import torch

# PyPI's torchvision wheel is built for CUDA torch; against the CPU torch its C ops do not load and registering
# their meta kernels fails at import. Nothing here uses those ops (timm and open_clip import torchvision for its
# transforms), so the registrations are skipped.
sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "imports"
SIZE, PATCH, CONTEXT, MERGES, BATCH = 32, 8, 16, 30, 4
VOCAB = 512 + MERGES + 2  # bytes, bytes + "</w>", merges, sot and eot
EOT, SOT = VOCAB - 1, VOCAB - 2


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Every parameter moved by noise of its own scale (1 for constant ones: norms' ones, zero biases)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 0:
                continue
            scale = float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 1.0
            p.add_(0.3 * scale * torch.randn(p.shape, generator=gen))


def inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)
    tokens = np.zeros((BATCH, CONTEXT), np.int32)
    for row, length in enumerate([3, 7, 11, CONTEXT - 2]):
        tokens[row, 0] = SOT
        tokens[row, 1:1 + length] = rng.integers(1, SOT, size=length)
        tokens[row, 1 + length] = EOT
    tokens[1, 3] = 0  # CLIP BPE's "!" inside a text: the release embeds it as padding (its "sequel" rule)
    return images, tokens


def nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def write_bpe() -> None:
    with gzip.open(HERE / "bpe_simple_vocab_16e6.txt.gz", "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(MERGES + 1)]
    with gzip.GzipFile(OUT / "bpe_tiny.txt.gz", "wb", mtime=0) as f:
        f.write("".join(lines).encode("utf-8"))


def wpse_args(model: dict, criterion: dict):
    from omegaconf import OmegaConf
    return OmegaConf.create({"model": model, "criterion": criterion, "seed": 0, "distributed": False})


def save_wpse(directory: pathlib.Path, model, args) -> None:
    from omegaconf import OmegaConf
    directory.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(args, directory / "config.yaml")
    state = {"module." + k: v for k, v in model.state_dict().items()}  # as saved from a DDP-wrapped model
    torch.save({"epoch": 1, "state_dict": state, "optimizer": {}, "scaler": {}, "best_acc1": 0.0, "args": args},
               directory / "checkpoint_best.pt")


def tiny_vit(num_heads: int = 2) -> dict:
    return {"_target_": "timm.models.vision_transformer.VisionTransformer", "img_size": SIZE, "patch_size": PATCH,
            "embed_dim": 32, "depth": 2, "num_heads": num_heads, "mlp_ratio": 2.0, "num_classes": 0}


def make_wpse(images, tokens) -> None:
    from hydra.utils import instantiate
    common = {"embed_dim": 16, "vision_width": 32, "vision_model": tiny_vit(), "context_length": CONTEXT,
              "vocab_size": VOCAB, "transformer_width": 32, "transformer_heads": 2, "transformer_layers": 2}
    identity = {"activation": {"_target_": "models.LogitScaleIdentity"}, "init": {"type": "scale", "value": 14.285714},
                "max": {"type": "scale", "value": 100.0}, "min": {"type": "scale", "value": 1.0}}
    wpce = {"_target_": "models.CLIP_WPSE_two_proj", **common, "transformer_null_token_emb": "sequel",
            "weight_act": {"_target_": "models.ScaledTanh", "alpha": 2.0}, "config_logit_scale": identity}
    criterion = {"_target_": "losses.CLIP_WPSE_Loss", "comb_weights": [0.667, 0.333],
                 "rff_trick": {"_target_": "losses.RFFFeaturesGaussian", "embed_dim": 16, "dim_out": 64, "sigma": 0.5,
                               "first_normalize": True, "parallel": "${distributed}", "eps": 1e-6}}
    args = wpse_args(wpce, criterion)
    torch.manual_seed(1)
    model = instantiate(args.model).eval()
    perturb(model, 1)
    with torch.no_grad():
        model.logit_scale.fill_(23.0)
        img_v, img_w = model.encode_image(nchw(images))
        txt_v, txt_w = model.encode_text(torch.from_numpy(tokens).long())
        crit = instantiate(args.criterion)
        torch.manual_seed(2)
        rff_w, rff_b = crit.rff_trick.sample_fourier_weights()
        img_f = crit.feature_oneside(img_v, img_w, rff_w, rff_b)
        txt_f = crit.feature_oneside(txt_v, txt_w, rff_w, rff_b)
    save_wpse(OUT / "wpse_wpce", model, args)
    np.savez(OUT / "wpse_wpce" / "outputs.npz", image_points=img_v.numpy(), image_weights=img_w[..., 0].numpy(),
             text_points=txt_v.numpy(), text_weights=txt_w[..., 0].numpy(), rff_w=rff_w.numpy(),
             rff_b=rff_b[0].numpy(), image_features=img_f.numpy(), text_features=txt_f.numpy(),
             logit_scale=np.float32(model.get_logit_scale()))

    clip = {"_target_": "models.CLIP", **common}
    args = wpse_args(clip, {"_target_": "losses.CLIPLoss", "eps": 1e-6})
    torch.manual_seed(3)
    model = instantiate(args.model).eval()
    perturb(model, 3)
    with torch.no_grad():
        model.logit_scale.fill_(float(np.log(31.0)))
        out = model(nchw(images), torch.from_numpy(tokens).long())
    save_wpse(OUT / "wpse_clip", model, args)
    np.savez(OUT / "wpse_clip" / "outputs.npz", image_embed=out["image_embed"].numpy(),
             text_embed=out["text_embed"].numpy(), logit_scale=np.float32(out["logit_scale"]))


def clip_outputs(directory: pathlib.Path, image_embed, text_embed, logit_scale) -> None:
    np.savez(directory / "outputs.npz", image_embed=image_embed.detach().numpy(),
             text_embed=text_embed.detach().numpy(), logit_scale=np.float32(logit_scale))


def make_open_clip(images, tokens) -> None:
    import open_clip
    from safetensors.torch import save_file
    model_cfg = {"embed_dim": 16, "quick_gelu": False,
                 "vision_cfg": {"image_size": SIZE, "layers": 2, "width": 32, "head_width": 16, "mlp_ratio": 2.0,
                                "patch_size": PATCH},
                 "text_cfg": {"context_length": CONTEXT, "vocab_size": VOCAB, "width": 32, "heads": 2, "layers": 2}}
    torch.manual_seed(4)
    model = open_clip.model.CLIP(**model_cfg).eval()
    perturb(model, 4)
    with torch.no_grad():
        model.logit_scale.fill_(float(np.log(29.0)))
        image_embed, text_embed = model.encode_image(nchw(images)), model.encode_text(torch.from_numpy(tokens).long())
    d = OUT / "open_clip_cfg"
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, d / "open_clip_model.safetensors")
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {
        "mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}}, indent=1))
    clip_outputs(d, image_embed, text_embed, model.logit_scale.exp())

    # OpenAI's layout read from shapes alone: width 64 (one head of 64), QuickGELU.
    torch.manual_seed(5)
    model = open_clip.model.CLIP(embed_dim=16, quick_gelu=True,
                                 vision_cfg={"image_size": SIZE, "layers": 1, "width": 64, "patch_size": PATCH},
                                 text_cfg={"context_length": CONTEXT, "vocab_size": VOCAB, "width": 64, "heads": 1,
                                           "layers": 1}).eval()
    perturb(model, 5)
    with torch.no_grad():
        model.logit_scale.fill_(float(np.log(27.0)))
        image_embed, text_embed = model.encode_image(nchw(images)), model.encode_text(torch.from_numpy(tokens).long())
    d = OUT / "open_clip_nocfg"
    d.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), d / "model.pt")
    clip_outputs(d, image_embed, text_embed, model.logit_scale.exp())


def make_hf_clip(images, tokens) -> None:
    from transformers import CLIPConfig, CLIPModel
    config = CLIPConfig(
        text_config={"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": CONTEXT, "hidden_act": "quick_gelu",
                     "bos_token_id": SOT, "eos_token_id": EOT, "pad_token_id": 0},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": SIZE, "patch_size": PATCH, "hidden_act": "gelu"},
        projection_dim=16)
    torch.manual_seed(6)
    model = CLIPModel(config).eval()
    model.config._attn_implementation = "eager"
    perturb(model, 6)
    with torch.no_grad():
        model.logit_scale.fill_(float(np.log(25.0)))
        pooled_image = model.vision_model(pixel_values=nchw(images)).pooler_output
        pooled_text = model.text_model(input_ids=torch.from_numpy(tokens).long()).pooler_output
        image_embed, text_embed = model.visual_projection(pooled_image), model.text_projection(pooled_text)
    d = OUT / "hf_clip"
    model.save_pretrained(d, safe_serialization=True)
    clip_outputs(d, image_embed, text_embed, model.logit_scale.exp())


def make_b16(wpse: pathlib.Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    d = OUT / "b16"
    d.mkdir(parents=True, exist_ok=True)
    with initialize_config_dir(config_dir=str(wpse / "configs"), version_base=None):
        args = compose("example_cc12m_wpse")
    OmegaConf.save(args, d / "config.yaml")
    shapes = {}
    for name, section in (("CLIP_WPSE_VITB16", args.model), ("CLIP_VITB16", {"_target_": "models.CLIP_VITB16",
                                                                             "ln_eps": 1e-6})):
        model = instantiate(section)
        shapes[name] = {k: list(v.shape) for k, v in model.state_dict().items()}
        del model
    (d / "state_dict_shapes.json").write_text(json.dumps(shapes, indent=0))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wpse", required=True, help="a checkout of the reference release (sony/wpse)")
    wpse = pathlib.Path(parser.parse_args().wpse).resolve()
    sys.path.insert(0, str(wpse))
    os.chdir(wpse)  # the release's modules read files beside themselves
    torch.set_grad_enabled(False)
    OUT.mkdir(exist_ok=True)
    write_bpe()
    images, tokens = inputs()
    np.savez(OUT / "inputs.npz", images=images, tokens=tokens)
    make_wpse(images, tokens)
    make_open_clip(images, tokens)
    make_hf_clip(images, tokens)
    make_b16(wpse)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
