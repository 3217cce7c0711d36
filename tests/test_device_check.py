"""benchmarks/device_check.py --preset=tiny runs every section on the CPU and writes a complete JSON report.

One subprocess with one CPU device (the check sizes batches per device). The clock budget is lifted
(--budget_s): on a shared machine the preset's own budget would skip sections, which is the b16 preset's
behaviour, not what this test checks. About a minute on two free cores.
"""
import json
import math
import os
import subprocess
import sys

from runs import cpu_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ("platform", "train_step", "attention", "pipeline", "zeroshot", "checkpoint")
# Numbers that are null by definition on a CPU: no bf16 peak to take MFU against, no memory statistics, no cuDNN.
MAY_BE_NULL = {"mfu", "memory_bytes_per_device", "peak_bytes_in_use", "cudnn_unavailable"}


def numbers(tree, path=""):
    """(path, value) of every leaf of a JSON tree."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from numbers(value, f"{path}/{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from numbers(value, f"{path}/{i}")
    else:
        yield path, tree


def test_tiny_preset_reports_every_section(tmp_path):
    out = tmp_path / "check.json"
    env = dict(cpu_env(1), PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "device_check.py"), "--preset=tiny",
                             f"--out={out}", "--budget_s=100000"], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["skipped"] == []
    for section in SECTIONS:
        assert report.get(section), (section, report.keys())
    for path, value in numbers(report):
        if value is None:
            assert path.rsplit("/", 1)[-1] in MAY_BE_NULL, path
        elif isinstance(value, float):
            assert math.isfinite(value), (path, value)
    t = report["train_step"]
    for key in ("wpce", "clip", "wpce_accum4", "wpce_remat_save_dots"):
        assert t[key]["step_s"] > 0 and t[key]["compile_s"] > 0 and t[key]["images_per_s"] > 0, key
        assert math.isfinite(t[key]["loss"]) and t[key]["flops"] > 0, key
    assert t["per_device_batch"] == 16 and t["wpce_over_clip"] > 0
    a = report["attention"]
    assert not a["cudnn_available"] and "NVIDIA GPU" in a["cudnn_unavailable"]
    assert a["auto"] == "flax" and a["compared"] == ["xla", "flax"]
    # Flax's attention and JAX's XLA attention in bfloat16: the towers' outputs (unit points, tanh-clipped
    # weights) agree to bf16 rounding, not exactly (tests/test_attention.py bounds them on its own model).
    assert 0 <= a["max_abs_difference"] < 0.1
    p = report["pipeline"]
    assert set(p["images_per_s_by_workers"]) == {"0", "1"} and p["host_cores_per_device"] > 0
    z = report["zeroshot"]
    assert z["classes"] == 1000 and z["encode_images_per_s"] > 0 and z["score_images_per_s"] > 0
    c = report["checkpoint"]
    assert c["bytes"] > 2 * c["parameters"] and c["save_s"] > 0 and c["restore_s"] > 0
    assert "WPCE / CLIP step time" in result.stdout and "checkpoint:" in result.stdout
