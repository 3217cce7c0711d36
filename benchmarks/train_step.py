"""Time of one training step, WPCE against the CLIP baseline, side by side in one run.

    python benchmarks/train_step.py [--config=configs/digits.py] [--steps 50]

Both use the config's towers and batch; they differ only in the similarity (point clouds + RFF feature maps vs one
point per input). Prints seconds per step and the WPCE / CLIP ratio.
"""
import argparse
import runpy
import time

import jax
import numpy as np

from wpce_jax.models.towers import make_model
from wpce_jax.optimizer import make_optimizer
from wpce_jax.parallel import global_batch, make_mesh, replicated
from wpce_jax.train_step import initial_state, make_train_step


def seconds_per_step(config, steps: int) -> float:
    mesh = make_mesh()
    model, tx = make_model(config), make_optimizer(config)
    state = jax.device_put(initial_state(model, tx, config, jax.random.key(0)), replicated(mesh))
    rng = np.random.default_rng(0)
    size, length = config.data.image_size, config.model.text.context_length
    batch = global_batch({"image": rng.normal(size=(config.batch_size, size, size, 3)).astype(np.float32),
                          "tokens": rng.integers(0, config.model.text.vocab_size - 1,
                                                 (config.batch_size, length)).astype(np.int32)}, mesh)
    step = jax.jit(make_train_step(model, config, mesh, tx), donate_argnums=0, out_shardings=replicated(mesh))
    for _ in range(3):  # compile and warm up
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits.py")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--vocab_size", type=int, default=128, help="stands in for the tokenizer's vocabulary")
    args = parser.parse_args()
    times = {}
    for mode in ("wpce", "clip"):
        config = runpy.run_path(args.config)["get_config"](mode)
        config.model.text.vocab_size, config.model.text.eot_id = args.vocab_size, args.vocab_size - 1
        times[mode] = seconds_per_step(config, args.steps)
    print(f"{args.config}, batch {config.batch_size}, {jax.device_count()} x {jax.devices()[0].device_kind}")
    print(f"{'WPCE s/step':>12} {'CLIP s/step':>12} {'WPCE / CLIP':>12}")
    print(f"{times['wpce']:>12.4f} {times['clip']:>12.4f} {times['wpce'] / times['clip']:>12.2f}")


if __name__ == "__main__":
    main()
