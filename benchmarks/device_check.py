"""One command for a first run on an accelerator: the numbers that say whether the training runs well on it.

    python benchmarks/device_check.py --preset=tiny|b16 [--out=FILE.json] [--budget_s=SECONDS]

Prints a table and writes JSON (rewritten after every section, so that a run cut short keeps what it measured)
with the sections
  platform    JAX version, backend, device kind and count, memory per device (device.memory_stats()).
  train_step  the WPCE and CLIP train steps side by side, at the largest per-device batch of the preset's list that
              fits (largest first; out of memory at compile or first step steps down): compile seconds, median
              seconds per step, images/s, MFU (XLA's FLOP count over the device's bf16 peak, wpce_jax/mfu.py;
              null where the peak is unknown, CPUs among them), the compiled step's bytes per device; then WPCE with
              accumulation 4 and with remat "save_dots", both at the same global batch (benchmarks/train_step.py's
              `measure` times every one).
  attention   the WPCE step with JAX's XLA attention against cuDNN's fused attention (on an NVIDIA GPU; elsewhere
              cuDNN is reported unavailable, with the reason, and XLA's is compared with Flax's attention, what
              model.attention="auto" takes there): time, bytes, and the largest difference of the towers' outputs
              on the same weights and inputs.
  pipeline    host images/s of the training input pipeline (benchmarks/pipeline.py's measurement) with 0, 1, ...
              workers on synthetic CC12M-like records (256-pixel JPEGs, quality 95), and the host cores one device
              needs at the measured WPCE step rate.
  zeroshot    images/s of encoding images (WPCE's compared vectors) and of scoring them against 1000 classes.
  checkpoint  seconds to save and to restore the train state through the project's Checkpointer (Orbax), and the
              bytes written.

Presets:
  tiny  a CPU-sized model (image 32 px, patch 8, towers of one block 64 wide, bfloat16): every section in well under two
        minutes on a CPU; tests/test_device_check.py runs it.
  b16   the paper's shapes (configs/vitb16_cc12m.py: ViT-B/16 on 224 px, text tower 12 x 512, context 77, embed 512,
        D = 1024 random features, bfloat16), per-device batch 512, 256, 128 or 64, 20 timed steps. Within a clock
        budget of 7 minutes, compiles included: a part that the remaining time cannot hold is skipped, and the
        table and the JSON ("skipped") say so.
"""
if __name__ == "__main__":  # as the training command does (wpce_jax/huge_pages.py)
    from wpce_jax.huge_pages import reexec_with_huge_pages
    reexec_with_huge_pages()

import argparse
import dataclasses
import gc
import json
import os
import shutil
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pipeline as pipeline_bench  # noqa: E402  benchmarks/pipeline.py
import train_step as train_step_bench  # noqa: E402  benchmarks/train_step.py
from wpce_jax import config_fields  # noqa: E402
from wpce_jax.models.model_config import (cudnn_attention_unavailable, init_params, make_model,  # noqa: E402
                                          resolve_attention)


@dataclasses.dataclass(frozen=True)
class Preset:
    clock_s: float                 # the budget: parts that would not fit in what is left are skipped
    batches: tuple[int, ...]       # per-device batch candidates, largest first
    steps: int                     # timed steps per setting
    pipeline_images: int           # distinct JPEGs written as records
    pipeline_batch: int
    pipeline_batches: int          # batches timed per worker count
    pipeline_workers: tuple[int, ...]  # worker counts (those above the host's cores are left out)
    pipeline_all_cores: bool       # also as many workers as the host has cores
    zeroshot_images: int           # images encoded per timed call (per device)
    classes: int = 1000
    pipeline_s: float = 30.0       # what the pipeline section needs, for the clock


PRESETS = {
    "tiny": Preset(clock_s=110.0, batches=(16, 8), steps=3, pipeline_images=48, pipeline_batch=16,
                   pipeline_batches=2, pipeline_workers=(0, 1), pipeline_all_cores=False, zeroshot_images=16, pipeline_s=15.0),
    "b16": Preset(clock_s=420.0, batches=(512, 256, 128, 64), steps=20, pipeline_images=512, pipeline_batch=64,
                  pipeline_batches=12, pipeline_workers=(0, 1, 2, 4, 8, 16, 32), pipeline_all_cores=True,
                  zeroshot_images=256,
                  pipeline_s=60.0),
}


