"""Forward + backward time of each objective in wpce_jax.losses against symmetric InfoNCE, side by side.

    python benchmarks/objectives.py [--batch 4096] [--dim 1536] [--trials 3] [--quick]

Random unit vectors x, y [B, F]; the labelled objectives (margin contrastive, triplet) take x with ~B/4 classes.
Each objective is jitted as value_and_grad with respect to its embeddings, compiled once, then timed: the best of
`--trials` runs, in ms, and its ratio to InfoNCE. All are O(B^2 F) for the scores plus O(B^2) pair terms; triplet
"semihard" and "all" add a per-anchor sort of the negatives, O(B^2 log B), never a [B, B, B] tensor. `--quick` uses
B = 1024 (unless --batch is given) for a fast check.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from wpce_jax.losses import (MININGS, margin_contrastive_loss, nce_loss, nt_xent, sigmoid_loss, symmetric_infonce,
                             triplet_loss)


def objectives():
    """name -> (loss of (x, y, labels), how many leading arguments are differentiated); InfoNCE first."""
    table = {
        "symmetric_infonce": (lambda x, y, labels: symmetric_infonce(x, y, 10.0), (0, 1)),
        "nt_xent": (lambda x, y, labels: nt_xent(x, y, 0.1), (0, 1)),
        "sigmoid_loss": (lambda x, y, labels: sigmoid_loss(x, y, 10.0, -10.0), (0, 1)),
        "nce_loss": (lambda x, y, labels: nce_loss(x, y, 10.0), (0, 1)),
        "margin_contrastive": (lambda x, y, labels: margin_contrastive_loss(x, labels, 1.0), (0,)),
    }
    for mining in MININGS:
        table[f"triplet_{mining}"] = (lambda x, y, labels, m=mining: triplet_loss(x, labels, 0.2, m), (0,))
    return table


def best_of(fn, args, trials):
    jax.block_until_ready(fn(*args))  # compile
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def unit(rng, b, f):
    v = rng.normal(size=(b, f)).astype(np.float32)
    return jnp.asarray(v / np.linalg.norm(v, axis=1, keepdims=True))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=None, help="global batch B (default 4096, 1024 with --quick)")
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="B = 1024 unless --batch is given")
    args = parser.parse_args()
    b = args.batch or (1024 if args.quick else 4096)
    rng = np.random.default_rng(0)
    x, y = unit(rng, b, args.dim), unit(rng, b, args.dim)
    labels = jnp.asarray(rng.integers(0, max(b // 4, 1), b), jnp.int32)
    print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()}, B={b}, F={args.dim}, "
          f"forward + backward, best of {args.trials}")
    print(f"{'objective':>20} {'ms':>10} {'/ InfoNCE':>10}")
    baseline = None
    for name, (loss, argnums) in objectives().items():
        step = jax.jit(jax.value_and_grad(loss, argnums=argnums))
        ms = 1e3 * best_of(step, (x, y, labels), args.trials)
        baseline = baseline or ms
        print(f"{name:>20} {ms:>10.1f} {ms / baseline:>9.2f}x", flush=True)


if __name__ == "__main__":
    main()
