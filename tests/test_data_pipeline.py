"""grain pipeline: the global training stream (the same global batches for any process count and worker count,
exact resume from an example count), per-epoch shuffle, process sharding of evaluation, pixels against references."""

import io
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from wpce_jax.data import image_ops, pipeline, records, testing, tokenizers
from wpce_jax.data.eval_sources import Records
from wpce_jax.data.train_tokenizer import train_sentencepiece
from wpce_jax.errors import DataError

N = 53  # prime: no batch size or process count divides it, so remainders are exercised
SIZE = 24


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """N labelled records; the label is the record's index, so batches reveal exactly which records they hold.
    Images are non-square (40 x 30) so that crops matter."""
    d = tmp_path_factory.mktemp("ds")
    recs, pixels = [], []
    for i in range(N):
        px = testing.digit_image(i, 40)[:, 5:35]
        jpeg = testing.encode(px, quality=95)
        recs.append(records.encode_record(jpeg, f"a photo of a {['red', 'blue', 'green'][i % 3]} digit {i}",
                                          key=str(i), source="test", label=i, width=30, height=40))
        pixels.append(jpeg)
    records.write_dataset(recs, str(d / "data"), 4, inputs=["test"])
    model = train_sentencepiece([f"a photo of a red blue green digit {i}" for i in range(100)],
                                str(d / "spm"), vocab_size=30)
    tok = tokenizers.get_tokenizer("sentencepiece", model, 16)
    return str(d / "data"), tok, pixels


def _make(dataset, **kw):
    data_dir, tok, _ = dataset
    args = dict(tokenizer=tok, image_size=SIZE, batch_size=4, seed=3)
    args.update(kw)
    return pipeline.make_train_dataset(data_dir, pipeline.TrainDataOptions(**args))


def _make_eval(dataset, **kw):
    """The evaluation pipeline over the same records (unpadded unless asked)."""
    data_dir, tok, _ = dataset
    return pipeline.make_eval_dataset(Records(data_dir), pipeline.EvalDataOptions(
        **{"tokenizer": tok, "image_size": SIZE, "pad": False, **kw}))


def _labels(ds, n_batches=None):
    out = []
    for i, b in enumerate(ds):
        if n_batches is not None and i >= n_batches:
            break
        out.append(b["label"])
    return np.concatenate(out)


@pytest.mark.parametrize("resizer", image_ops.RESIZERS)
def test_batch_layout(dataset, resizer):
    b = next(iter(_make(dataset, resizer=resizer)))
    assert set(b) == {"image", "tokens", "label", "skipped"}
    assert b["image"].shape == (4, SIZE, SIZE, 3) and b["image"].dtype == np.uint8
    assert b["tokens"].shape == (4, 16) and b["tokens"].dtype == np.int32
    assert b["label"].shape == (4,) and b["label"].dtype == np.int32
    assert pipeline.dataset_size(dataset[0]) == N


def test_processes_disjoint_and_complete(dataset):
    # Training, one epoch of global batches of B = 3: every process gets floor(N / B) examples, disjoint.
    per = N // 3
    shares = [_labels(_make(dataset, batch_size=1, num_epochs=1, process_index=p, process_count=3))
              for p in range(3)]
    assert [len(s) for s in shares] == [per] * 3
    union = np.concatenate(shares)
    assert len(set(union.tolist())) == 3 * per and set(union.tolist()) <= set(range(N))
    # Evaluation: disjoint and exactly complete, in record order.
    ev = [_labels(_make_eval(dataset, batch_size=5, process_index=p, process_count=3)) for p in range(3)]
    np.testing.assert_array_equal(np.concatenate(ev), np.arange(N))
    # Over epochs the < B left-over examples change, so no record is starved.
    two = [_labels(_make(dataset, batch_size=1, num_epochs=6, process_index=p, process_count=3))
           for p in range(3)]
    assert set(np.concatenate(two).tolist()) == set(range(N))


