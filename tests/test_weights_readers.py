"""wpce_jax.weights against files torch 2.13 / safetensors wrote (tests/reference/make_torch_file_refs.py), bit for
bit, without torch; hostile and damaged files refused; the CLIP BPE tokenizer against the release's SimpleTokenizer."""

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from wpce_jax.data import tokenizers
from wpce_jax.errors import UserError
from wpce_jax.weights import UnsafePickleError, WeightsFileError, load_safetensors, load_torch_file

REF = os.path.join(os.path.dirname(__file__), "reference")
FILES = os.path.join(REF, "torch_files")


@pytest.fixture(scope="module")
def expected():
    with open(os.path.join(FILES, "expected.json")) as f:
        tree = json.load(f)
    with np.load(os.path.join(FILES, "expected.npz")) as z:
        arrays = dict(z)
    return tree, arrays


def _assert_same(got, want, arrays, path="root"):
    """Exact equality of a loaded tree with the expected one; arrays bit for bit, dtype and shape included."""
    if isinstance(want, dict) and "__array__" in want:
        assert isinstance(got, np.ndarray), (path, type(got))
        assert got.dtype.name == want["dtype"], (path, got.dtype)
        bits = arrays[want["__array__"]]
        assert got.shape == bits.shape, (path, got.shape, bits.shape)
        assert got.flags.c_contiguous and got.flags.writeable, path
        np.testing.assert_array_equal(got.view(bits.dtype) if got.size else got.astype(bits.dtype), bits,
                                      err_msg=path)
    elif isinstance(want, dict) and "__tuple__" in want:
        assert isinstance(got, tuple), path
        assert len(got) == len(want["__tuple__"]), path
        for i, (g, w) in enumerate(zip(got, want["__tuple__"])):
            _assert_same(g, w, arrays, f"{path}/{i}")
    elif isinstance(want, dict):
        items = want["__items__"] if "__items__" in want else list(want.items())
        assert type(got) is dict, (path, type(got))
        assert list(got) == [k for k, _ in items], path
        for k, w in items:
            _assert_same(got[k], w, arrays, f"{path}/{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, arrays, f"{path}/{i}")
    else:
        assert type(got) is type(want) and got == want, (path, got, want)


@pytest.mark.parametrize("name", ["checkpoint.pt", "new_dtypes.pt", "big_endian.pt"])
def test_torch_files_bit_exact(name, expected):
    tree, arrays = expected
    _assert_same(load_torch_file(os.path.join(FILES, name)), tree[name], arrays, name)


def test_checkpoint_views_are_copies():
    sd = load_torch_file(os.path.join(FILES, "checkpoint.pt"))["state_dict"]
    # view.sliced and view.transposed share view.base's storage in the file; here each owns its memory.
    np.testing.assert_array_equal(sd["view.sliced"], sd["view.base"][1:3, 2:5])
    np.testing.assert_array_equal(sd["view.transposed"].T, sd["view.base"])
    assert not np.shares_memory(sd["view.sliced"], sd["view.base"])
    assert sd["dtype.bfloat16"].dtype.name == "bfloat16" and sd["view.expanded"].strides == (16, 4)


def test_safetensors_bit_exact(expected):
    tree, arrays = expected
    want = tree["weights.safetensors"]
    got = load_safetensors(os.path.join(FILES, "weights.safetensors"))
    assert sorted(got) == sorted(want)  # the file orders tensors by dtype size, not as they were given
    _assert_same({k: got[k] for k in want}, want, arrays, "weights.safetensors")


class _Pwned:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def _torch_zip(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")


def test_pickle_naming_os_system_is_refused(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    _torch_zip(path, pickle.dumps({"state_dict": {}, "x": _Pwned(sentinel)}, protocol=2))
    assert b"system" in path.read_bytes()
    with pytest.raises(UnsafePickleError, match=r"refusing to load .*evil\.pt: the pickle names "
                                                r"(posix|os|nt)\.system, which is not a tensor or plain data"):
        load_torch_file(str(path))
    assert not sentinel.exists()
    assert issubclass(UnsafePickleError, UserError)


@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("builtins", "getattr"), ("torch", "load"),
                                          ("subprocess", "Popen"), ("omegaconf", "OmegaConf")])
def test_other_globals_are_refused(tmp_path, module, name):
    path = tmp_path / "g.pt"
    # Protocol 2 by hand: GLOBAL module name, an argument tuple, REDUCE, STOP.
    _torch_zip(path, b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X\x01\x00\x00\x00x\x85R.")
    with pytest.raises(UnsafePickleError, match=f"names {module}.{name},"):
        load_torch_file(str(path))


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"not a zip at all"), "is not a torch.save zip file or is truncated"),
    (lambda p: p.write_bytes(open(os.path.join(FILES, "checkpoint.pt"), "rb").read()[:5000]),
     "is not a torch.save zip file or is truncated"),
    (lambda p: p.write_bytes(open(os.path.join(FILES, "legacy.pt"), "rb").read()), "legacy .*pre-1.6"),
    (lambda p: p.write_bytes(open(os.path.join(FILES, "torchscript.pt"), "rb").read()),
     "TorchScript archive .*open_clip's .bin or .safetensors"),
    (lambda p: None, "no such weights file"),
])
def test_bad_torch_files_name_the_path(tmp_path, make, message):
    path = tmp_path / "bad.pt"
    make(path)
    with pytest.raises(WeightsFileError, match=f"bad\\.pt.*{message}"):
        load_torch_file(str(path))


