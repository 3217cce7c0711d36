"""Tokenizers on known strings: CLIP BPE from a hand-made merges file in the standard format, SentencePiece
trained here on a small corpus."""

import gzip
import pickle
import subprocess
import sys

import numpy as np
import pytest

from wpce_jax.data import records, tokenizers
from wpce_jax.data.train_tokenizer import train_sentencepiece

# bpe_simple_vocab_16e6.txt.gz format: gzip text, a version header line, then one "a b" merge per line.
MERGES = ["h e", "l l", "he ll", "hell o</w>", "w o", "wo r", "wor l", "worl d</w>"]


@pytest.fixture(scope="module")
def bpe_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("bpe") / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    return str(path)


# Ids computed by hand from CLIP's layout: byte symbols in bytes_to_unicode order ("!".."~" are 0..93,
# "\xa1".."\xac" 94..105, "\xae".."\xff" 106..187, the rest after), then the same + "</w>" (+256),
# then one id per merge (512 + rank), then <|startoftext|>, <|endoftext|>.
SOT, EOT = 512 + len(MERGES), 512 + len(MERGES) + 1
HELLO, WORLD = 512 + 3, 512 + 7
BANG_W = 256 + (ord("!") - 33)


def _byte(c):
    return ord(c) - 33


def test_clip_bpe_known_strings(bpe_path):
    tok = tokenizers.get_tokenizer("clip_bpe", bpe_path, 10)
    assert tok.vocab_size == 512 + len(MERGES) + 2
    assert (tok.sot_id, tok.eot_id, tok.pad_id, tok.context_length) == (SOT, EOT, 0, 10)
    out = tok(["Hello   World!", "low", "é", ""])
    assert out.dtype == np.int32 and out.shape == (4, 10)
    np.testing.assert_array_equal(out[0], [SOT, HELLO, WORLD, BANG_W, EOT, 0, 0, 0, 0, 0])
    # No merge applies: l, o, w</w>.
    np.testing.assert_array_equal(out[1, :5], [SOT, _byte("l"), _byte("o"), 256 + _byte("w"), EOT])
    # "é" is UTF-8 c3 a9: byte 0xc3 -> 106 + (0xc3 - 0xae), byte 0xa9 -> 94 + (0xa9 - 0xa1), last gets </w>.
    np.testing.assert_array_equal(out[2, :4], [SOT, 106 + 0xC3 - 0xAE, 256 + 94 + 0xA9 - 0xA1, EOT])
    np.testing.assert_array_equal(out[3, :3], [SOT, EOT, 0])
    assert tok.decode([HELLO, WORLD, BANG_W]) == "hello world !"


def test_clip_bpe_truncation_keeps_eot(bpe_path):
    tok = tokenizers.get_tokenizer("clip_bpe", bpe_path, 5)
    np.testing.assert_array_equal(tok(["hello world hello world"])[0], [SOT, HELLO, WORLD, HELLO, EOT])


def test_clip_bpe_special_text_is_not_special(bpe_path):
    tok = tokenizers.get_tokenizer("clip_bpe", bpe_path, 77)
    row = tok(["a <|endoftext|> b <|startoftext|>"])[0]
    assert (row == EOT).sum() == 1 and (row == SOT).sum() == 1
    assert row[0] == SOT and np.argmax(row == EOT) == 1 + len(tok.encode("a <|endoftext|> b <|startoftext|>"))


def test_clip_bpe_pickles(bpe_path):
    tok = tokenizers.get_tokenizer("clip_bpe", bpe_path, 16)
    texts = ["hello world", "Wörld wide"]
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(tok))(texts), tok(texts))


def test_clip_bpe_bad_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt.gz"):
        tokenizers.get_tokenizer("clip_bpe", str(tmp_path / "missing.txt.gz"), 77)
    p = tmp_path / "plain.txt"
    p.write_text("not gzip")
    with pytest.raises(ValueError, match="plain.txt"):
        tokenizers.get_tokenizer("clip_bpe", str(p), 77)
    with pytest.raises(ValueError, match="unknown"):
        tokenizers.get_tokenizer("wordpiece", str(p), 77)


CORPUS = [f"a photo of a {c} {n}" for c in ("red", "green", "blue", "small", "large")
          for n in ("cat", "dog", "car", "house", "tree", "bird")] * 5


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    return train_sentencepiece(CORPUS, str(tmp_path_factory.mktemp("sp") / "spm"), vocab_size=24)


def test_sentencepiece_interface(sp_model):
    tok = tokenizers.get_tokenizer("sentencepiece", sp_model, 40)
    assert (tok.pad_id, tok.sot_id, tok.eot_id) == (0, 2, 3) and tok.vocab_size == 24
    out = tok(["A photo of a RED cat", "a blue house", "a photo of a large green tree " * 8])
    assert out.shape == (3, 40) and out.dtype == np.int32
    for row in out:
        assert row[0] == tok.sot_id and (row == tok.eot_id).sum() == 1
        end = int(np.argmax(row == tok.eot_id))
        assert (row[end + 1:] == tok.pad_id).all() and (row[1:end] > 3).all()
    assert out[2, -1] == tok.eot_id  # truncated, end token kept
    # Lower-cased (NFKC case folding) and invertible on the training vocabulary.
    assert tok.decode(out[0, 1:int(np.argmax(out[0] == tok.eot_id))]) == "a photo of a red cat"
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(tok))(["a red dog"]), tok(["a red dog"]))


def test_sentencepiece_vocab_too_large_is_shrunk(tmp_path):
    path = train_sentencepiece(CORPUS, str(tmp_path / "big"), vocab_size=5000)
    tok = tokenizers.get_tokenizer("sentencepiece", path, 8)
    assert 8 < tok.vocab_size < 5000
    assert tok(["a red cat"])[0, 0] == 2


def test_sentencepiece_vocab_too_small_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="at least 2[0-9]"):
        train_sentencepiece(CORPUS, str(tmp_path / "tiny"), vocab_size=10)


def test_train_tokenizer_cli(tmp_path):
    from wpce_jax.data import testing

    recs = [records.encode_record(testing.encode(testing.digit_image(i, 8)), c, key=str(i), source="t")
            for i, c in enumerate(CORPUS)]
    records.write_dataset(recs, str(tmp_path / "ds"), 2, inputs=["t"])
    proc = subprocess.run([sys.executable, "-m", "wpce_jax.data.train_tokenizer", "--data", str(tmp_path / "ds"),
                           "--output", str(tmp_path / "cli"), "--vocab_size", "27"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    tok = tokenizers.get_tokenizer("sentencepiece", str(tmp_path / "cli.model"), 10)
    assert tok.vocab_size == 27
    assert tok.decode(tok.encode("a small bird")) == "a small bird"