def test_shuffle_per_epoch_and_seeded(dataset):
    a = _labels(_make(dataset, batch_size=1, num_epochs=2))
    assert sorted(a[:N].tolist()) == list(range(N)) and sorted(a[N:].tolist()) == list(range(N))
    assert not np.array_equal(a[:N], a[N:]), "epochs must be shuffled differently"
    assert not np.array_equal(a[:N], np.arange(N))
    np.testing.assert_array_equal(a, _labels(_make(dataset, batch_size=1, num_epochs=2)))
    assert not np.array_equal(a, _labels(_make(dataset, batch_size=1, num_epochs=2, seed=4)))


def test_pad_eval_equal_batches_with_mask(dataset):
    # 53 over 3 processes: 17, 18, 18 examples -> every process yields ceil(18 / 4) = 5 batches of 4.
    per = []
    for p in range(3):
        bs = list(_make_eval(dataset, batch_size=4, process_index=p, process_count=3, pad=True))
        assert [len(b["label"]) for b in bs] == [4] * 5
        mask = np.concatenate([b["mask"] for b in bs])
        labels = np.concatenate([b["label"] for b in bs])
        assert mask.dtype == bool and mask[:mask.sum()].all() and not mask[mask.sum():].any()
        per.append(labels[mask])
    np.testing.assert_array_equal(np.concatenate(per), np.arange(N))


def test_drop_remainder_and_partial_eval_batch(dataset):
    assert [len(b["label"]) for b in _make(dataset, batch_size=10, num_epochs=1)] == [10] * 5
    assert [len(b["label"]) for b in _make_eval(dataset, batch_size=10)] == [10] * 5 + [3]


