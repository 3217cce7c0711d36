"""experiments/compositional.py on a tiny instance: the held-out combinations never reach training, every digit is on
both sides in training, each record's halves are scans of the digits its caption names, and a tiny training run of
WPCE and the equal-width CLIP gives finite metrics in [0, 1]. Which method wins is not asserted."""
import importlib.util
import json
import math
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("compositional", os.path.join(ROOT, "experiments", "compositional.py"))
comp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(comp)

TINY_DATA = dict(held_out=20, train_per_pair=4, test_per_pair=3, seen_per_pair=1)
# The towers of tests/runs.py's tiny digits run; batch divisible by the 8 fake devices of conftest.py.
TINY_MODEL = {"model.embed_dim": 16, "model.image.width": 32, "model.image.depth": 1, "model.image.heads": 2,
              "model.image.mlp_dim": 64, "model.text.width": 32, "model.text.depth": 1, "model.text.heads": 2,
              "model.text.mlp_dim": 64, "wpce.num_features": 32, "optim.warmup_steps": 2,
              "async_checkpoints": False}

# Every caption the templates can make, mapped back to its (left, right): the captions must be unambiguous.
CAPTIONS = {comp.caption(a, b, t): (a, b) for a, b in comp.PAIRS for t in range(len(comp.TEMPLATES))}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("compositional"))
    info = comp.build(out, dict(comp.SETTINGS["quick"], **TINY_DATA), seed=0)
    return out, info


def test_captions_are_unambiguous():
    assert len(CAPTIONS) == len(comp.PAIRS) * len(comp.TEMPLATES)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_held_out_pairs(seed):
    held = comp.held_out_pairs(seed, 20)
    assert len(held) == len(set(held)) == 20 and all(a != b for a, b in held)
    assert all((b, a) not in held for a, b in held)  # the reverse of a held-out pair is a training pair
    for d in range(10):  # every digit held out exactly twice on each side
        assert sum(a == d for a, _ in held) == 2 and sum(b == d for _, b in held) == 2
    left, right = comp.sides([p for p in comp.PAIRS if p not in held])
    assert left == right == set(range(10))


def test_held_out_combinations_never_in_training(data):
    out, info = data
    held = {tuple(p) for p in info["held_out"]}
    headers, _ = comp.read_set(os.path.join(out, "train"))
    assert len(headers) == 70 * TINY_DATA["train_per_pair"]
    train_pairs = set()
    for h in headers:
        pair = CAPTIONS[h["caption"]]  # read from the caption itself, not only from the header
        assert pair == (h["left"], h["right"]) and comp.PAIRS[h["label"]] == pair
        assert pair not in held
        train_pairs.add(pair)
    assert train_pairs == set(comp.PAIRS) - held
    left, right = comp.sides(train_pairs)
    assert left == right == set(range(10))
    test, _ = comp.read_set(os.path.join(out, "test_heldout"))
    assert {CAPTIONS[h["caption"]] for h in test} == held
    # Test images use only the held-out scans, training images only the training scans.
    _, _, train_idx, test_idx = comp.split_scans()
    used_train = {h[k] for h in headers for k in ("left_index", "right_index")}
    used_test = {h[k] for h in test for k in ("left_index", "right_index")}
    assert used_train <= set(train_idx.tolist()) and used_test <= set(test_idx.tolist())


def test_halves_are_the_named_scans(data):
    out, _ = data
    scans, labels, _, _ = comp.split_scans()
    rendered = np.stack([comp.render_half(s) for s in scans]).astype(np.float64)  # [1797, 32, 16]
    headers, images = comp.read_set(os.path.join(out, "test_heldout"))
    half = comp.IMAGE_SIDE // 2
    for h, image in zip(headers, images):
        a, b = CAPTIONS[h["caption"]]
        gray = image.astype(np.float64).mean(-1)
        for side, pixels, digit, index in ((0, gray[:, :half], a, h["left_index"]),
                                           (1, gray[:, half:], b, h["right_index"])):
            assert labels[index] == digit
            dist = np.abs(rendered - pixels).mean(axis=(1, 2))
            assert dist[index] < 6  # JPEG q95 of the same rendering
            assert labels[int(np.argmin(dist))] == digit  # the nearest scan of all 1797 is a scan of that digit


def test_tiny_training_gives_finite_metrics(tmp_path):
    setting = dict(steps=6, batch=32, overrides=TINY_MODEL, **TINY_DATA)
    # Two of the three models (clip differs from clip_wide only in embed_dim, checked on its config below).
    result = comp.run_experiment(setting, seed=0, log=lambda line: None, models=("wpce", "clip_wide"))
    rows = {r["model"]: r for r in result["rows"]}
    assert set(rows) == {"wpce", "clip_wide"}
    assert rows["wpce"]["feature_dim"] == 16 + 32 and rows["wpce"]["embed_dim"] == 16
    assert rows["clip_wide"]["embed_dim"] == rows["clip_wide"]["feature_dim"] == 16 + 32
    clip = comp.make_config("clip", setting, str(tmp_path), 0)
    assert clip.model.similarity == "clip" and clip.model.embed_dim == 16
    for row in rows.values():
        assert row["step"] == row["steps"] == 6
        for key in ("zeroshot_top1", "zeroshot_unordered", "zeroshot_swapped", "zeroshot_left", "zeroshot_right",
                    "zeroshot_top1_among_heldout", "i2t_recall@1", "i2t_recall@5", "t2i_recall@1",
                    "t2i_recall@5", "i2t_all_recall@1", "i2t_all_recall@5", "t2i_all_recall@1",
                    "t2i_all_recall@5", "seen_zeroshot_top1"):
            assert math.isfinite(row[key]) and 0 <= row[key] <= 1, (row["model"], key, row[key])
        assert row["zeroshot_unordered"] >= row["zeroshot_top1"] and row["zeroshot_unordered"] >= \
            row["zeroshot_swapped"]
        assert row["i2t_recall@5"] >= row["i2t_recall@1"] and row["t2i_recall@5"] >= row["t2i_recall@1"]
    path = tmp_path / "c.json"
    path.write_text(json.dumps(result))
    comp.plot(result, str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").stat().st_size > 0
