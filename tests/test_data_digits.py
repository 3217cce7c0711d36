"""Built-in digits dataset: real sklearn digits, stratified held-out split, captions, tokenizer, caching."""

import io
import multiprocessing as mp
import os

import numpy as np
import pytest
from PIL import Image

from wpce_jax.data import digits, pipeline, records, tokenizers


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return digits.prepare(str(tmp_path_factory.mktemp("cache")), image_side=32)


def _records(d):
    m = records.read_manifest(d)
    return [records.decode_record(b) for p in records.shard_paths(d, m) for b in records.read_records(p)]


def test_split_is_stratified_and_disjoint(data):
    from sklearn.datasets import load_digits

    train, test = _records(data.train_dir), _records(data.test_dir)
    assert (len(train), len(test)) == (data.num_train, data.num_test)
    assert len(train) + len(test) == 1797
    assert not {r["key"] for r in train} & {r["key"] for r in test}
    labels = load_digits().target
    test_labels = np.array([r["label"] for r in test])
    for c in range(10):
        n_c = int((labels == c).sum())
        assert abs(int((test_labels == c).sum()) - 0.2 * n_c) <= 1  # 20% of every class
    assert pipeline.dataset_size(data.train_dir) == len(train)


def test_records_hold_the_digit(data):
    from sklearn.datasets import load_digits

    src = load_digits()
    words = data.class_names
    assert words == ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    templates = set()
    for r in _records(data.test_dir)[:200]:
        y = r["label"]
        i = int(r["key"].split("/")[1])
        assert src.target[i] == y
        assert words[y] in r["caption"].split() or str(y) in r["caption"].replace(",", " ").split(), r["caption"]
        img = Image.open(io.BytesIO(r["image"]))
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (32, 32))
        # Dark ink on white: the 8x8 average of the stored image follows the scan (ink high -> dark).
        small = np.asarray(img.convert("L").resize((8, 8), Image.Resampling.BOX), dtype=np.float64)
        corr = np.corrcoef(small.ravel(), -src.images[i].ravel())[0, 1]
        assert corr > 0.9, (i, corr)
        templates.add(r["caption"].replace(words[y], "W").replace(str(y), "N"))
    assert len(templates) >= 10 and len(digits.CAPTION_TEMPLATES) >= 10
    assert all("{}" in t for t in data.zeroshot_templates)


def test_tokenizer_and_pipeline(data):
    tok = tokenizers.get_tokenizer("sentencepiece", data.tokenizer_path, 16)
    assert 10 < tok.vocab_size <= 128
    for template in data.zeroshot_templates:  # every prompt is made of pieces seen in training
        for name in data.class_names:
            prompt = template.format(name)
            ids = tok.encode(prompt)
            assert 1 not in ids, prompt  # 1 is <unk> in models from train_sentencepiece
            assert tok.decode(ids) == prompt
    batch = next(iter(pipeline.make_train_dataset(data.train_dir, pipeline.TrainDataOptions(
        tokenizer=tok, image_size=32, batch_size=16, seed=0))))
    assert batch["image"].shape == (16, 32, 32, 3) and set(batch["label"].tolist()) <= set(range(10))


def test_cached_and_versioned(data, tmp_path):
    stamp = os.path.join(os.path.dirname(data.train_dir), "DONE.json")
    mtime = os.stat(stamp).st_mtime_ns
    again = digits.prepare(os.path.dirname(os.path.dirname(data.train_dir)), image_side=32)
    assert again == data and os.stat(stamp).st_mtime_ns == mtime
    assert f"v{digits.BUILDER_VERSION}" in data.train_dir


def _prepare_in_child(cache):
    return digits.prepare(cache, image_side=16).train_dir


def test_concurrent_prepare(tmp_path):
    with mp.get_context("spawn").Pool(2) as pool:
        dirs = pool.map(_prepare_in_child, [str(tmp_path)] * 2)
    assert dirs[0] == dirs[1]
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # losers cleaned up
    assert records.read_manifest(dirs[0])["num_examples"] > 1000
