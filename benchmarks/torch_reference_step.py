"""Seconds per training step of the official PyTorch release (github.com/sony/wpse), float32 on CPU, 2 threads.

    git clone https://github.com/sony/wpse /tmp/wpse
    pip install torch timm==0.6.7 pillow mpmath     # no torchvision needed (see below)
    python benchmarks/torch_reference_step.py --preset=ti16 [--reference_dir DIR] [--steps 10]
    python benchmarks/torch_reference_step.py --preset=all     # each preset in its own process (own peak RSS)

Runs the reference's own modules, imported from DIR (default /tmp/wpse), at this repo's benchmark shapes:
    models.CLIP_WPSE_two_proj   the model, built as models.CLIP_WPSE_VITB16 and configs/model/wpse_vit_b16.yaml
                                build it (timm VisionTransformer image tower, the repo's own causal text
                                Transformer with QuickGELU, "sequel" null-token embeddings, LayerNorm eps 1e-6,
                                ScaledTanh(100) point weights, identity logit scale from 1/0.07 clamped to [1, 100])
                                with the preset's tower sizes in place of ViT-B/16 and the 512-wide text tower
    losses.CLIP_WPSE_Loss       the loss of configs/criterion/wpse_gauss0.5_comb2-1.yaml: RFFFeaturesGaussian
                                (sigma 0.5, points L2-normalised first, frequencies redrawn every step),
                                0.667 linear + 0.333 Gaussian features, symmetric InfoNCE
and main.train's step body (main.py needs hydra and mlflow, so the loop is copied here): forward, loss.item()
finiteness check, backward, cosine-schedule lr (utils.cosine_scheduler), AdamW (betas 0.9/0.98, eps 1e-8, weight
decay 0.5 on matrices, 0 on biases/LayerNorms/1-d parameters), zero_grad(set_to_none), clamp_logit_scale.
Differences from the release's GPU run: float32 without autocast/GradScaler (it trains in float16 autocast), CPU.
Only one change to its modules: the text MLP is fixed at 4x width there, so the small preset's 256-wide MLP
replaces c_fc/c_proj (initialised as the release does). timm 0.6.7 imports torchvision for its data pipeline only;
PyPI's torchvision wheels do not load against a CPU-only torch, so import-time placeholders stand in when it fails.
"""
import argparse
import math
import os
import resource
import subprocess
import sys
import time
import types

import torch
from torch import nn

# The shapes of benchmarks/train_step.py's presets (the digits config's point dimension, RFF features and context).
PRESETS = {  # image size, patch, ViT width/depth/heads (mlp 4x), batch, text width/depth/heads/mlp, context, vocab
    "small": dict(image=64, patch=8, vit=(192, 4, 3), batch=64, text=(128, 2, 4, 256), context=24, vocab=49408,
                  embed_dim=64, features=256),
    "ti16": dict(image=224, patch=16, vit=(192, 12, 3), batch=32, text=(256, 4, 4, 1024), context=24, vocab=49408,
                 embed_dim=64, features=256),
}


def import_reference(reference_dir):
    try:
        import torchvision  # noqa: F401
    except Exception:  # placeholders for the names timm 0.6.7 imports (never called)
        class Placeholders(types.ModuleType):
            def __getattr__(self, name):
                if name.startswith("__") or name == "InterpolationMode":
                    raise AttributeError(name)
                return type(name, (), {})
        for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                     "torchvision.datasets", "torchvision.ops", "torchvision.ops.misc", "torchvision.models",
                     "torchvision.models.feature_extraction"):
            sys.modules[name] = Placeholders(name)
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, sys.modules[name])
    sys.path.insert(0, os.path.abspath(reference_dir))
    import losses, models, utils  # noqa: E401
    from timm.models.vision_transformer import VisionTransformer
    return losses, models, utils, VisionTransformer


