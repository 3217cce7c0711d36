"""Evaluation speed, measured side by side in one run.

    python benchmarks/evaluate.py [--images 5000] [--captions_per_image 5] [--dim 1536] [--block_size 1024]
                                  [--trials 3] [--quick]

Zero-shot: images/s of the input pipeline alone, of encoding (pipeline + towers + feature maps) and of scoring
against 1000 classes, for the built-in digits model on synthetic JPEGs.

Retrieval (COCO-size by default: 5k images, 25k captions, 5 per image): `retrieval_metrics` in both directions
(image->text and text->image) on the default JAX device, blocks of queries scored and ranked in one jitted call each,
against plain NumPy on the full score matrix (np.argsort per direction). The first device call, compile included, is
reported on its own; the steady times are the best of `--trials` interleaved trials. The features are random unit
vectors, each caption its image's vector plus noise, so the metrics are neither 0 nor 1. The two sides are checked
to agree: per metric, the max abs difference of the per-query values and of the means. The scores come from two
different matmuls, so a near-tie may rank differently, and NumPy's AP here ignores exact float32 ties (which do occur
among 25k scores); either moves a query's value a little, while the means stay within 1e-4.
"""
import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402

from wpce_jax.evaluate.metrics import retrieval_metrics  # noqa: E402

KS = (1, 5, 10)
NDCG_K = 10


# --------------------------------------------------------------------------------------------- inputs