def _assert_same_batches(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ------------------------------------------------------------------ the global stream: process count, workers, resume

B = 12  # global batch of the tests below: N = 53 gives 4 batches per epoch, 5 records left over each epoch
PER_EPOCH = N // B
VIEWS = image_ops.ViewAugment(strength=0.5, flip=True)


def _take(ds, n):
    it = iter(ds)
    out = [next(it) for _ in range(n)]
    if hasattr(it, "close"):
        it.close()  # worker processes
    return out


def _global_batches(dataset, processes, n, start_example=0, **kw):
    """The first n global batches of B with `processes` processes: their k-th batches concatenated in process
    order."""
    per = [_take(_make(dataset, batch_size=B // processes, process_index=p, process_count=processes,
                       start_example=start_example, **kw), n) for p in range(processes)]
    return [{key: np.concatenate([per[p][k][key] for p in range(processes)]) for key in per[0][k]}
            for k in range(n)]


MODES = {"crop": {}, "two_view": {"views": VIEWS}}


@pytest.mark.parametrize("mode", MODES)
def test_global_batches_do_not_depend_on_the_process_count(dataset, mode):
    n = PER_EPOCH + 2  # across the epoch boundary
    one = _global_batches(dataset, 1, n, **MODES[mode])
    assert set(one[0]) == ({"image", "image2", "tokens", "label", "skipped"} if mode == "two_view" else
                           {"image", "tokens", "label", "skipped"})
    for processes in (2, 4):
        _assert_same_batches(_global_batches(dataset, processes, n, **MODES[mode]), one)
    # An epoch is B * floor(N / B) distinct records; the next epoch is another order.
    labels = np.concatenate([b["label"] for b in one])
    assert len(set(labels[:PER_EPOCH * B].tolist())) == PER_EPOCH * B
    assert not np.array_equal(labels[:2 * B], labels[PER_EPOCH * B:(PER_EPOCH + 2) * B])
    if mode == "two_view":
        assert not np.array_equal(one[0]["image"], one[0]["image2"])


@pytest.mark.parametrize("mode", MODES)
def test_workers_do_not_change_the_stream(dataset, mode):
    kw = dict(batch_size=B // 2, process_index=1, process_count=2, **MODES[mode])
    n = 2 * PER_EPOCH + 1
    _assert_same_batches(_take(_make(dataset, worker_count=2, **kw), n), _take(_make(dataset, **kw), n))


@pytest.mark.parametrize("mode,processes,resumed_processes,worker_count", [
    ("crop", 2, 2, 0), ("crop", 2, 4, 0), ("crop", 4, 1, 2), ("two_view", 1, 2, 0), ("two_view", 2, 4, 2)])
def test_start_example_continues_the_stream(dataset, mode, processes, resumed_processes, worker_count):
    # A run with `processes` processes consumed k global batches (k B examples) and is resumed with another
    # process count (and worker count): the resumed stream is the uninterrupted one after its first k batches,
    # across the epoch boundary and into the next.
    k, n = PER_EPOCH - 1, PER_EPOCH + 2
    whole = _global_batches(dataset, processes, k + n, **MODES[mode])
    resumed = _global_batches(dataset, resumed_processes, n, start_example=k * B, worker_count=worker_count,
                              **MODES[mode])
    _assert_same_batches(resumed, whole[k:])


def test_augmentation_is_keyed_by_seed_and_global_position(dataset):
    # Global position g holds record ShuffledOrder[g], cropped with augment_rng(seed, g): nothing else enters.
    from wpce_jax.data.pipeline import ShuffledOrder, augment_rng

    jpegs = dataset[2]
    order = ShuffledOrder(N, B, seed=3)
    k = PER_EPOCH + 1  # a batch of the second epoch
    batch = _take(_make(dataset, batch_size=B // 2, process_index=1, process_count=2, start_example=k * B), 1)[0]
    for row in range(B // 2):
        g = k * B + B // 2 + row
        record = order[g]
        assert batch["label"][row] == record
        want = image_ops.train_crop(jpegs[record], SIZE, augment_rng(3, g), (0.5, 1.0), image_ops.DEFAULT_DECODER)
        np.testing.assert_array_equal(batch["image"][row], want)


def test_shuffled_order_epochs(dataset):
    from wpce_jax.data.pipeline import ShuffledOrder

    order = ShuffledOrder(N, B, seed=3)
    assert order.epoch_length == PER_EPOCH * B
    epochs = np.asarray([[order[e * order.epoch_length + q] for q in range(order.epoch_length)] for e in range(30)])
    for epoch in epochs:
        assert len(set(epoch.tolist())) == len(epoch) and set(epoch.tolist()) <= set(range(N))
    assert len({tuple(e) for e in epochs}) == len(epochs), "every epoch has its own order"
    assert set(epochs.ravel().tolist()) == set(range(N)), "the left-over records change from epoch to epoch"
    # Seeded by (seed, epoch), not seed + epoch: run 4's first epoch is not run 3's second.
    other = ShuffledOrder(N, B, seed=4)
    assert [other[q] for q in range(order.epoch_length)] != epochs[1].tolist()
    # Every record size, including one record and a global batch of all of them.
    for n in (1, 2, 7, 64):
        full = ShuffledOrder(n, n, seed=0)
        assert sorted(full[q] for q in range(n)) == list(range(n))


def test_num_epochs_and_start_example(dataset):
    whole = list(_make(dataset, batch_size=B // 2, process_count=2, num_epochs=2))
    assert len(whole) == 2 * PER_EPOCH
    rest = list(_make(dataset, batch_size=B // 2, process_count=2, num_epochs=2, start_example=5 * B))
    _assert_same_batches(rest, whole[5:])
    assert list(_make(dataset, batch_size=B, num_epochs=2, start_example=2 * PER_EPOCH * B)) == []
    assert list(_make(dataset, batch_size=B, num_epochs=2, start_example=9 * PER_EPOCH * B)) == []


@pytest.mark.parametrize("start", [5, -B, 1.5 * B, B // 2])
def test_start_example_must_be_a_multiple_of_the_global_batch(dataset, start):
    with pytest.raises(ValueError, match="multiple of the global batch 12 .batch_size 6 x 2 processes"):
        _make(dataset, batch_size=6, process_count=2, start_example=start)


def test_fewer_examples_than_a_global_batch(dataset):
    with pytest.raises(ValueError, match="53 examples are fewer than one global batch of 56 .batch_size 14 x 4"):
        _make(dataset, batch_size=14, process_count=4)
    _make(dataset, batch_size=13, process_count=4)  # 52 fit


def test_workers_match_in_process(dataset):
    ref = [b for b in _make_eval(dataset, batch_size=8)]
    ds = _make_eval(dataset, batch_size=8, worker_count=2)
    _assert_same_batches(list(ds), ref)


def _reference_eval(jpeg: bytes) -> np.ndarray:
    """torchvision-style eval preprocessing done the two-step way: resize the short side to SIZE (bicubic),
    centre-crop SIZE, then (x / 255 - mean) / std in float64."""
    img = Image.open(io.BytesIO(jpeg)).convert("RGB")
    w, h = img.size
    s = SIZE / min(w, h)
    img = img.resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - SIZE) // 2, (h - SIZE) // 2
    x = np.asarray(img.crop((left, top, left + SIZE, top + SIZE)), dtype=np.float64) / 255.0
    return (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])


def test_eval_pixels_against_reference(dataset):
    _, _, jpegs = dataset
    for decoder in image_ops.DECODERS:
        batch = next(iter(_make_eval(dataset, batch_size=6, decoder=decoder)))
        for i in range(6):
            ref = _reference_eval(jpegs[i])
            # One-pass box resize vs two-step resize+crop differ by sub-pixel resampling, and the decoders by
            # IDCT rounding: mean error below 1.5 grey levels (0.026 in normalised units, std ~0.225), where a
            # wrong crop, flip or channel order gives > 20 levels.
            err = np.abs(image_ops.normalize(batch["image"][i]) - ref) * 0.226 * 255
            assert err.mean() < 1.5, (decoder, i, err.mean())


def test_tokens_match_tokenizer(dataset):
    _, tok, _ = dataset
    batch = next(iter(_make_eval(dataset, batch_size=6)))
    captions = [f"a photo of a {['red', 'blue', 'green'][i % 3]} digit {i}" for i in range(6)]
    np.testing.assert_array_equal(batch["tokens"], tok(captions))
    np.testing.assert_array_equal(batch["label"], np.arange(6))


def test_normalize_against_float64_on_host_and_in_jit():
    x = np.random.default_rng(0).integers(0, 256, size=(2, 5, 5, 3), dtype=np.uint8)
    ref = (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(image_ops.normalize(x), ref, rtol=0, atol=1e-5)
    on_device = jax.jit(image_ops.normalize)(x)
    assert on_device.dtype == np.float32
    np.testing.assert_allclose(on_device, ref, rtol=0, atol=1e-5)


def test_random_resized_crop_box_distribution():
    rng = np.random.default_rng(0)
    for w, h in [(256, 256), (400, 200), (30, 40)]:
        for _ in range(300):
            l, t, r, b = image_ops.random_resized_crop_box(w, h, rng, (0.5, 1.0))
            assert 0 <= l < r <= w and 0 <= t < b <= h
            area = (r - l) * (b - t) / (w * h)
            # Rounding of the box sides to integers moves the area by at most ~1/side around the bounds.
            assert 0.5 - 2.5 / min(w, h) <= area <= 1.0 + 1e-9
            assert 3 / 4 - 0.1 <= (r - l) / (b - t) <= 4 / 3 + 0.1 or area > 0.9


def test_train_crops_deterministic_and_varied(dataset):
    a = next(iter(_make(dataset, batch_size=8)))["image"]
    b = next(iter(_make(dataset, batch_size=8)))["image"]
    np.testing.assert_array_equal(a, b)
    for decoder in image_ops.DECODERS:  # crops vary: the same record in two epochs is cropped differently
        ds = _make(dataset, batch_size=1, num_epochs=2, decoder=decoder)
        seen = {}
        for batch in ds:
            seen.setdefault(int(batch["label"][0]), []).append(batch["image"][0])
        assert all(len(v) == 2 for v in seen.values())
        assert sum(not np.array_equal(v[0], v[1]) for v in seen.values()) >= N - 2


def test_train_crop_is_a_bicubic_resize_of_the_sampled_box():
    """A training crop is PIL's bicubic resize (image_ops.TRAIN_RESAMPLE), over the box drawn from the same RNG, of
    the fully decoded image (an independent reference: Image.open, convert, resize), with either decoder."""
    rng = np.random.default_rng(0)
    texture = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((64, 64), Image.BICUBIC)
    px = (0.6 * testing.digit_image(7, 64) + 0.4 * np.asarray(texture) + rng.normal(0, 6, (64, 64, 3)))
    jpeg = testing.encode(px.clip(0, 255).astype(np.uint8), quality=95)
    full = Image.open(io.BytesIO(jpeg)).convert("RGB")
    for seed in range(8):
        box = image_ops.random_resized_crop_box(64, 64, np.random.default_rng(seed), (0.5, 1.0))
        want = np.asarray(full.resize((40, 40), Image.Resampling.BICUBIC, box=box))  # 40: no DCT downscale
        for decoder in image_ops.DECODERS:
            got = image_ops.train_crop(jpeg, 40, np.random.default_rng(seed), (0.5, 1.0), decoder, resizer="pil")
            np.testing.assert_array_equal(got, want, err_msg=decoder)


def _smooth_jpeg(side: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    texture = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((side, side), Image.BICUBIC)
    px = (0.6 * testing.digit_image(7, side) + 0.4 * np.asarray(texture) + rng.normal(0, 6, (side, side, 3)))
    return testing.encode(px.clip(0, 255).astype(np.uint8), quality=95)


def _resize_weights(n_in: int, n_out: int, area: bool) -> np.ndarray:
    """[n_out, n_in] float64 weights of OpenCV's resize along one axis: INTER_AREA (each output pixel the mean of
    the source interval [i s, (i + 1) s) it covers) or INTER_CUBIC (Keys' cubic with a = -0.75 at the half-pixel
    centre (i + 0.5) s - 0.5, indices clamped to the edge)."""
    s = n_in / n_out
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        if area:
            lo, hi = i * s, (i + 1) * s
            for j in range(int(np.floor(lo)), min(int(np.ceil(hi)), n_in)):
                w[i, j] = (min(hi, j + 1) - max(lo, j)) / s
        else:
            x = (i + 0.5) * s - 0.5
            x0 = int(np.floor(x))
            for j in range(x0 - 1, x0 + 3):
                d, a = abs(x - j), -0.75
                k = ((a + 2) * d - (a + 3)) * d * d + 1 if d <= 1 else ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
                w[i, min(max(j, 0), n_in - 1)] += k
    return w


def test_opencv_train_crop_against_a_float64_reference():
    """The "opencv" resizer equals a float64 NumPy resize of the same (integer) box, the full decode's pixels, within
    1 grey level (OpenCV's fixed-point rounding): INTER_CUBIC when a side enlarges or both shrink by at most
    AREA_ABOVE, else INTER_AREA (both cases occur below). And it lies within a few grey levels of PIL's bicubic."""
    jpeg = _smooth_jpeg(64)
    full = Image.open(io.BytesIO(jpeg)).convert("RGB")
    kinds = set()
    for seed in range(12):
        left, top, right, bottom = box = image_ops.random_resized_crop_box(64, 64, np.random.default_rng(seed),
                                                                          (0.5, 1.0))
        crop = np.asarray(full, np.float64)[top:bottom, left:right]
        area = min(right - left, bottom - top) / 40 > image_ops.AREA_ABOVE
        kinds.add(area)
        wy, wx = _resize_weights(bottom - top, 40, area), _resize_weights(right - left, 40, area)
        want = np.einsum("ij,jkc,lk->ilc", wy, crop, wx)
        pil = np.asarray(full.resize((40, 40), Image.Resampling.BICUBIC, box=box), np.float64)
        for decoder in image_ops.DECODERS:
            got = image_ops.train_crop(jpeg, 40, np.random.default_rng(seed), (0.5, 1.0), decoder, resizer="opencv")
            assert got.shape == (40, 40, 3) and got.dtype == np.uint8
            assert np.abs(got - want.clip(0, 255)).max() <= 1.0, (decoder, seed, area)
            assert np.abs(got - pil).mean() < 2.0, (decoder, seed, area)  # grey levels; measured < 1
    assert kinds == {False, True}


@pytest.mark.parametrize("mode,fmt", [("L", "JPEG"), ("L", "PNG"), ("RGBA", "PNG"), ("P", "PNG")])  # JPEG: no alpha
def test_opencv_train_crop_of_grey_and_rgba_images(mode, fmt):
    """Grey, RGBA and palette images (records hold RGB JPEGs, but the crop takes any image PIL reads) come out as
    RGB, equal to the crop of the image converted to RGB, with either decoder."""
    rgb = Image.open(io.BytesIO(_smooth_jpeg(48))).convert("RGB")
    img = rgb.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, quality=95) if fmt == "JPEG" else img.save(buf, fmt)
    data = buf.getvalue()
    want_rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    for decoder in image_ops.DECODERS:
        got = image_ops.train_crop(data, 32, np.random.default_rng(1), (0.5, 1.0), decoder, resizer="opencv")
        box = image_ops.random_resized_crop_box(48, 48, np.random.default_rng(1), (0.5, 1.0))
        assert got.shape == (32, 32, 3) and got.dtype == np.uint8, decoder
        # A JPEG's grey-to-RGB conversion may differ by a rounding between libjpeg and PIL.
        np.testing.assert_allclose(got, image_ops._opencv_resize_box(want_rgb, box, 32), atol=1, err_msg=decoder)


def test_opencv_resizer_in_the_pipeline(dataset):
    """Training batches keep their layout with the "opencv" resizer (views too), their crops are those of the same
    boxes as with "pil" (within a few grey levels), and an unknown resizer is refused."""
    a = next(iter(_make(dataset, batch_size=8, resizer="pil")))
    b = next(iter(_make(dataset, batch_size=8, resizer="opencv")))
    assert {k: (v.shape, v.dtype) for k, v in a.items()} == {k: (v.shape, v.dtype) for k, v in b.items()}
    np.testing.assert_array_equal(a["label"], b["label"])
    assert np.abs(a["image"].astype(np.float64) - b["image"]).mean() < 3.0
    views = next(iter(_make(dataset, batch_size=4, resizer="opencv", views=image_ops.ViewAugment())))
    assert views["image2"].shape == views["image"].shape == (4, SIZE, SIZE, 3) and views["image2"].dtype == np.uint8
    with pytest.raises(ValueError, match="resizer 'cv3' unknown"):
        _make(dataset, resizer="cv3")
    with pytest.raises(ValueError, match="resizer 'cv3' unknown"):
        image_ops.train_crop(dataset[2][0], SIZE, np.random.default_rng(0), resizer="cv3")


def test_dct_downscale_matches_full_decode():
    """A large JPEG cropped with DCT-domain downscaling stays close to the full-resolution decode."""
    big = np.asarray(Image.fromarray(testing.digit_image(5, 512)).filter(__import__("PIL.ImageFilter").ImageFilter.SMOOTH))
    jpeg = testing.encode(big, quality=95)
    ref = np.asarray(Image.fromarray(big).resize((64, 64), Image.Resampling.BICUBIC), dtype=np.float64)
    for decoder in image_ops.DECODERS:
        got = image_ops.eval_crop(jpeg, 64, decoder).astype(np.float64)
        assert np.abs(got - ref).mean() < 2.0, decoder  # grey levels; a misplaced box gives > 20


def test_bad_inputs_name_the_path(dataset, tmp_path):
    _, tok, _ = dataset
    options = pipeline.TrainDataOptions(tokenizer=tok, image_size=SIZE, batch_size=2, seed=0)
    with pytest.raises(records.ManifestError, match=str(tmp_path / "nope" / "manifest.json")):
        pipeline.make_train_dataset(str(tmp_path / "nope"), options)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text(json.dumps({"format": "wpce_jax.records", "schema_version": 999,
                                                   "shards": []}))
    with pytest.raises(records.ManifestError, match="schema_version 999.*expected"):
        pipeline.make_train_dataset(str(bad), options)
    gone = tmp_path / "gone"
    records.write_dataset([records.encode_record(b"\xff\xd8x", "c", key="0", source="t")] * 3, str(gone), 2)
    os.remove(gone / records.shard_name(1, 2))
    with pytest.raises(records.ManifestError, match=records.shard_name(1, 2) + ".*missing"):
        pipeline.make_train_dataset(str(gone), options)


# ------------------------------------------------------------------------------------ label tuples (ranking modes)

def _tuple_set(path, labels_of) -> str:
    """12 records in 2 shards of 6; record i's header "labels" is labels_of(i) (left out when None)."""
    recs = []
    for i in range(12):
        extra = {} if labels_of(i) is None else {"labels": labels_of(i)}
        recs.append(records.encode_record(testing.encode(testing.digit_image(i, 32)), f"a photo of a red digit {i}",
                                          key=str(i), source="test", label=i, **extra))
    records.write_dataset(recs, str(path), 2, inputs=["test"])
    return str(path)


def _epoch(data_dir, tok, **kw):
    options = pipeline.TrainDataOptions(tokenizer=tok, image_size=SIZE, batch_size=4, seed=0, num_epochs=1, **kw)
    return list(pipeline.make_train_dataset(data_dir, options))


def test_label_tuples_are_read_when_asked(dataset, tmp_path):
    tok = dataset[1]
    data_dir = _tuple_set(tmp_path / "ok", lambda i: [i % 10, i % 3])
    batches = _epoch(data_dir, tok, label_tuples=True)
    for b in batches:
        assert b["labels"].dtype == np.int32
        np.testing.assert_array_equal(b["labels"], np.stack([b["label"] % 10, b["label"] % 3], axis=1))
    assert "labels" not in _epoch(data_dir, tok)[0]
    # A set that mixes records with and without tuples trains where the tuples are not read.
    mixed = _tuple_set(tmp_path / "mixed", lambda i: None if i == 8 else [i % 10, i % 3])
    assert sum(len(b["label"]) for b in _epoch(mixed, tok)) == 12


@pytest.mark.parametrize("worker_count", [0, 2])
@pytest.mark.parametrize("bad, match", [
    (None, 'training record 2 has no "labels" field .the set\'s first record has one of length 2'),
    ([1, 2, 3], 'training record 2 has "labels" of length 3 .\\[1, 2, 3\\]., the set\'s first record has length 2'),
    (["a", 1], 'training record 2 has "labels" \\["a", 1\\], not a list of ints')])
def test_a_record_without_its_label_tuple_is_named(dataset, tmp_path, bad, match, worker_count):
    # Record 8 of the set is record 2 of its second shard: the error names that file and that index, one line, and
    # reaches the caller as itself from a grain worker process too.
    data_dir = _tuple_set(tmp_path / "mixed", lambda i: bad if i == 8 else [i % 10, i % 3])
    with pytest.raises(pipeline.LabelTupleError, match=records.shard_name(1, 2) + ": " + match) as e:
        _epoch(data_dir, dataset[1], label_tuples=True, worker_count=worker_count)
    assert isinstance(e.value, DataError) and "\n" not in str(e.value)
    assert "ranking modes need a label tuple of the same length in every training record" in str(e.value)


def test_a_set_without_label_tuples_stops_at_start_up(dataset, tmp_path):
    data_dir = _tuple_set(tmp_path / "none", lambda i: None)
    with pytest.raises(pipeline.LabelTupleError, match=records.shard_name(0, 2) + ': training record 0 has no "labels"'):
        pipeline.make_train_dataset(data_dir, pipeline.TrainDataOptions(tokenizer=dataset[1], image_size=SIZE,
                                                                        batch_size=4, seed=0, label_tuples=True))
