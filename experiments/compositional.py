"""Compositional captions: WPCE against CLIP on pairs of real digit scans, tested on unseen combinations.

Data. Every image is two of scikit-learn's handwritten digit scans side by side (each 8x8 scan upscaled to 16 wide
x 32 high, dark ink on white, one 32x32 RGB JPEG); its caption names both digits in words and says which is where,
in one of several phrasings, some naming the left digit first ("a three left of a seven", "three then seven"), some
the right one ("a seven right of a three"). Of the 90 ordered pairs (a, b), a != b, 20 are held out entirely from
training: two seeded permutations pick for every digit two right-hand partners, so each digit is held out twice on
the left and twice on the right, and the reverse (b, a) of a held-out pair is always a training pair; every digit
is on both sides in many training pairs. Training images use only the scans of the stratified 80% training split
of the digits (the built-in dataset's split); test images use only the held-out 20% of the scans. The records are
written with the project's writer (wpce_jax.data.records) and a SentencePiece model is trained on the training
captions (wpce_jax.data.train_tokenizer). The building code is wpce_jax/data/digit_pairs.py, shared with the built-in
graded set of configs/digit_pairs.py.

Models. configs/compositional.py (the towers of configs/digits.py), trained by wpce_jax.train.train_and_evaluate
with the same seed, steps, batch and data order:
  wpce        point dimension d = 64, D = 256 random Fourier features: compared vectors of d + D = 320
  clip        embed_dim d = 64: equal compute (same towers, one point per input)
  clip_wide   embed_dim d + D = 320: equal similarity width (not tested in the paper)

Evaluation, from each final checkpoint (wpce_jax.checkpoint.load: encode_images, encode_texts), on test scans:
  - zero-shot among all 90 pair captions (class vector from every caption template, as wpce_jax.evaluate.zeroshot
    builds them): top-1 on the held-out pairs; "unordered": both digits right in either order; "swapped": the
    prediction is exactly (b, a); left / right digit correct; top-1 among the 20 held-out pairs only; and top-1 on
    seen pairs drawn from the test scans (the in-distribution control);
  - image <-> text retrieval on the held-out test set (one caption per image), relevance by pair as the project's
    digits retrieval does by digit: recall@1/5 in both directions (wpce_jax.evaluate.retrieval.direction_scores);
    and the same queries against the held-out and the seen test sets together ("all": seen pairs, the reverse of
    every held-out pair among them, as distractors).

    python experiments/compositional.py [--quick] [--out FILE] [--seed S]
"""
import io
import json
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import experiment_cli  # noqa: E402
from wpce_jax.data import digit_pairs, records  # noqa: E402
# The data's names, re-exported for the tests and the evaluation below.
from wpce_jax.data.digit_pairs import (IMAGE_SIDE, PAIR_INDEX, PAIRS, SP_VOCAB, TEMPLATES,  # noqa: E402,F401
                                       caption, held_out_pairs, render_half, render_pair, sides, split_scans)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "compositional.py")
MODELS = ("wpce", "clip", "clip_wide")

SETTINGS = {
    # train_per_pair: training images per training pair; test_per_pair: test images per held-out pair;
    # seen_per_pair: test images per training pair (the in-distribution control).
    "quick": dict(steps=250, batch=128, train_per_pair=80, test_per_pair=20, seen_per_pair=4, held_out=20,
                  overrides={}),
    "full": dict(steps=1000, batch=128, train_per_pair=200, test_per_pair=25, seen_per_pair=5, held_out=20,
                 overrides={}),
}


# --------------------------------------------------------------------------------------------- data

def build(out: str, setting: dict, seed: int) -> dict:
    """Writes OUT/{train, test_heldout, test_seen} record sets, OUT/spm.model and OUT/pairs.json; returns the latter."""
    return digit_pairs.build(out, setting, seed, builder="experiments/compositional.py",
                             seen_per_pair=setting["seen_per_pair"])


def decode(image_bytes: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image_bytes)).convert("RGB"))


def read_set(directory: str) -> tuple[list[dict], np.ndarray]:
    """(headers, uint8 images [N, S, S, 3]) of a record set, in record order."""
    manifest = records.read_manifest(directory)
    headers, images = [], []
    for path in records.shard_paths(directory, manifest):
        for b in records.read_records(path):
            r = records.decode_record(b)
            images.append(decode(r.pop("image")))
            headers.append(r)
    return headers, np.stack(images)