def retrieval_features(images: int, per_image: int, dim: int, seed: int = 0):
    """(image features [I, F], caption features [I * per_image, F], image groups [I], caption groups), float32."""
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((images, dim), dtype=np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    # Per-coordinate noise 0.35: a caption's cosine to its image, ~1 / (0.35 sqrt(F)), stands a few standard
    # deviations (1 / sqrt(F)) above the others, so recall@1 lands mid-range at F = 256 to 1536.
    cap = np.repeat(img, per_image, 0) + 0.35 * rng.standard_normal((images * per_image, dim), dtype=np.float32)
    cap /= np.linalg.norm(cap, axis=1, keepdims=True)
    img_groups = np.arange(images)
    return img, cap, img_groups, np.repeat(img_groups, per_image)


def directions(img, cap, img_groups, cap_groups):
    return {"i2t": (img, cap, img_groups, cap_groups), "t2i": (cap, img, cap_groups, img_groups)}


# --------------------------------------------------------------------------------------------- retrieval


def numpy_retrieval(queries, candidates, query_groups, candidate_groups):
    """The metrics of `retrieval_metrics` from the full score matrix on the host (ties ranked by index; AP and NDCG
    without tie handling, which continuous random scores do not need)."""
    scores = queries @ candidates.T
    order = np.argsort(-scores, axis=1, kind="stable")
    del scores
    rel = query_groups[:, None] == candidate_groups[order]
    del order
    n = rel.shape[1]
    r = rel.sum(1)
    hits = np.cumsum(rel, axis=1, dtype=np.int32)
    ranks = np.arange(1, n + 1)
    out = {f"recall@{k}": rel[:, :k].any(1).astype(np.float64) for k in KS}
    disc = 1 / np.log2(np.arange(NDCG_K) + 2)
    ideal = np.cumsum(disc)[np.minimum(r, NDCG_K) - 1]
    out[f"ndcg@{NDCG_K}"] = np.where(r > 0, (rel[:, :NDCG_K] * disc).sum(1) / ideal, 0)
    precision = np.where(rel, hits / ranks, 0)
    out["map"] = np.where(r > 0, precision.sum(1) / np.maximum(r, 1), 0)
    within_r = ranks[None, :] <= r[:, None]
    out["map@r"] = np.where(r > 0, (precision * within_r).sum(1) / np.maximum(r, 1), 0)
    out["r_precision"] = np.where(r > 0, hits[np.arange(len(r)), np.maximum(r, 1) - 1] / np.maximum(r, 1), 0)
    out["precision@1"] = rel[:, 0].astype(np.float64)
    return out


def device_retrieval(data, block_size):
    return {name: retrieval_metrics(*args, ks=KS, ndcg_k=NDCG_K, block_size=block_size)
            for name, args in data.items()}


def host_retrieval(data):
    return {name: numpy_retrieval(*args) for name, args in data.items()}


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def bench_retrieval(args) -> None:
    img, cap, img_groups, cap_groups = retrieval_features(args.images, args.captions_per_image, args.dim)
    print(f"retrieval: {len(img)} images x {len(cap)} captions, F={args.dim}, block_size={args.block_size}, "
          f"device: {jax.devices()[0].device_kind} x{jax.device_count()}")
    # Device side: features move to the device once; both sides start from host NumPy arrays of the same data.
    data = directions(jax.device_put(img), jax.device_put(cap), img_groups, cap_groups)
    host_data = directions(img, cap, img_groups, cap_groups)
    first, device_out = timed(device_retrieval, data, args.block_size)
    device_times, host_times = [], []
    for _ in range(args.trials):  # interleaved, so a slow spell of a shared machine hits both sides
        t, device_out = timed(device_retrieval, data, args.block_size)
        device_times.append(t)
        t, host_out = timed(host_retrieval, host_data)
        host_times.append(t)
    t_device, t_host = min(device_times), min(host_times)
    print(f"  device retrieval_metrics, i2t + t2i: first call {first:.2f} s (compile ~{first - t_device:.2f} s), "
          f"best {t_device:.2f} s")
    print(f"  numpy full matrix + argsort, i2t + t2i: best {t_host:.2f} s")
    print(f"  numpy / device: {t_host / t_device:.2f}x   (trials: device {_fmt(device_times)}, numpy "
          f"{_fmt(host_times)})")
    worst = 0.0
    print(f"  {'direction':<9} {'metric':<12} {'device mean':>11} {'numpy mean':>11} {'max |diff|':>10} "
          f"{'mean diff':>10}")
    for direction in device_out:
        for name, want in host_out[direction].items():
            got = device_out[direction][name].astype(np.float64)
            diff = np.abs(got - want).max()
            mean_diff = abs(got.mean() - want.mean())
            worst = max(worst, mean_diff)
            print(f"  {direction:<9} {name:<12} {got.mean():>11.5f} {want.mean():>11.5f} {diff:>10.2e} "
                  f"{mean_diff:>10.2e}")
    print(f"  agree: {'yes' if worst < 1e-4 else 'NO'} (largest difference of means {worst:.1e})")


def bench_zeroshot(args) -> None:
    """Zero-shot images/s of the built-in digits model (fresh weights) on synthetic JPEGs: the input pipeline
    alone, encoding (pipeline + towers + feature maps), and scoring against 1000 classes, side by side."""
    from wpce_jax.cli import load_config_file

    from wpce_jax.data import testing
    from wpce_jax.data.pipeline import EvalDataOptions, make_eval_dataset
    from wpce_jax.evaluate import zeroshot
    from wpce_jax.evaluate.encode import Encoders
    from wpce_jax.models.model_config import init_params, make_model
    from wpce_jax.parallel import make_mesh
    from wpce_jax.similarity import eval_rff, eval_rff_draws

    config = load_config_file(os.path.join(ROOT, "configs", "digits.py"))
    with config.unlocked():
        config.model.text.vocab_size, config.model.text.eot_id = 128, 2
        config.eval.batch_size = 32 * jax.device_count()
        config.eval.rff_draws = args.rff_draws
    model, mesh = make_model(config), make_mesh()
    params = init_params(model, jax.random.key(0), config)
    key = jax.random.key(1)
    rffs = eval_rff_draws(key, eval_rff(key, config), config, args.rff_draws)
    source = [{"image": testing.encode(testing.digit_image(i, args.zeroshot_side), quality=90), "label": i % 10}
              for i in range(args.zeroshot_images)]
    encoders = Encoders(model, config, mesh)
    encoders.images(params, rffs, source[:config.eval.batch_size], "warm-up")  # compile
    pipe, enc, score = [], [], []
    width = config.model.embed_dim + config.wpce.num_features
    classes = np.random.default_rng(0).standard_normal((1000, args.rff_draws, width), dtype=np.float32)
    for _ in range(args.trials):
        t, _ = timed(lambda: list(make_eval_dataset(source, EvalDataOptions(config.data.image_size,
                                                                            config.eval.batch_size))))
        pipe.append(len(source) / t)
        t, feats = timed(encoders.images, params, rffs, source, "zero-shot")
        enc.append(len(source) / t)
        t, _ = timed(zeroshot.predict, feats.compared, classes)
        score.append(len(source) / t)
    print(f"zero-shot: {len(source)} JPEGs of {args.zeroshot_side}px -> {config.data.image_size}px, digits model, "
          f"batch {config.eval.batch_size}, {jax.device_count()} device(s)")
    print(f"  pipeline alone {max(pipe):,.0f} images/s | encode (pipeline + towers) {max(enc):,.0f} images/s | "
          f"scoring vs 1000 classes {max(score):,.0f} images/s | encode / pipeline {max(enc) / max(pipe):.2f}")


def _fmt(times):
    return ", ".join(f"{t:.2f}" for t in times)


# --------------------------------------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--captions_per_image", type=int, default=5)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--block_size", type=int, default=1024)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--zeroshot_images", type=int, default=2048)
    parser.add_argument("--zeroshot_side", type=int, default=64, help="side of the synthetic JPEGs")
    parser.add_argument("--rff_draws", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="500 images, F=256, block_size 256")
    args = parser.parse_args()
    if args.quick:
        args.images, args.dim, args.block_size = 500, 256, 256
    bench_retrieval(args)
    bench_zeroshot(args)


if __name__ == "__main__":
    main()
