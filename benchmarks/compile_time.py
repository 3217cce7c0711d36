"""Compile time of the training step with the transformer blocks in a Python loop against nn.scan, side by side.

    python benchmarks/compile_time.py [--variant B/16] [--text_depth 12] [--batch 8]

The towers of configs/vitb16_cc12m.py (ViT-B/16 at 224 px, a 12-block text tower) and a small batch: compile time
depends on the program, not on the batch. Prints seconds to lower and compile, and the size of the program.
"""
import argparse
import os
import time

import jax

from wpce_jax.cli import load_config_file
from wpce_jax.config_validation import mode_settings
from wpce_jax.models.model_config import make_model
from wpce_jax.optimizer import make_optimizer
from wpce_jax.parallel import make_mesh, replicated
from wpce_jax.train_step import initial_state, make_train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def compile_seconds(config) -> tuple[float, int]:
    mesh = make_mesh()
    model, tx = make_model(config), make_optimizer(config)
    state = jax.eval_shape(lambda: initial_state(model, tx, config, jax.random.key(0)))
    size, length = config.data.image_size, config.model.text.context_length
    batch = {"image": jax.ShapeDtypeStruct((config.batch_size, size, size, 3), jax.numpy.float32),
             "tokens": jax.ShapeDtypeStruct((config.batch_size, length), jax.numpy.int32)}
    step = jax.jit(make_train_step(model, config, mesh, tx, mode_settings(config)), out_shardings=replicated(mesh))
    start = time.perf_counter()
    lowered = step.lower(state, batch)
    lowered.compile()
    return time.perf_counter() - start, len(lowered.as_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="B/16")
    parser.add_argument("--text_depth", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    config = load_config_file(os.path.join(ROOT, "configs", "vitb16_cc12m.py"))
    config.model.image.variant, config.model.text.depth = args.variant, args.text_depth
    config.batch_size, config.total_steps = args.batch * jax.device_count(), 1000
    config.model.text.vocab_size, config.model.text.eot_id = 49408, 49407
    print(f"{args.variant} image tower, {args.text_depth}-block text tower, batch {config.batch_size}, "
          f"{jax.devices()[0].platform}")
    results = {}
    for scan in (False, True):
        config.model.scan_blocks = scan
        results[scan] = compile_seconds(config)
        print(f"  {'nn.scan' if scan else 'loop   '}: compile {results[scan][0]:6.1f} s, "
              f"program {results[scan][1] / 1e6:5.2f} MB of StableHLO text")
    print(f"  loop / scan compile time: {results[False][0] / results[True][0]:.2f}x")


if __name__ == "__main__":
    main()
