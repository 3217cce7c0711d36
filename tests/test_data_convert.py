"""Converter: every bad case built for real, exact counts, pixel round trips, resume, determinism."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from wpce_jax.data import convert, records, testing
from wpce_jax.errors import ConfigError

MAX_PIXELS = 300 * 300  # small cap so the "decompression bomb" test image stays small
MAX_SIDE = 96
# JPEG q95 re-encoding of a q90 (or lossless) source: mean absolute error per channel value (0..255).
# Measured ~1 on these images; 3 leaves room for libjpeg versions while failing on any real pixel error
# (a wrong rotation or colour conversion gives > 20).
REENCODE_MAE = 3.0


def _decode(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float64)


def _mae(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


def _exif_rotated_jpeg(pixels: np.ndarray) -> tuple[bytes, np.ndarray]:
    """A JPEG stored sideways with EXIF orientation 6 ("rotate 90 clockwise to view"); returns the bytes and
    the upright pixels a viewer shows."""
    stored = np.ascontiguousarray(np.rot90(pixels, k=1))  # stored = upright rotated 90 counter-clockwise
    img = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = 6
    return testing.encode(img, quality=95, exif=exif.tobytes()), pixels


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    """Two good shards, one shard with every bad case, one truncated shard. Returns (dir, expectations)."""
    d = tmp_path_factory.mktemp("tars")
    kept = {}  # key -> (caption, expected upright RGB pixels, exact source bytes or None if re-encoded)
    for s in range(2):
        for key, (pixels, caption, jpeg) in testing.valid_shard(str(d / f"{s:05d}.tar"),
                                                                range(s * 12, s * 12 + 12)).items():
            kept[key] = (caption, pixels, jpeg)

    px = lambda i, side=48: testing.digit_image(i, side, seed=7)  # noqa: E731
    members = []
    dropped = {}

    def good(key, image, caption, expect, exact=None, ext="jpg"):
        members.extend(testing.sample_members(key, image, caption, {"url": f"u/{key}"}, image_ext=ext))
        kept[key] = (" ".join(caption.split()) if isinstance(caption, str) else caption, expect, exact)

    def bad(key, image, caption, reason, ext="jpg"):
        members.extend(testing.sample_members(key, image, caption, None, image_ext=ext))
        dropped[reason] = dropped.get(reason, 0) + 1

    # Re-encoded but kept.
    good("bad/png_as_jpg", testing.encode(px(1), "PNG"), "a png named jpg", px(1))
    cmyk = Image.fromarray(px(2)).convert("CMYK")
    # PIL's RGB -> CMYK is c = 255 - r, ... with k = 0, which the converter must undo to the source pixels.
    good("bad/cmyk", testing.encode(cmyk, quality=95), "a cmyk jpeg", px(2))
    gray = Image.fromarray(px(3)).convert("L")
    good("bad/gray", testing.encode(gray, quality=95), "a grayscale jpeg",
         np.repeat(np.asarray(gray)[..., None], 3, axis=2))
    pal = Image.fromarray(px(4)).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    good("bad/palette", testing.encode(pal, "PNG"), "a palette png",
         np.asarray(pal.convert("RGB")), ext="png")
    rotated, upright = _exif_rotated_jpeg(px(5, 40)[:, :32])  # non-square so a missed rotation changes shape
    good("bad/exif", rotated, "an exif rotated photo", upright)
    big = px(6, 200)
    good("bad/too_large", testing.encode(big, quality=95), "a large image",
         np.asarray(Image.fromarray(big).resize((MAX_SIDE, MAX_SIDE), Image.Resampling.BICUBIC)))
    good("bad/odd_caption", testing.encode(px(7), quality=90), b"  caf\xc3\xa9\n\t caption \xff end  ",
         px(7))
    kept["bad/odd_caption"] = ("caf\u00e9 caption \ufffd end", px(7), None)
    # Dropped.
    full = testing.encode(px(8), quality=90)
    scan = full.index(b"\xff\xda")  # start-of-scan: cut inside the entropy-coded pixel data
    bad("bad/truncated_jpeg", full[: scan + (len(full) - scan) // 2], "truncated pixels", "image_corrupt")
    bad("bad/truncated_header", full[: scan // 2], "truncated in the header", "image_unreadable")
    bad("bad/not_an_image", b"this is not an image at all" * 10, "garbage", "image_unreadable")
    bad("bad/bomb", testing.encode(np.zeros((400, 400, 3), np.uint8), quality=50), "too many pixels",
        "image_too_many_pixels")
    bad("bad/empty_caption", testing.encode(px(9), quality=90), " \n\t ", "empty_caption")
    bad("bad/no_caption", testing.encode(px(10), quality=90), None, "missing_caption")
    bad("bad/no_image", None, "a caption without image", "missing_image")
    # The same key again after another key: the first pairing is kept, the second dropped.
    members.extend(testing.sample_members("bad/odd_caption", testing.encode(px(12), quality=90), "again"))
    dropped["duplicate_key"] = 1
    members.append(("../evil.jpg", testing.encode(px(11), quality=90)))
    members.append(("../evil.txt", b"escaping caption"))
    dropped["unsafe_member_name"] = 2
    testing.write_tar(str(d / "00002.tar"), members)

    # Truncated: 5 samples, cut in the middle of the 4th sample's image; the first 3 survive.
    tmembers, tkeys = [], []
    for k in range(100, 105):
        key = f"{k:09d}"
        pixels = testing.digit_image(k, 48)
        jpeg = testing.encode(pixels, quality=90)
        tmembers += testing.sample_members(key, jpeg, f"truncated shard sample {k}", None)
        tkeys.append((key, pixels, jpeg))
    raw = testing.write_tar(str(d / "00003.tar"), tmembers)
    cut = raw.index(tkeys[3][2]) + len(tkeys[3][2]) // 2
    testing.write_tar(str(d / "00003.tar"), tmembers, truncate_at=cut)
    # The cut sample's image member is incomplete: it is not a sample at all (no drop counted for it).
    for key, pixels, jpeg in tkeys[:3]:
        kept[key] = (f"truncated shard sample {int(key)}", pixels, jpeg)
    return d, kept, dropped


def _convert(d, out, **kw):
    inputs = sorted(str(p) for p in d.glob("*.tar"))
    kw.setdefault("workers", 1)
    return convert.convert(inputs, str(out), kw.pop("num_shards", 3), max_pixels=MAX_PIXELS,
                           max_image_side=MAX_SIDE, show_progress=False, **kw)


def _read_all(out):
    m = records.read_manifest(str(out))
    recs = []
    for path in records.shard_paths(str(out), m):
        recs += [records.decode_record(b) for b in records.read_records(path)]
    return m, recs


def test_counts_and_manifest(shard_set, tmp_path):
    d, kept, dropped = shard_set
    m = _convert(d, tmp_path / "out")
    assert m["num_examples"] == len(kept) == 24 + 7 + 3
    assert m["dropped"] == dropped
    assert m["schema_version"] == records.SCHEMA_VERSION
    assert [s["path"] for s in m["shards"]] == [records.shard_name(j, 3) for j in range(3)]
    assert sum(s["num_examples"] for s in m["shards"]) == m["num_examples"]
    from array_record.python import array_record_module
    for s in m["shards"]:
        assert records.count_records(str(tmp_path / "out" / s["path"])) == s["num_examples"]
        reader = array_record_module.ArrayRecordReader(str(tmp_path / "out" / s["path"]))
        assert "group_size:1," in reader.writer_options_string() + ","  # one record per chunk: random access
        reader.close()
    sizes = [s["num_bytes"] for s in m["shards"]]
    biggest_record = max(len(r) for p in records.shard_paths(str(tmp_path / "out"), m)
                         for r in records.read_records(p))
    assert max(sizes) - min(sizes) <= 2 * biggest_record  # balanced to within a record either side
    assert [os.path.basename(i["path"]) for i in m["inputs"]] == [f"{s:05d}.tar" for s in range(4)]
    assert len(m["damaged_inputs"]) == 1 and m["damaged_inputs"][0]["input"].endswith("00003.tar")
    assert m["damaged_inputs"][0]["kept_before_damage"] == 3
    assert m["reencoded"] == {"not_jpeg_png": 2, "not_rgb_cmyk": 1, "not_rgb_l": 1, "exif_orientation": 1,
                              "too_large": 1}
    # Nothing reached the file system outside OUT, staging removed, no temporary files left.
    assert not (d.parent / "evil.jpg").exists() and not (tmp_path / "evil.jpg").exists()
    assert sorted(os.listdir(tmp_path / "out")) == sorted([records.MANIFEST_NAME] + [s["path"] for s in m["shards"]])


def test_records_round_trip(shard_set, tmp_path):
    d, kept, _ = shard_set
    _convert(d, tmp_path / "out")
    _, recs = _read_all(tmp_path / "out")
    by_key = {r["key"]: r for r in recs}
    assert sorted(by_key) == sorted(kept)
    for key, (caption, pixels, exact) in kept.items():
        r = by_key[key]
        assert r["caption"] == caption, key
        got = _decode(r["image"])
        assert (r["width"], r["height"]) == (got.shape[1], got.shape[0])
        assert Image.open(io.BytesIO(r["image"])).format == "JPEG" and Image.open(io.BytesIO(r["image"])).mode == "RGB"
        if exact is not None:
            assert r["image"] == exact, f"{key}: a valid RGB JPEG must be kept byte for byte"
        else:
            assert _mae(got, pixels) < REENCODE_MAE, key
        assert r["source"].endswith(".tar")
    assert by_key["000000001"]["url"] == "http://example.com/000000001.jpg"
    assert by_key["000000001"]["sha256"] == f"{1:064x}"
    # Orientation applied: the stored image is upright (40 rows x 32 columns), not the sideways 32 x 40.
    assert _decode(by_key["bad/exif"]["image"]).shape == (40, 32, 3)


def test_deterministic_and_workers_agree(shard_set, tmp_path):
    d, _, _ = shard_set
    _convert(d, tmp_path / "a", workers=1)
    _convert(d, tmp_path / "b", workers=2)
    for j in range(3):
        name = records.shard_name(j, 3)
        assert records.read_records(str(tmp_path / "a" / name)) == records.read_records(str(tmp_path / "b" / name))


class _Stop(Exception):
    pass


def test_resume_after_interruption(shard_set, tmp_path):
    d, _, _ = shard_set
    ref = _convert(d, tmp_path / "ref")

    # Interrupted in phase 1 after two inputs are staged.
    def stop_after_two(i):
        if i == 1:
            raise _Stop()
    with pytest.raises(_Stop):
        _convert(d, tmp_path / "out", on_input_done=stop_after_two)
    assert not (tmp_path / "out" / records.MANIFEST_NAME).exists()
    staged = []
    # Interrupted in phase 2 after one output shard; the next shard is left as a partial temporary file.
    def stop_after_one(j):
        staged.append(j)
        if j == 0:
            (tmp_path / "out" / (records.shard_name(1, 3) + ".tmp")).write_bytes(b"partial")
            raise _Stop()
    with pytest.raises(_Stop):
        _convert(d, tmp_path / "out", on_input_done=lambda i: staged.append(("in", i)),
                 on_shard_done=stop_after_one)
    assert staged[:2] == [("in", 2), ("in", 3)]  # inputs 0 and 1 were kept from the first run
    shard0 = tmp_path / "out" / records.shard_name(0, 3)
    mtime = shard0.stat().st_mtime_ns
    redone = []
    m = _convert(d, tmp_path / "out", on_input_done=lambda i: redone.append(("in", i)),
                 on_shard_done=redone.append)
    assert redone == [1, 2]  # no input restaged; finished shard 0 verified and kept
    assert shard0.stat().st_mtime_ns == mtime
    assert {k: v for k, v in m.items() if k not in ("inputs", "damaged_inputs")} == \
        {k: v for k, v in ref.items() if k not in ("inputs", "damaged_inputs")}
    for j in range(3):
        name = records.shard_name(j, 3)
        assert records.read_records(str(tmp_path / "out" / name)) == records.read_records(str(tmp_path / "ref" / name))
    # A finished shard damaged afterwards is detected and rebuilt on the next run.
    (tmp_path / "out" / records.shard_name(2, 3)).write_bytes(b"not an array record")
    again = []
    _convert(d, tmp_path / "out", on_shard_done=again.append)
    assert again == [2]
    assert records.read_records(str(tmp_path / "out" / records.shard_name(2, 3))) == \
        records.read_records(str(tmp_path / "ref" / records.shard_name(2, 3)))


def test_refuses_other_run_in_same_output(shard_set, tmp_path):
    d, _, _ = shard_set
    _convert(d, tmp_path / "out")
    with pytest.raises(ValueError, match="other inputs or options"):
        _convert(d, tmp_path / "out", num_shards=2)


def test_cli(tmp_path):
    testing.valid_shard(str(tmp_path / "00000.tar"), range(6))
    testing.valid_shard(str(tmp_path / "00001.tar"), range(6, 10))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "wpce_jax.data.convert", "--input", str(tmp_path / "*.tar"),
                           "--output", str(out), "--num_shards", "2", "--workers", "2"],
                          capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr
    assert "samples/s" in proc.stderr and "ETA" in proc.stderr and "converted 10 examples" in proc.stderr
    m = json.loads((out / records.MANIFEST_NAME).read_text())
    assert m["num_examples"] == 10 and [s["num_examples"] for s in m["shards"]] in ([5, 5], [4, 6], [6, 4])


def test_record_format():
    b = records.encode_record(b"\xff\xd8jpeg", "caption é", key="k", source="s", label=3)
    assert b[:4] == b"WPCE" and b[4] == records.SCHEMA_VERSION
    r = records.decode_record(b)
    assert r == {"image": b"\xff\xd8jpeg", "caption": "caption é", "key": "k", "source": "s", "label": 3}
    with pytest.raises(records.RecordError, match="magic"):
        records.decode_record(b"XXXX" + b[4:])
    with pytest.raises(records.RecordError, match="version"):
        records.decode_record(b[:4] + bytes([99]) + b[5:])
    with pytest.raises(ValueError, match="caption"):
        records.encode_record(b"x", "")


def test_plan_shards_balanced():
    rng = np.random.default_rng(0)
    sizes = rng.integers(100, 5000, size=1000)
    plan = records.plan_shards(sizes, 7)
    assert plan[0][0] == 0 and plan[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(plan, plan[1:]))
    totals = [int(sizes[a:b].sum()) for a, b in plan]
    assert max(totals) - min(totals) <= 2 * sizes.max()
    # Fewer records than shards: some shards are empty, every record is still placed exactly once.
    small = records.plan_shards([10, 10], 4)
    assert len(small) == 4 and sorted(i for a, b in small for i in range(a, b)) == [0, 1]


def test_compressed_and_truncated_compressed_tars(tmp_path):
    import gzip as gz

    src = tmp_path / "src"
    src.mkdir()
    expected = testing.valid_shard(str(src / "a.tar"), range(8))
    raw = (src / "a.tar").read_bytes()
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "00000.tar.gz").write_bytes(gz.compress(raw))
    m = convert.convert([str(inp / "00000.tar.gz")], str(tmp_path / "out"), 2, show_progress=False)
    assert m["num_examples"] == 8 and m["damaged_inputs"] == []
    # Cut the compressed stream at 60%: the samples fully inside the first part survive, damage reported.
    (inp / "00000.tar.gz").write_bytes(gz.compress(raw)[: int(len(gz.compress(raw)) * 0.6)])
    m = convert.convert([str(inp / "00000.tar.gz")], str(tmp_path / "out2"), 2, show_progress=False)
    assert 0 < m["num_examples"] < 8 and len(m["damaged_inputs"]) == 1
    _, recs = _read_all(tmp_path / "out2")
    for r in recs:
        assert r["image"] == expected[r["key"]][2] and r["caption"] == expected[r["key"]][1]


def test_converted_dataset_feeds_the_pipeline(shard_set, tmp_path):
    from wpce_jax.data import pipeline
    from wpce_jax.data.eval_sources import Records
    from wpce_jax.data.train_tokenizer import train_sentencepiece

    d, kept, _ = shard_set
    m = _convert(d, tmp_path / "out")
    model = train_sentencepiece((c for c, _, _ in kept.values()), str(tmp_path / "spm"), 40)
    from wpce_jax.data import tokenizers
    tok = tokenizers.get_tokenizer("sentencepiece", model, 32)
    batches = list(pipeline.make_eval_dataset(Records(str(tmp_path / "out")), pipeline.EvalDataOptions(
        tokenizer=tok, image_size=32, batch_size=8, pad=False)))
    assert sum(len(b["label"]) for b in batches) == m["num_examples"]
    assert all((b["label"] == -1).all() for b in batches)  # no labels in web data
    assert np.isfinite(np.concatenate([b["image"] for b in batches])).all()


def test_sample_cut_by_damage_is_counted_as_such(tmp_path):
    members, jpegs = [], []
    for k in range(3):
        jpegs.append(testing.encode(testing.digit_image(k, 32), quality=90))
        members += testing.sample_members(f"{k:09d}", jpegs[-1], f"caption number {k}" * 20)
    raw = testing.write_tar(str(tmp_path / "t.tar"), members)
    cut = raw.index(b"caption number 2") + 100  # inside the last sample's caption, after its image
    testing.write_tar(str(tmp_path / "t.tar"), members, truncate_at=cut)
    m = convert.convert([str(tmp_path / "t.tar")], str(tmp_path / "out"), 1, show_progress=False)
    assert m["num_examples"] == 2
    assert m["dropped"] == {"incomplete_at_damage": 1}
    assert "after member '000000002.jpg'" in m["damaged_inputs"][0]["error"]


def test_webdataset_cls_becomes_the_label(tmp_path):
    members = []
    for k, cls in enumerate([b"3", b" 7\n", b"dog", None]):
        members += testing.sample_members(f"{k:09d}", testing.encode(testing.digit_image(k, 32), quality=90),
                                          f"caption {k}")
        if cls is not None:
            members.append((f"{k:09d}.cls", cls))
    (tmp_path / "in").mkdir()
    testing.write_tar(str(tmp_path / "in" / "t.tar"), members)
    m = convert.convert([str(tmp_path / "in" / "t.tar")], str(tmp_path / "out"), 1, show_progress=False)
    assert m["num_examples"] == 3 and m["dropped"] == {"bad_label": 1}
    _, recs = _read_all(tmp_path / "out")
    assert {r["key"]: r.get("label") for r in recs} == {"000000000": 3, "000000001": 7, "000000003": None}


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "wpce_jax.data.convert", *args], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))


def test_no_example_kept_is_an_error(tmp_path):
    # One tar of random bytes (unreadable: damage, nothing before it), one valid tar without members, one of
    # samples that are all dropped: the command fails, says why on one line, and leaves no dataset behind.
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "00000.tar").write_bytes(np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes())
    testing.write_tar(str(inp / "00001.tar"), [])
    members = testing.sample_members("a", b"not an image" * 20, "a caption") + \
        testing.sample_members("b", testing.encode(testing.digit_image(1, 32), quality=90), None)
    testing.write_tar(str(inp / "00002.tar"), members)
    out = tmp_path / "out"
    proc = _run_cli("--input", str(inp / "*.tar"), "--output", str(out), "--num_shards", "2", "--workers", "2")
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no example kept from 3 input tar file(s)"), proc.stderr
    for name in ("00000.tar", "00001.tar", "00002.tar"):
        assert str(inp / name) in last
    assert "image_unreadable 1" in last and "missing_caption 1" in last and "1 input(s) damaged" in last
    assert f"nothing written to {out}" in last and "Traceback" not in proc.stderr
    assert not out.exists()  # no manifest, no shards, no staging
    # The same through main() and convert(): an empty tar alone, into a directory that holds something else.
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert convert.main(["--input", str(inp / "00001.tar"), "--output", str(out), "--num_shards", "1",
                         "--workers", "1"]) == 1
    assert sorted(os.listdir(out)) == ["notes.txt"]
    with pytest.raises(convert.EmptyOutputError, match=r"from 1 input tar file\(s\) .*00000.tar.*damaged"):
        convert.convert([str(inp / "00000.tar")], str(tmp_path / "out2"), 1, show_progress=False)
    assert not (tmp_path / "out2").exists()


def test_empty_input_message_and_no_stale_empty_manifest(tmp_path, capsys):
    testing.write_tar(str(tmp_path / "empty.tar"), [])
    out = tmp_path / "out"
    assert convert.main(["--input", str(tmp_path / "empty.tar"), "--output", str(out), "--num_shards", "1",
                         "--workers", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"error: no example kept from 1 input tar file(s) ({tmp_path / 'empty.tar'}): dropped samples: "
                   f"none (the inputs hold no samples); nothing written to {out}")
    # An empty dataset (as an older converter wrote) is not taken for a finished conversion: it is redone.
    testing.valid_shard(str(tmp_path / "ok.tar"), range(2))
    m = convert.convert([str(tmp_path / "ok.tar")], str(out), 1, show_progress=False)
    records.write_manifest(str(out), dict(m, num_examples=0, shards=[]))  # same run, claims an empty dataset
    os.remove(out / records.shard_name(0, 1))
    assert convert.convert([str(tmp_path / "ok.tar")], str(out), 1, show_progress=False)["num_examples"] == 2


def test_labels_key_keeps_label_tuples_and_counts_bad_ones(tmp_path):
    # --labels_key: the json's KEY (an int or a list of ints) becomes the record's "labels"; K is the length of the
    # first valid tuple (here a0's, after a bad one); every other case is dropped with its reason.
    def sample(key, meta, raw_json=None):
        members = testing.sample_members(key, testing.encode(testing.digit_image(len(key), 32), quality=90),
                                         f"caption {key}", meta)
        return members + ([(f"{key}.json", raw_json)] if raw_json is not None else [])

    (tmp_path / "in").mkdir()
    testing.write_tar(str(tmp_path / "in" / "a.tar"), [
        *sample("a00", {"labels": [1, "x"]}),            # bad_labels (and not the one that fixes K)
        *sample("a01", {"labels": [3, 1], "url": "u/a01"}),  # kept: K = 2
        *sample("a02", {"labels": 5}),                    # an int is a tuple of one: labels_length
        *sample("a03", None),                             # no json: missing_labels
        *sample("a04", {"other": [1, 2]}),                # no key: missing_labels
        *sample("a05", None, raw_json=b"{not json"),      # a json that does not parse: missing_labels
        *sample("a06", {"labels": [True, 2]}),            # bools are no labels: bad_labels
        *sample("a07", {"labels": [1.0, 2]}),             # bad_labels
        *sample("a08", {"labels": [2 ** 31, 0]}),         # outside int32: bad_labels
        *sample("a09", {"labels": []}),                   # bad_labels
    ])
    testing.write_tar(str(tmp_path / "in" / "b.tar"), [
        *sample("b00", {"labels": [0, -9]}),              # kept
        *sample("b01", {"labels": [2, 3, 4]}),            # labels_length
    ])
    inputs = [str(tmp_path / "in" / "b.tar"), str(tmp_path / "in" / "a.tar")]  # sorted by the converter
    m = convert.convert(inputs, str(tmp_path / "out"), 1, show_progress=False, labels_key="labels")
    assert m["num_examples"] == 2
    assert m["dropped"] == {"bad_labels": 5, "labels_length": 2, "missing_labels": 3}
    assert m["options"]["labels_key"] == "labels" and m["options"]["num_labels"] == 2
    _, recs = _read_all(tmp_path / "out")
    assert {r["key"]: r["labels"] for r in recs} == {"a01": [3, 1], "b00": [0, -9]}
    assert {r["key"]: r.get("url") for r in recs} == {"a01": "u/a01", "b00": None}

    # --num_labels fixes K instead: the int becomes a tuple of one, the pairs are now the wrong length.
    m = convert.convert(inputs, str(tmp_path / "out1"), 1, show_progress=False, labels_key="labels", num_labels=1)
    assert m["num_examples"] == 1 and m["dropped"]["labels_length"] == 3
    assert [r["labels"] for r in _read_all(tmp_path / "out1")[1]] == [[5]]

    # Without --labels_key the json's tuples are ignored and no sample is dropped for them.
    m = convert.convert(inputs, str(tmp_path / "out2"), 1, show_progress=False)
    assert m["num_examples"] == 12 and m["dropped"] == {}
    assert not any("labels" in r for r in _read_all(tmp_path / "out2")[1])
    with pytest.raises(ConfigError, match="--labels_key"):
        convert.convert(inputs, str(tmp_path / "out3"), 1, show_progress=False, num_labels=2)