# --------------------------------------------------------------------------------------------- training

def make_config(name: str, setting: dict, data_dir: str, seed: int):
    from wpce_jax.cli import load_config_file

    config = load_config_file(CONFIG, name)
    config.seed = seed
    config.total_steps = setting["steps"]
    config.batch_size = setting["batch"]
    config.log_every_steps = max(setting["steps"] // 6, 1)
    config.data.train_dir = os.path.join(data_dir, "train")
    config.data.tokenizer_path = os.path.join(data_dir, "spm.model")
    for key, value in setting.get("overrides", {}).items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    if name == "clip_wide":  # equal similarity width: d + D of the WPCE model with the same overrides
        wpce = load_config_file(CONFIG, "wpce")
        for key, value in setting.get("overrides", {}).items():
            node = wpce
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
        config.model.embed_dim = wpce.model.embed_dim + wpce.wpce.num_features
    return config


def train(name: str, setting: dict, data_dir: str, workdir: str, seed: int, log=print) -> dict:
    from wpce_jax.train import train_and_evaluate

    config = make_config(name, setting, data_dir, seed)
    start = time.perf_counter()
    train_and_evaluate(config, workdir)
    seconds = time.perf_counter() - start
    step_times, losses = [], {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            if "train/step_time_s" in m:
                step_times.append(m["train/step_time_s"])
            if "train/loss" in m:
                losses[m["step"]] = m["train/loss"]
    log(f"{name}: trained {config.total_steps} steps in {seconds:.1f} s")
    return {"train_seconds": round(seconds, 1), "step_time_s": float(np.median(step_times)) if step_times else None,
            "final_loss": losses[max(losses)] if losses else None}


# --------------------------------------------------------------------------------------------- evaluation

def evaluate(workdir: str, data_dir: str) -> dict:
    """The metrics of the module docstring, from the run's latest checkpoint."""
    import jax

    from wpce_jax.checkpoint import load
    from wpce_jax.evaluate.retrieval import direction_scores
    from wpce_jax.evaluate.zeroshot import class_vectors

    model = load(workdir)
    similarity = model.config.model.similarity

    def images(x):
        return np.concatenate([np.asarray(model.encode_images(x[i:i + 256])) for i in range(0, len(x), 256)])

    def texts(t):
        return np.concatenate([np.asarray(model.encode_texts(t[i:i + 256])) for i in range(0, len(t), 256)])

    prompts = [caption(a, b, t) for a, b in PAIRS for t in range(len(TEMPLATES))]
    classes = class_vectors(texts(prompts)[:, None, :], len(PAIRS), similarity)[:, 0]  # [90, F]
    with open(os.path.join(data_dir, "pairs.json")) as f:
        held = [tuple(p) for p in json.load(f)["held_out"]]
    held_idx = np.asarray([PAIR_INDEX[p] for p in held])

    out = {"step": model.step, "feature_dim": int(classes.shape[1]),
           "num_params": int(sum(x.size for x in jax.tree.leaves(model.params)))}
    headers, pixels = read_set(os.path.join(data_dir, "test_heldout"))
    feats = images(pixels)
    truth = np.asarray([h["label"] for h in headers])
    left, right = np.asarray([h["left"] for h in headers]), np.asarray([h["right"] for h in headers])
    logits = feats @ classes.T
    pred = logits.argmax(1)
    pl, pr = np.asarray([PAIRS[p][0] for p in pred]), np.asarray([PAIRS[p][1] for p in pred])
    out["zeroshot_top1"] = float(np.mean(pred == truth))
    out["zeroshot_unordered"] = float(np.mean(((pl == left) & (pr == right)) | ((pl == right) & (pr == left))))
    out["zeroshot_swapped"] = float(np.mean((pl == right) & (pr == left)))
    out["zeroshot_left"] = float(np.mean(pl == left))
    out["zeroshot_right"] = float(np.mean(pr == right))
    out["zeroshot_pred_seen_pair"] = float(np.mean(~np.isin(pred, held_idx)))
    out["zeroshot_top1_among_heldout"] = float(np.mean(held_idx[logits[:, held_idx].argmax(1)] == truth))
    # Retrieval on the held-out test set, one caption per image, relevance by pair.
    caps = texts([h["caption"] for h in headers])
    for direction, args in (("i2t", (feats, caps, truth, truth)), ("t2i", (caps, feats, truth, truth))):
        scores = direction_scores(*args)
        for k in (1, 5):
            out[f"{direction}_recall@{k}"] = scores[f"recall@{k}"]
    # Control: pairs seen in training, drawn from the test scans.
    seen_headers, seen_pixels = read_set(os.path.join(data_dir, "test_seen"))
    seen_feats, seen_truth = images(seen_pixels), np.asarray([h["label"] for h in seen_headers])
    out["seen_zeroshot_top1"] = float(np.mean((seen_feats @ classes.T).argmax(1) == seen_truth))
    # Harder retrieval: the held-out queries against the held-out and the seen test sets together (seen pairs,
    # among them the reverse of every held-out pair, as distractors).
    all_feats = np.concatenate([feats, seen_feats])
    all_caps = np.concatenate([caps, texts([h["caption"] for h in seen_headers])])
    all_truth = np.concatenate([truth, seen_truth])
    for direction, args in (("i2t", (feats, all_caps, truth, all_truth)),
                            ("t2i", (caps, all_feats, truth, all_truth))):
        scores = direction_scores(*args)
        for k in (1, 5):
            out[f"{direction}_all_recall@{k}"] = scores[f"recall@{k}"]
    out["num_test_heldout"], out["num_test_seen"] = len(headers), len(seen_headers)
    return out


# --------------------------------------------------------------------------------------------- experiment

def run_experiment(setting: dict, seed: int = 0, log=print, models=MODELS) -> dict:
    with tempfile.TemporaryDirectory(prefix="compositional-") as tmp:
        data_dir = os.path.join(tmp, "data")
        start = time.perf_counter()
        info = build(data_dir, setting, seed)
        build_seconds = time.perf_counter() - start
        log(f"data: {info['counts']} in {build_seconds:.1f} s; held out: "
            + " ".join(f"{a}{b}" for a, b in info["held_out"]))
        rows = []
        for name in models:
            workdir = os.path.join(tmp, name)
            row = {"model": name, **train(name, setting, data_dir, workdir, seed, log)}
            config = make_config(name, setting, data_dir, seed)
            row.update(similarity=config.model.similarity, embed_dim=config.model.embed_dim,
                       num_features=config.wpce.num_features if config.model.similarity == "wpce" else None,
                       steps=config.total_steps, batch=config.batch_size)
            start = time.perf_counter()
            row.update(evaluate(workdir, data_dir))
            row["eval_seconds"] = round(time.perf_counter() - start, 1)
            log("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            rows.append(row)
    return {"seed": seed, "setting": setting, "templates": TEMPLATES, "held_out": info["held_out"],
            "counts": info["counts"], "build_seconds": round(build_seconds, 1), "rows": rows}


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("zeroshot_top1", "zero-shot\ntop-1 (of 90)"), ("zeroshot_unordered", "both digits,\nany order"),
               ("zeroshot_swapped", "order\nswapped"), ("zeroshot_top1_among_heldout", "top-1 among\n20 held-out"),
               ("i2t_recall@1", "i2t R@1"), ("t2i_recall@1", "t2i R@1"), ("i2t_recall@5", "i2t R@5"),
               ("t2i_recall@5", "t2i R@5"), ("i2t_all_recall@1", "i2t R@1\n+seen distr."),
               ("t2i_all_recall@1", "t2i R@1\n+seen distr."), ("seen_zeroshot_top1", "seen pairs\ntop-1 (control)")]
    labels = {"wpce": "WPCE (d={d}, D={D})", "clip": "CLIP (d={d}, equal compute)",
              "clip_wide": "CLIP (d={d}, equal width)"}
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(13, 4.2))
    width = 0.8 / len(rows)
    x = np.arange(len(metrics))
    for i, row in enumerate(rows):
        values = [row[m] for m, _ in metrics]
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, values, width,
               label=labels[row["model"]].format(d=row["embed_dim"], D=row["num_features"]))
    ax.set_xticks(x)
    ax.set_xticklabels([label for _, label in metrics], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    s = result["setting"]
    ax.set_title(f"Held-out digit pairs ({len(result['held_out'])} of 90, unseen in training), {s['steps']} steps "
                 f"x batch {s['batch']}, seed {result['seed']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    return experiment_cli.main(__doc__, SETTINGS, run_experiment, plot,
                               "fewer steps and images (minutes on 2 CPU cores)", argv)


if __name__ == "__main__":
    main()