def test_storage_too_small_is_refused(tmp_path):
    src = zipfile.ZipFile(os.path.join(FILES, "big_endian.pt"))
    path = tmp_path / "short.pt"
    with zipfile.ZipFile(path, "w") as z:
        for info in src.infolist():
            data = src.read(info)
            z.writestr(info.filename, data[:4] if info.filename.endswith("/data/0") else data)
    with pytest.raises(WeightsFileError, match=r"does not fit its storage of 1 float32"):
        load_torch_file(str(path))


@pytest.mark.parametrize("cut", [0, 7, 100, 300])
def test_bad_safetensors_name_the_path(tmp_path, cut):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(open(os.path.join(FILES, "weights.safetensors"), "rb").read()[:cut])
    with pytest.raises(WeightsFileError, match=r"bad\.safetensors is not a safetensors file or is truncated"):
        load_safetensors(str(path))


# ------------------------------------------------------------------------ CLIP BPE against the release


@pytest.fixture(scope="module")
def release_tokens():
    with open(os.path.join(FILES, "tokenizer_captions.json")) as f:
        captions = json.load(f)
    with np.load(os.path.join(FILES, "tokenizer_ids.npz")) as z:
        ids = dict(z)
    encoded = np.split(ids["encode_flat"], np.cumsum(ids["encode_lengths"])[:-1])
    return captions, encoded, ids


@pytest.fixture(scope="module")
def clip_bpe():
    return tokenizers.get_tokenizer("clip_bpe", os.path.join(REF, "bpe_simple_vocab_16e6.txt.gz"), 77)


def test_clip_bpe_encode_matches_release(clip_bpe, release_tokens):
    captions, encoded, _ = release_tokens
    assert len(captions) > 300 and "caf\u00c3\u00a9 (mojibake)" in captions  # ftfy repairs it to "café"
    diff = [(c, clip_bpe.encode(c), e.tolist()) for c, e in zip(captions, encoded) if clip_bpe.encode(c) != e.tolist()]
    assert not diff, f"{len(diff)} captions differ, e.g. {diff[:3]}"


def test_clip_bpe_rows_match_clip_tokenize_truncate(clip_bpe, release_tokens):
    captions, _, ids = release_tokens
    rows = clip_bpe(captions)
    assert (ids["encode_lengths"] > 75).sum() >= 10  # over-long captions are part of the golden set
    np.testing.assert_array_equal(rows, ids["tokenize_77_truncate"])
    # The release's own __call__ cuts at 77 and so loses the end token of long captions; ours keeps it, as
    # clip.tokenize(truncate=True) does. Everywhere else the two agree.
    short = ids["encode_lengths"] <= 75
    np.testing.assert_array_equal(rows[short], ids["release_call_77"][short])
    assert (ids["release_call_77"][ids["encode_lengths"] > 75] == clip_bpe.eot_id).sum() == 0
