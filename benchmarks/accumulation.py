"""Accumulation (optim.accum_steps, GradCache) side by side at one global batch: step time and compiled memory.

    python benchmarks/accumulation.py [--config=configs/digits.py] [--batch_size 512] [--accum 1,2,4] [--steps 10]

Every row trains the same contrastive batch (its loss is over all of batch_size); accum k runs the towers on
batch_size / k examples at a time, so it keeps about 1/k of the activations and pays one more forward pass of the
towers. Prints, per k: seconds per step, the compiled step's temporary memory per device (XLA's memory analysis,
activations included; parameters, optimiser state and the batch are arguments, not temporaries), and the first
step's loss (the same for every k: one RFF draw per step, the whole batch's negatives). Set
XLA_FLAGS=--xla_force_host_platform_device_count=N to split a CPU into N devices.
"""
import argparse
import os
import sys

import jax

from wpce_jax.cli import load_config_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import measure  # noqa: E402  (benchmarks/train_step.py)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits.py")
    parser.add_argument("--arg", default="wpce", help="the config's argument (wpce or clip)")
    parser.add_argument("--batch_size", type=int, default=512, help="the global (contrastive) batch")
    parser.add_argument("--accum", default="1,2,4", help="comma-separated optim.accum_steps to compare")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--vocab_size", type=int, default=128, help="stands in for the tokenizer's vocabulary")
    args = parser.parse_args()
    rows = []
    for k in (int(a) for a in args.accum.split(",")):
        config = load_config_file(args.config, args.arg)
        config.batch_size = args.batch_size
        config.optim.accum_steps = k
        config.model.text.vocab_size, config.model.text.eot_id = args.vocab_size, args.vocab_size - 1
        r = measure(config, args.steps)
        rows.append((k, r["step_s"], r["temp_bytes"], r["loss"]))
    devices = jax.device_count()
    print(f"{args.config}:{args.arg}, global batch {args.batch_size}, {devices} x {jax.devices()[0].device_kind}")
    print(f"{'accum':>6} {'rows/device':>12} {'s/step':>9} {'vs 1':>6} {'temp MiB':>9} {'vs 1':>6} {'loss':>10}")
    base_time, base_temp = rows[0][1], rows[0][2]
    for k, seconds, temp, loss in rows:
        mib = "n/a" if temp is None else f"{temp / 2**20:.1f}"
        ratio = "n/a" if temp is None or not base_temp else f"{temp / base_temp:.2f}"
        print(f"{k:>6} {args.batch_size // devices // k:>12} {seconds:>9.4f} {seconds / base_time:>6.2f} {mib:>9} "
              f"{ratio:>6} {loss:>10.6f}")


if __name__ == "__main__":
    main()
