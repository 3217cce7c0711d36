"""Time of one training step, WPCE against the CLIP baseline, and accumulation 4 against 1, side by side in one run.

    python benchmarks/train_step.py [--preset=digits|small|ti16|b16] [--steps 20]
    python benchmarks/train_step.py --config=configs/digits.py          # any config's own towers and batch

Presets (random inputs of the right shapes; the vocabulary is CLIP's 49,408 ids except for digits):
    digits  configs/digits.py as it is
    small   ViT width 192, depth 4, patch 8 on 64 px, batch 64, the digits text tower (a CPU-sized step)
    ti16    ViT-Ti/16 on 224 px, text tower width 256, depth 4, batch 32
    b16     configs/vitb16_cc12m.py (ViT-B/16, 12-block text, bfloat16): batch 512 per device on accelerators,
            8 per device on CPU
Prints, per setting, the compile time, seconds per step and, on TPUs and NVIDIA GPUs, the MFU (wpce_jax/mfu.py).
The small and ti16 presets take the reference release's text activation (QuickGELU) and weight projection (no bias),
so that benchmarks/torch_reference_step.py times the same step in PyTorch.
"""
if __name__ == "__main__":  # as the training command does (wpce_jax/huge_pages.py); WPCE_HUGE_PAGES=0 to compare
    from wpce_jax.huge_pages import reexec_with_huge_pages
    reexec_with_huge_pages()

import argparse
import os
import time

import jax
import numpy as np

from wpce_jax import mfu
from wpce_jax.cli import load_config_file
from wpce_jax.config_validation import mode_settings
from wpce_jax.models.model_config import make_model
from wpce_jax.optimizer import make_optimizer
from wpce_jax.parallel import global_batch, make_mesh, replicated, state_shardings
from wpce_jax.train_step import initial_state, make_train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def preset_config(name: str, similarity: str):
    """The preset's config for "wpce" or "clip"."""
    path = "vitb16_cc12m.py" if name == "b16" else "digits.py"
    c = load_config_file(os.path.join(ROOT, "configs", path), similarity)
    vocab = 128 if name == "digits" else 49408
    c.model.text.vocab_size, c.model.text.eot_id = vocab, vocab - 1
    c.total_steps = 1000
    if name in ("small", "ti16"):  # the reference release's choices (benchmarks/torch_reference_step.py runs it)
        c.model.text.activation, c.model.weight_bias = "quick_gelu", False
    if name == "small":
        c.data.image_size, c.batch_size = 64, 64
        c.model.image.update(dict(patch_size=8, width=192, depth=4, heads=3, mlp_dim=768))
    elif name == "ti16":
        c.data.image_size, c.batch_size = 224, 32
        c.model.image.update(dict(variant="Ti/16", patch_size=None, width=None, depth=None, heads=None,
                                  mlp_dim=None))
        c.model.text.update(dict(width=256, depth=4, heads=4, mlp_dim=1024))
    elif name == "b16":
        per_device = 8 if jax.devices()[0].platform == "cpu" else 512
        c.batch_size = per_device * jax.device_count()
    return c


def measure(config, steps: int) -> dict:
    """The config's train step on random inputs: compile seconds, seconds per step (the median of `steps` steps,
    each timed to its end), MFU (None off accelerators), the compiled step's FLOPs per device (XLA's cost
    analysis), its temporary bytes and its whole footprint per device (arguments, outputs and temporaries, less
    the donated state; None when XLA reports none), and the first step's loss."""
    mesh = make_mesh(fsdp=config.mesh.fsdp)
    model, tx = make_model(config), make_optimizer(config)
    init = lambda: initial_state(model, tx, config, jax.random.key(0))  # noqa: E731
    shardings = state_shardings(jax.eval_shape(init), mesh)
    state = jax.jit(init, out_shardings=shardings)()  # one program, made in place (eager: an op at a time)
    rng = np.random.default_rng(0)
    size, length = config.data.image_size, config.model.text.context_length
    batch = global_batch({"image": rng.integers(0, 256, (config.batch_size, size, size, 3), dtype=np.uint8),
                          "tokens": rng.integers(0, config.model.text.vocab_size - 1,
                                                 (config.batch_size, length)).astype(np.int32)}, mesh)
    step = jax.jit(make_train_step(model, config, mesh, tx, mode_settings(config)), donate_argnums=0,
                   out_shardings=(shardings, replicated(mesh)))
    started = time.perf_counter()
    lowered = step.lower(state, batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - started
    analysis = compiled.memory_analysis()
    state, metrics = compiled(state, batch)
    loss = float(metrics["train/loss"])
    for _ in range(2):  # warm up
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):  # the median: one slow step (a host hiccup on a shared machine) does not move it
        started = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - started)
    seconds = float(np.median(times))
    flops = mfu.step_flops(lowered)
    flops = flops / jax.device_count() if flops else None
    utilisation = mfu.mfu(flops, seconds, jax.devices()[0].device_kind)
    footprint = None if analysis is None else (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                                               + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
    return {"compile_s": compile_s, "step_s": seconds, "mfu": utilisation, "loss": loss, "flops": flops,
            "temp_bytes": None if analysis is None else analysis.temp_size_in_bytes, "step_bytes": footprint}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("digits", "small", "ti16", "b16"), default="digits")
    parser.add_argument("--config", help="a config file instead of a preset (its own towers and batch)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    def config_for(similarity, accum=1):
        if args.config:
            c = load_config_file(args.config, similarity)
            c.model.text.vocab_size, c.model.text.eot_id = 128, 127
        else:
            c = preset_config(args.preset, similarity)
        c.optim.accum_steps = accum
        return c

    rows = [("WPCE", config_for("wpce")), ("CLIP", config_for("clip")), ("WPCE, accum 4", config_for("wpce", 4))]
    first = rows[0][1]
    print(f"{args.config or args.preset}: batch {first.batch_size}, image {first.data.image_size} px, "
          f"{jax.device_count()} x {jax.devices()[0].device_kind}, GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES')}")
    print(f"{'':>14} {'compile s':>10} {'s/step':>10} {'vs WPCE':>8} {'MFU':>6}")
    base = None
    for name, config in rows:
        r = measure(config, args.steps)
        base = base or r["step_s"]
        mfu_text = f"{100 * r['mfu']:5.1f}%" if r["mfu"] is not None else "   n/a"
        print(f"{name:>14} {r['compile_s']:>10.1f} {r['step_s']:>10.4f} {r['step_s'] / base:>8.2f} {mfu_text:>6}")


if __name__ == "__main__":
    main()