def step_config(preset: str, similarity: str, per_device: int, **changes):
    """The preset's train config for "wpce" or "clip" at `per_device` examples per device; `changes` maps dotted
    fields to values (e.g. {"optim.accum_steps": 4})."""
    if preset == "b16":
        c = train_step_bench.preset_config("b16", similarity)
    else:
        c = train_step_bench.preset_config("digits", similarity)
        c.model.dtype = "bfloat16"
        c.model.image.update(dict(width=64, depth=1, heads=4, mlp_dim=128))  # one block: compiles dominate
        c.model.text.update(dict(width=64, depth=1, heads=4, mlp_dim=128))
        c.wpce.num_features = 128
    c.batch_size = per_device * jax.device_count()
    c.optim.accum_steps = 1
    for field, value in changes.items():
        config_fields.set_field(c, field, value)
    return c


class Clock:
    """The preset's time budget, counted from the start of the process's work."""

    def __init__(self, budget_s: float):
        self.started, self.budget = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.budget - self.elapsed()


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def timed(config, steps: int) -> dict:
    """benchmarks/train_step.py's measurement, with the images per second it implies (all devices)."""
    r = train_step_bench.measure(config, steps)
    r["images_per_s"] = config.batch_size / r["step_s"]
    gc.collect()  # the step's state is gone; let the next setting have the memory
    return r


