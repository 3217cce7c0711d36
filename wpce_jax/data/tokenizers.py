"""Text tokenizers with one interface: CLIP's byte-level BPE and SentencePiece.

Both return fixed-length int32 rows ``[sot, t_1, ..., t_k, eot, pad, ..., pad]`` of ``context_length`` tokens.
Truncation drops text tokens, never the end token: the text tower takes the first position holding ``eot_id``
as the end of the text, so ``eot_id`` appears exactly once per row and never inside the text.

Objects are picklable (grain worker processes receive them by pickle) and hold no file handles.
"""

from __future__ import annotations

import functools
import gzip
import html
from typing import Iterable, Sequence

import ftfy
import numpy as np
import regex
from etils import epath

from wpce_jax.errors import DataError, MissingInputError


class Tokenizer:
    """Interface: vocab_size, sot_id, eot_id, pad_id, context_length, and __call__(texts) -> int32 [N, L]."""

    vocab_size: int  # number of token ids; the text embedding table holds at least this many rows
    sot_id: int
    eot_id: int
    pad_id: int
    context_length: int

    def encode(self, text: str) -> list[int]:
        """Text token ids of one string, without start/end tokens and without truncation."""
        raise NotImplementedError

    def piece(self, token_id: int) -> str:
        """The vocabulary entry of one id as the tokenizer writes it (SentencePiece pieces keep their word-start
        mark "▁", CLIP BPE symbols their "</w>"): what a text point stands for."""
        raise NotImplementedError

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Tokenizes a batch.

        Args:
          texts: N strings (a single str is treated as a batch of one).
        Returns:
          int32 [N, context_length]: [sot, text..., eot, pad...]; text truncated to context_length - 2 tokens.
        """
        if isinstance(texts, str):
            texts = [texts]
        out = np.full((len(texts), self.context_length), self.pad_id, dtype=np.int32)
        room = self.context_length - 2
        for i, t in enumerate(texts):
            ids = self.encode(t)[:room]
            out[i, 0] = self.sot_id
            out[i, 1:1 + len(ids)] = ids
            out[i, 1 + len(ids)] = self.eot_id
        return out


# ------------------------------------------------------------------------------------------------ CLIP BPE

@functools.lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _get_pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(word[:-1], word[1:]))


# CLIP's pre-tokenisation, minus the two special-token alternatives: a caption that spells "<|endoftext|>"
# must become ordinary tokens, or the end-of-text position the model looks for would be wrong.
_CLIP_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# The number of merges CLIP uses from bpe_simple_vocab_16e6.txt.gz (the file holds more lines than that).
_CLIP_NUM_MERGES = 49152 - 256 - 2


class ClipBpeTokenizer(Tokenizer):
    """OpenAI CLIP's tokenizer reading the standard ``bpe_simple_vocab_16e6.txt.gz``.

    The file is gzip text: a version header line, then one merge "a b" per line. Vocabulary: the 256 byte
    symbols, the same with "</w>", one symbol per merge, then <|startoftext|> and <|endoftext|>; with the
    standard file that is 49408 ids. Text is repaired by ftfy.fix_text (mojibake, ligatures,
    character width, curly quotes, control characters), HTML-unescaped twice, whitespace-collapsed and
    lower-cased, as in CLIP's SimpleTokenizer (tests/test_weights_readers.py checks the ids against it).
    """

    def __init__(self, bpe_path: str, context_length: int = 77):
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (start and end tokens), got {context_length}")
        if not epath.Path(bpe_path).is_file():
            raise MissingInputError(
                f"{bpe_path}: CLIP BPE merges file not found (expected bpe_simple_vocab_16e6.txt.gz format)")
        try:
            lines = gzip.decompress(epath.Path(bpe_path).read_bytes()).decode("utf-8").split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise DataError(f"{bpe_path}: not a gzip UTF-8 BPE merges file ({e})") from e
        # Line 0 is the version header; empty trailing lines are not merges.
        merges = [tuple(line.split()) for line in lines[1:_CLIP_NUM_MERGES + 1] if line.strip()]
        bad = [m for m in merges if len(m) != 2]
        if bad:
            raise DataError(f"{bpe_path}: merge lines must hold two symbols, got {' '.join(bad[0])!r}")
        byte_symbols = list(bytes_to_unicode().values())
        vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.vocab_size = len(vocab)
        self.sot_id = self.encoder["<|startoftext|>"]
        self.eot_id = self.encoder["<|endoftext|>"]
        self.pad_id = 0  # as in CLIP; pad positions get their own embeddings in the text tower anyway
        self.context_length = context_length
        self.bpe_path = bpe_path
        self._init_runtime()

    def _init_runtime(self):
        self._byte_encoder = bytes_to_unicode()
        self._pattern = regex.compile(_CLIP_PATTERN, regex.IGNORECASE)
        self._cache: dict[str, str] = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        for k in ("_byte_encoder", "_pattern", "_cache", "_decoder"):
            state.pop(k, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_runtime()

    def _bpe(self, token: str) -> str:
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _get_pairs(word)
        while pairs:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = _get_pairs(word)
        out = " ".join(word)
        if len(self._cache) < 100_000:  # bounded: captions have a long tail of rare words
            self._cache[token] = out
        return out

    @staticmethod
    def clean(text: str) -> str:
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
        return " ".join(text.split()).lower()

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for token in self._pattern.findall(self.clean(text)):
            token = "".join(self._byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(token).split(" "))
        return ids

    @functools.cached_property
    def _decoder(self) -> dict[int, str]:
        return {v: k for k, v in self.encoder.items()}

    def piece(self, token_id: int) -> str:
        return self._decoder[int(token_id)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of text-token ids (specials and pads are the caller's to strip); for debugging and tests."""
        decoder = self._decoder
        byte_decoder = {v: k for k, v in self._byte_encoder.items()}
        words = [decoder[int(i)] for i in ids]
        # Undo the byte map per symbol, keeping each "</w>" end-of-word marker as a space.
        out = bytearray()
        for w in words:
            end = w.endswith("</w>")
            out += bytes(byte_decoder[c] for c in (w[:-4] if end else w)) + (b" " if end else b"")
        return out.decode("utf-8", "replace").strip()