def build(p, reference_dir):
    losses, models, utils, VisionTransformer = import_reference(reference_dir)
    width, depth, heads = p["vit"]
    vision = VisionTransformer(img_size=p["image"], patch_size=p["patch"], embed_dim=width, depth=depth,
                               num_heads=heads, mlp_ratio=4, num_classes=0)  # as vit_base_patch16_224's kwargs
    t_width, t_depth, t_heads, t_mlp = p["text"]
    model = models.CLIP_WPSE_two_proj(
        embed_dim=p["embed_dim"], vision_width=width, vision_model=vision, context_length=p["context"],
        vocab_size=p["vocab"], transformer_width=t_width, transformer_heads=t_heads, transformer_layers=t_depth,
        transformer_null_token_emb="sequel", weight_act=models.ScaledTanh(100.0),
        config_logit_scale={"activation": models.LogitScaleIdentity(), "init": {"type": "scale", "value": 14.285714},
                            "max": {"type": "scale", "value": 100.0}, "min": {"type": "scale", "value": 1.0}})
    if t_mlp != 4 * t_width:
        for block in model.transformer.resblocks:
            block.mlp.c_fc, block.mlp.c_proj = nn.Linear(t_width, t_mlp), nn.Linear(t_mlp, t_width)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * t_width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=t_width ** -0.5 * (2 * t_depth) ** -0.5)
    model.apply(lambda m: models.modify_layernorm_eps(m, eps=1e-6))
    rff = losses.RFFFeaturesGaussian(embed_dim=p["embed_dim"], dim_out=p["features"], sigma=0.5,
                                     first_normalize=True, parallel=False, eps=1e-6)
    criterion = losses.CLIP_WPSE_Loss(rff_trick=rff, comb_weights=[0.667, 0.333])
    decay, no_decay = [], []
    for n, q in model.named_parameters():  # main.main's split
        (no_decay if q.ndim < 2 or "bias" in n or "ln" in n or "bn" in n else decay).append(q)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.5}, {"params": no_decay, "weight_decay": 0}],
                                  lr=5e-4, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.5)
    return model, criterion, optimizer, utils


def measure(p, steps, reference_dir):
    torch.manual_seed(0)
    model, criterion, optimizer, utils = build(p, reference_dir)
    model.train()
    image = torch.randn(p["batch"], 3, p["image"], p["image"])
    text = torch.randint(0, p["vocab"] - 1, (p["batch"], p["context"]))
    lr_schedule = utils.cosine_scheduler(5e-4, 1e-5, 1, steps + 2, warmup_epochs=0)

    def step(it):  # main.train's body, update_freq 1, no AMP, no gradient clipping
        loss_dict = criterion(model(image, text))
        loss = loss_dict["loss"]
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss {loss.item()}")
        loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = lr_schedule[it]
        optimizer.step()
        model.zero_grad(set_to_none=True)
        model.clamp_logit_scale()
        model.get_logit_scale().item()
        return {k: v.item() for k, v in loss_dict.items()}

    for it in range(2):  # warm up
        first = step(it)
    started = time.perf_counter()
    for it in range(2, steps + 2):
        step(it)
    seconds = (time.perf_counter() - started) / steps
    params = sum(q.numel() for q in model.parameters())
    return seconds, first["loss"], params


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=(*PRESETS, "all"), default="all")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--reference_dir", default="/tmp/wpse", help="a checkout of github.com/sony/wpse")
    for key in ("vocab", "context", "embed_dim", "features"):
        parser.add_argument(f"--{key}", type=int, help="override the preset's value")
    args = parser.parse_args()
    if args.preset == "all":  # one process per preset, so each peak RSS is its own
        for name in PRESETS:
            subprocess.run([sys.executable, *sys.argv, f"--preset={name}"], check=True)
        return
    torch.set_num_threads(2)
    p = dict(PRESETS[args.preset], **{k: getattr(args, k) for k in ("vocab", "context", "embed_dim", "features")
                                       if getattr(args, k) is not None})
    seconds, loss, params = measure(p, args.steps, args.reference_dir)
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(f"torch {torch.__version__} reference step, {args.preset}: batch {p['batch']}, image {p['image']} px, "
          f"context {p['context']}, vocab {p['vocab']}, embed {p['embed_dim']}, RFF {p['features']}, "
          f"{params / 1e6:.1f}M params, {torch.get_num_threads()} threads")
    print(f"  {seconds:.4f} s/step (mean of {args.steps} after 2 warm-up), peak RSS {rss_gib:.2f} GiB, "
          f"first loss {loss:.4f}")


if __name__ == "__main__":
    main()
