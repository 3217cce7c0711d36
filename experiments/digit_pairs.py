"""Learning to rank on the built-in digit pairs: each ranking loss against InfoNCE, WPCE against CLIP.

Data: configs/digit_pairs.py's built-in set (wpce_jax/data/digit_pairs.py): two digit scans side by side, captions
naming them in order, label tuples (left, right); 20 of the 90 ordered pairs are held out of training and tested on
held-out scans. Relevance of an item to a query: positional (0, 1 or 2 sides agree).

Grid: similarity in {wpce, clip} x loss in {softmax, pairwise_logistic, approx_ndcg, pointwise_sigmoid, infonce} x seeds, every run
with the same steps and batch (configs/digit_pairs.py otherwise: loss both ways, the towers of configs/digits.py).
Each run is trained in this process by wpce_jax.train.train_and_evaluate, one after another, and its final
evaluation on the held-out pairs is kept: graded NDCG@10 and recall@1, both ways (retrieval/digit_pairs/...).
Runs go seed by seed (every row's seed 0, then every row's seed 1, ...): with --budget_s no run starts after the
budget is spent, and the table aggregates only the seeds that every row finished (all runs stay in the JSON).
A persistent compilation cache (in the output's temporary directory) lets the later seeds of a row reuse its
compiled step.

    python experiments/digit_pairs.py --out docs/figures/digit_pairs.json [--steps 150] [--batch 64] \
        [--seeds 0,1,2] [--budget_s 1500] [--models wpce,clip] [--kinds softmax,pairwise_logistic,...]
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
CONFIG = os.path.join(ROOT, "configs", "digit_pairs.py")
MODELS = ("wpce", "clip")
KINDS = ("softmax", "pairwise_logistic", "approx_ndcg", "pointwise_sigmoid", "infonce")  # configs/digit_pairs.py's
# metric key in the table -> the evaluation's name
METRICS = {"i2t_ndcg@10": "retrieval/digit_pairs/i2t_ndcg@10", "t2i_ndcg@10": "retrieval/digit_pairs/t2i_ndcg@10",
           "i2t_recall@1": "retrieval/digit_pairs/i2t_recall@1", "t2i_recall@1": "retrieval/digit_pairs/t2i_recall@1"}


def make_config(model: str, kind: str, seed: int, steps: int, batch: int):
    from wpce_jax.cli import load_config_file

    config = load_config_file(CONFIG, f"{model},{kind}")
    config.seed = seed
    config.total_steps = steps
    config.batch_size = batch
    config.optim.warmup_steps = max(steps // 10, 1)
    config.log_every_steps = max(steps // 4, 1)
    config.eval_every_steps = steps       # one evaluation, at the end
    config.checkpoint_every_steps = steps
    return config


def run_one(model: str, kind: str, seed: int, steps: int, batch: int, workdir: str) -> dict:
    from wpce_jax.train import train_and_evaluate

    start = time.perf_counter()
    final = train_and_evaluate(make_config(model, kind, seed, steps, batch), workdir)
    return {"model": model, "kind": kind, "seed": seed, "seconds": round(time.perf_counter() - start, 1),
            **{k: float(final[name]) for k, name in METRICS.items()}}


def aggregate(runs: list, models, kinds) -> tuple[list, list]:
    """(rows, seeds): per (model, kind) the mean and sample standard deviation of each metric over the seeds that
    every (model, kind) finished."""
    by_row = {(m, k): {r["seed"]: r for r in runs if r["model"] == m and r["kind"] == k} for m in models for k in kinds}
    seeds = sorted(set.intersection(*(set(v) for v in by_row.values()))) if by_row else []
    rows = []
    for (m, k), done in by_row.items():
        row = {"model": m, "kind": k, "seeds": len(seeds)}
        for key in METRICS:
            values = np.asarray([done[s][key] for s in seeds])
            row[key] = float(values.mean()) if len(values) else float("nan")
            row[key + "_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        rows.append(row)
    return rows, seeds


def table(rows: list) -> str:
    """The markdown table: mean ± sample std over the seeds."""
    head = "| similarity | loss | " + " | ".join(METRICS) + " |"
    lines = [head, "|" + "---|" * (2 + len(METRICS))]
    for r in rows:
        cells = [f"{r[k]:.3f} ± {r[k + '_std']:.3f}" for k in METRICS]
        lines.append(f"| {r['model']} | {r['kind']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="result JSON; the markdown table goes beside it (.md)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--budget_s", type=float, default=None, help="start no run after this many seconds")
    args = parser.parse_args(argv)
    models, kinds = args.models.split(","), args.kinds.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    import jax

    start = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="digit_pairs-") as tmp:
        jax.config.update("jax_compilation_cache_dir", os.path.join(tmp, "jit"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        for seed in seeds:
            for model in models:
                for kind in kinds:
                    if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
                        print(f"budget of {args.budget_s:.0f} s spent: {model},{kind} seed {seed} not run")
                        continue
                    run = run_one(model, kind, seed, args.steps, args.batch, os.path.join(tmp, f"{model}-{kind}-{seed}"))
                    runs.append(run)
                    print("RUN " + json.dumps(run), flush=True)
    rows, complete = aggregate(runs, models, kinds)
    result = {"steps": args.steps, "batch": args.batch, "seeds_complete": complete, "relevance": "positional",
              "rows": rows, "runs": runs, "seconds": round(time.perf_counter() - start, 1),
              "cpu_count": os.cpu_count(), "jax": jax.__version__}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    md = table(rows)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(md + "\n")
    print(md)
    print(f"total {result['seconds']} s")
    return result


if __name__ == "__main__":
    main()