# ------------------------------------------------------------------------------------------- SentencePiece

class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model; start/end/pad are the model's bos/eos/pad ids (control symbols, which never
    come out of encoding raw text, so eot cannot appear inside the text)."""

    def __init__(self, model_path: str, context_length: int = 77):
        import sentencepiece as spm

        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (start and end tokens), got {context_length}")
        if not epath.Path(model_path).is_file():
            raise MissingInputError(f"{model_path}: SentencePiece model not found (expected a .model file)")
        self._proto = epath.Path(model_path).read_bytes()
        self.model_path = model_path
        self.context_length = context_length
        self._load()
        sp = self._sp
        if sp.bos_id() < 0 or sp.eos_id() < 0:
            raise DataError(f"{model_path}: the model has no bos/eos symbols; train it with bos_id and eos_id "
                            f"set (wpce_jax.data.train_tokenizer does)")
        self.vocab_size = int(sp.get_piece_size())
        self.sot_id = int(sp.bos_id())
        self.eot_id = int(sp.eos_id())
        # A model without a pad symbol pads with unk: never read, as the model stops at the first eot.
        self.pad_id = int(sp.pad_id()) if sp.pad_id() >= 0 else int(sp.unk_id())
        del spm

    def _load(self):
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor()
        self._sp.LoadFromSerializedProto(self._proto)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_sp", None)  # the C++ processor does not pickle; the model bytes do
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._load()

    def encode(self, text: str) -> list[int]:
        return list(self._sp.EncodeAsIds(text))

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.DecodeIds([int(i) for i in ids])

    def piece(self, token_id: int) -> str:
        return self._sp.IdToPiece(int(token_id))


def get_tokenizer(kind: str, path: str, context_length: int) -> Tokenizer:
    """The tokenizer named by a config: kind "clip_bpe" (path: bpe_simple_vocab_16e6.txt.gz) or
    "sentencepiece" (path: a .model file)."""
    if kind == "clip_bpe":
        return ClipBpeTokenizer(path, context_length)
    if kind == "sentencepiece":
        return SentencePieceTokenizer(path, context_length)
    raise ValueError(f"tokenizer kind {kind!r} unknown; expected 'clip_bpe' or 'sentencepiece'")