class Check:
    def __init__(self, preset_name: str, out: str | None, budget_s: float | None = None):
        self.name, self.preset, self.out = preset_name, PRESETS[preset_name], out
        budget_s = budget_s or self.preset.clock_s
        self.clock = Clock(budget_s)
        self.report = {"preset": preset_name, "clock_budget_s": budget_s, "skipped": []}
        self.train_cost = None  # seconds the last train-step measurement took: the estimate for the next

    def save(self) -> None:
        self.report["elapsed_s"] = self.clock.elapsed()
        if self.out:
            with open(self.out, "w") as f:
                json.dump(self.report, f, indent=1)

    def fits(self, part: str, need_s: float | None) -> bool:
        """Whether `part` (needing about need_s seconds; None: unknown, run it) fits in the clock; records a skip."""
        left = self.clock.left()
        if need_s is None or need_s <= left:
            return True
        note = (f"{part}: skipped, {max(left, 0):.0f} s left of the {self.report['clock_budget_s']:.0f} s budget, "
                f"needs ~{need_s:.0f} s")
        self.report["skipped"].append(note)
        print(note, flush=True)
        return False

    def train(self, config) -> dict:
        started = time.perf_counter()
        r = timed(config, self.preset.steps)
        self.train_cost = time.perf_counter() - started
        return r

    # ------------------------------------------------------------------------------------------------ sections

    def platform(self) -> None:
        device = jax.devices()[0]
        stats = device.memory_stats() or {}
        self.report["platform"] = {
            "jax": jax.__version__, "backend": jax.default_backend(), "device_kind": device.device_kind,
            "device_count": jax.device_count(), "host_cores": os.cpu_count(),
            "memory_bytes_per_device": stats.get("bytes_limit"),
            "attention_auto": resolve_attention(step_config(self.name, "wpce", 1)),
        }

    def train_step(self) -> None:
        section = self.report["train_step"] = {"tried": {}}
        for per_device in self.preset.batches:  # largest first
            try:
                section["wpce"] = self.train(step_config(self.name, "wpce", per_device))
            except Exception as e:  # noqa: BLE001 - XLA's out-of-memory errors have no type of their own
                if not is_out_of_memory(e):
                    raise
                section["tried"][str(per_device)] = "out of memory"
                print(f"per-device batch {per_device}: out of memory, stepping down", flush=True)
                gc.collect()
                continue
            section["tried"][str(per_device)] = "fits"
            section["per_device_batch"], section["global_batch"] = per_device, per_device * jax.device_count()
            break
        else:
            raise RuntimeError(f"no per-device batch of {self.preset.batches} fits in memory")
        self.save()
        self.train_settings((("clip", "clip", {}),))

    def train_settings(self, settings) -> None:
        """More train_step rows at the WPCE row's batch: (key, similarity, {dotted field: value}) each."""
        section = self.report["train_step"]
        for key, similarity, changes in settings:
            if self.fits(f"train_step/{key}", 1.2 * self.train_cost):
                section[key] = self.train(step_config(self.name, similarity, section["per_device_batch"], **changes))
                self.save()
        if "clip" in section:
            section["wpce_over_clip"] = section["wpce"]["step_s"] / section["clip"]["step_s"]

    def attention(self) -> None:
        per_device = self.report["train_step"]["per_device_batch"]
        base = step_config(self.name, "wpce", per_device)
        auto = resolve_attention(base)  # what the train_step section's WPCE row ran
        reason = cudnn_attention_unavailable(base)
        section = self.report["attention"] = {"cudnn_available": reason is None, "cudnn_unavailable": reason,
                                              "auto": auto}
        other = "cudnn" if reason is None else "flax"
        section["compared"] = ["xla", other]
        wpce = self.report["train_step"]["wpce"]
        if auto == other:
            section[other] = {k: wpce[k] for k in ("compile_s", "step_s", "images_per_s", "mfu", "step_bytes")}
        elif self.fits(f"attention/{other}", 1.2 * self.train_cost):
            section[other] = self.train(step_config(self.name, "wpce", per_device, **{"model.attention": other}))
        if self.fits("attention/xla", 1.2 * self.train_cost):
            section["xla"] = self.train(step_config(self.name, "wpce", per_device, **{"model.attention": "xla"}))
        if "xla" in section and other in section:
            section[f"xla_over_{other}"] = section["xla"]["step_s"] / section[other]["step_s"]
        if self.fits("attention/max_abs_difference", 0.5 * self.train_cost):
            section["max_abs_difference"] = self.output_difference(base, other)

    def output_difference(self, config, other: str) -> float:
        """max |xla - other| over the image and text point clouds (points and weights, float32) of the WPCE towers
        on one random batch (at most 16 per device) and the same random weights. "flax" is the towers' attention
        when model.attention resolves to it; the config field itself takes auto, xla or cudnn."""
        config.batch_size = min(config.batch_size, 16 * jax.device_count())
        params = init_params(make_model(config), jax.random.key(0), config)
        rng = np.random.default_rng(0)
        size, length = config.data.image_size, config.model.text.context_length
        images = jnp.asarray(rng.integers(0, 256, (config.batch_size, size, size, 3), dtype=np.uint8))
        tokens = jnp.asarray(rng.integers(0, config.model.text.vocab_size - 1, (config.batch_size, length)),
                             jnp.int32)
        outputs = []
        for attention in ("xla", "auto" if other == "flax" else other):
            config.model.attention = attention
            model = make_model(config)
            clouds = jax.jit(model.apply)({"params": params}, images, tokens)
            outputs.append([np.asarray(a, np.float32) for cloud in clouds for a in (cloud.points, cloud.weights)])
        return float(max(np.max(np.abs(a - b)) for a, b in zip(*outputs)))

    def pipeline(self) -> None:
        from wpce_jax.data import image_ops, records, tokenizers
        from wpce_jax.data.train_tokenizer import train_sentencepiece

        p, cores = self.preset, os.cpu_count() or 1
        work = tempfile.mkdtemp(prefix="wpce_device_check_")
        try:
            jpegs = pipeline_bench.make_jpegs(p.pipeline_images, 256)
            captions = [f"a photo of a textured handwritten digit number {i % 10}" for i in range(len(jpegs))]
            data_dir = os.path.join(work, "records")
            records.write_dataset([records.encode_record(j, c, key=str(i), source="device_check")
                                   for i, (j, c) in enumerate(zip(jpegs, captions))], data_dir, 4,
                                  inputs=["device_check"])
            tok = tokenizers.get_tokenizer("sentencepiece", train_sentencepiece(captions, os.path.join(work, "spm"),
                                                                                40), 77)
            rates = {}
            for workers in sorted({w for w in p.pipeline_workers if w <= cores} | ({cores} if p.pipeline_all_cores else set())):
                if not self.fits(f"pipeline/{workers} workers", 5.0):
                    break
                rates[str(workers)], _ = pipeline_bench.time_grain(data_dir, tok, image_ops.DEFAULT_DECODER, workers,
                                                                   p.pipeline_batch, p.pipeline_batches)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        # Without workers the main process decodes: that rate is one core's; with w workers, rate / w per worker.
        per_core = max(rate / max(int(w), 1) for w, rate in rates.items())
        wpce = self.report["train_step"]["wpce"]
        device_rate = wpce["images_per_s"] / jax.device_count()
        self.report["pipeline"] = {"decoder": image_ops.DEFAULT_DECODER, "jpeg_side": 256, "crop": pipeline_bench.CROP,
                                   "images_per_s_by_workers": rates, "images_per_s_per_core": per_core,
                                   "device_images_per_s": device_rate, "host_cores_per_device": device_rate / per_core}

    def zeroshot(self) -> None:
        from wpce_jax import similarity
        from wpce_jax.evaluate import zeroshot

        config = step_config(self.name, "wpce", 1)
        config.batch_size = n = self.preset.zeroshot_images * jax.device_count()
        model = make_model(config)
        params = init_params(model, jax.random.key(0), config)
        rff = similarity.draw_rff(jax.random.key(1), config)
        encode = jax.jit(lambda p, x, r: similarity.compared(model, config, p, images=x, rff=r).image)
        size = config.data.image_size
        images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8))
        started = time.perf_counter()
        features = np.asarray(encode(params, images, rff))  # compiles
        compile_s = time.perf_counter() - started
        encode_s = _median_seconds(lambda: encode(params, images, rff))
        # Scoring: zeroshot.predict's blocks of images against the class vectors, on as many image vectors as one
        # block holds (its padded block is what it computes whatever the count).
        vectors = np.repeat(features, -(-zeroshot._BLOCK // n), axis=0)[:zeroshot._BLOCK, None]
        classes = np.random.default_rng(1).normal(size=(self.preset.classes, 1, features.shape[-1]))
        classes = zeroshot.class_vectors(classes.astype(np.float32), self.preset.classes, "wpce")
        zeroshot.predict(vectors, classes)  # compiles
        score_s = _median_seconds(lambda: zeroshot.predict(vectors, classes))
        self.report["zeroshot"] = {"encode_batch": n, "encode_compile_s": compile_s, "encode_images_per_s": n / encode_s,
                                   "classes": self.preset.classes, "feature_dim": int(features.shape[-1]),
                                   "score_images_per_s": len(vectors) / score_s}

    def checkpoint(self) -> None:
        from wpce_jax.checkpoint import Checkpointer, abstract_like
        from wpce_jax.optimizer import make_optimizer
        from wpce_jax.train_step import initial_state

        config = step_config(self.name, "wpce", 1)
        state = initial_state(make_model(config), make_optimizer(config), config, jax.random.key(0))
        jax.block_until_ready(state)
        work = tempfile.mkdtemp(prefix="wpce_device_check_")
        try:
            checkpointer = Checkpointer(work, max_to_keep=1, async_save=False)
            started = time.perf_counter()
            checkpointer.save(1, state, 0, config)
            checkpointer.wait()
            save_s = time.perf_counter() - started
            written = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(work) for f in files)
            target = abstract_like(state, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
            started = time.perf_counter()
            restored, _ = checkpointer.restore(1, target)
            jax.block_until_ready(restored)
            restore_s = time.perf_counter() - started
            checkpointer.close()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        params = sum(x.size for x in jax.tree.leaves(state.params))
        self.report["checkpoint"] = {"parameters": int(params), "bytes": int(written), "save_s": save_s,
                                     "restore_s": restore_s}

    def run(self) -> dict:
        self.platform()
        self.save()
        self.train_step()  # WPCE and CLIP first: their ratio is the first thing to know
        # Then the rest, most telling first; each part is skipped (and says so) when what is left of the clock
        # cannot hold it.
        estimates = (("attention", 1.5 * self.train_cost), ("pipeline", self.preset.pipeline_s),
                     ("checkpoint", 0.5 * self.train_cost), ("zeroshot", 0.5 * self.train_cost))
        for name, need in estimates:
            if self.fits(name, need):
                getattr(self, name)()
                self.save()
        self.train_settings((("wpce_accum4", "wpce", {"optim.accum_steps": 4}),
                             ("wpce_remat_save_dots", "wpce", {"model.remat": "save_dots"})))
        stats = jax.devices()[0].memory_stats() or {}
        self.report["platform"]["peak_bytes_in_use"] = stats.get("peak_bytes_in_use")  # the process's, all parts
        return self.report


def _median_seconds(call, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def gib(value) -> str:
    return "n/a" if value is None else f"{value / 2 ** 30:.3f}"


def table(report: dict) -> str:
    """The report as text, one line per measurement."""
    lines = []
    p = report["platform"]
    memory = p["memory_bytes_per_device"]
    lines.append(f"platform: JAX {p['jax']}, {p['backend']}, {p['device_count']} x {p['device_kind']}, "
                 f"{gib(memory)} GiB per device, {p['host_cores']} host cores; "
                 f"model.attention='auto' -> {p['attention_auto']}")
    t = report.get("train_step")
    if t:
        lines.append(f"train_step: per-device batch {t.get('per_device_batch')} (tried {t['tried']}), "
                     f"global {t.get('global_batch')}")
        lines.append(f"  {'setting':<24} {'compile s':>9} {'s/step':>9} {'images/s':>9} {'MFU':>6} "
                     f"{'step GiB':>9} {'vs WPCE':>8}")
        rows = [(k, t[k]) for k in ("wpce", "clip", "wpce_accum4", "wpce_remat_save_dots") if k in t]
        a = report.get("attention") or {}
        rows += [(f"wpce, attention {k}", a[k]) for k in a.get("compared", []) if k in a]
        for name, r in rows:
            mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            lines.append(f"  {name:<24} {r['compile_s']:>9.1f} {r['step_s']:>9.4f} {r['images_per_s']:>9.1f} "
                         f"{mfu:>6} {gib(r['step_bytes']):>9} {r['step_s'] / t['wpce']['step_s']:>8.2f}")
        if "wpce_over_clip" in t:
            lines.append(f"  WPCE / CLIP step time: {t['wpce_over_clip']:.3f}")
    a = report.get("attention")
    if a:
        cudnn = "available" if a["cudnn_available"] else f"unavailable ({a['cudnn_unavailable']})"
        ratio = next((f"{v:.3f}" for k, v in a.items() if k.startswith("xla_over_")), "n/a")
        lines.append(f"attention: cuDNN {cudnn}; auto -> {a['auto']}; xla / {a['compared'][1]} step time {ratio}; "
                     f"largest output difference {_number(a.get('max_abs_difference'))}")
    pl = report.get("pipeline")
    if pl:
        rates = ", ".join(f"{w} workers {r:.0f}" for w, r in pl["images_per_s_by_workers"].items())
        lines.append(f"pipeline ({pl['decoder']}, {pl['jpeg_side']} px JPEGs -> {pl['crop']}): images/s {rates}; "
                     f"{pl['images_per_s_per_core']:.0f} per core; one device takes {pl['device_images_per_s']:.0f} "
                     f"images/s: {pl['host_cores_per_device']:.2f} host cores per device")
    z = report.get("zeroshot")
    if z:
        lines.append(f"zeroshot: encode {z['encode_images_per_s']:.0f} images/s (batch {z['encode_batch']}), score "
                     f"{z['score_images_per_s']:.0f} images/s against {z['classes']} classes (F = {z['feature_dim']})")
    c = report.get("checkpoint")
    if c:
        lines.append(f"checkpoint: {c['parameters'] / 1e6:.2f} M parameters, {c['bytes'] / 2 ** 20:.1f} MiB, save "
                     f"{c['save_s']:.2f} s, restore {c['restore_s']:.2f} s")
    for note in report["skipped"]:
        lines.append(f"SKIPPED {note}")
    lines.append(f"elapsed {report['elapsed_s']:.0f} s of a {report['clock_budget_s']:.0f} s budget")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=tuple(PRESETS), required=True)
    parser.add_argument("--out", help="write the JSON report here")
    parser.add_argument("--budget_s", type=float, help="the clock budget instead of the preset's (seconds)")
    args = parser.parse_args()
    check = Check(args.preset, args.out, args.budget_s)
    try:
        check.run()
    finally:  # whatever was measured before a failure is kept
        check.save()
    print(table(check.report), flush=True)


if __name__ == "__main__":
    main()
