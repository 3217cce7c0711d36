"""Trains a SentencePiece model on the captions of a converted dataset.

    python -m wpce_jax.data.train_tokenizer --data DIR --output PREFIX --vocab_size V [--max_captions N]

writes PREFIX.model and PREFIX.vocab. The model has pad=0, unk=1, bos=2 (start of text), eos=3 (end of text),
lower-cases through NFKC case folding (as CLIP lower-cases), and covers every character seen.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from typing import Iterable, Iterator

import numpy as np
from array_record.python import array_record_module

from wpce_jax.data import records
from wpce_jax.errors import ConfigError, DataError, UserError


def iter_captions(data_dir: str, max_captions: int | None = None, seed: int = 0) -> Iterator[str]:
    """Captions of a converted dataset; with max_captions, an evenly spread deterministic sample of them."""
    manifest = records.read_manifest(data_dir)
    paths = records.shard_paths(data_dir, manifest)
    total = int(manifest["num_examples"])
    keep = None
    if max_captions is not None and max_captions < total:
        keep = np.zeros(total, dtype=bool)
        keep[np.random.default_rng(seed).choice(total, size=max_captions, replace=False)] = True
    index = 0
    for path in paths:
        reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:16777216")
        try:
            n = reader.num_records()
            for start in range(0, n, 1024):  # read in blocks: one call per record is slow on large shards
                for b in reader.read(start, min(start + 1024, n)):
                    if keep is None or keep[index]:
                        yield records.decode_header(b)[0]["caption"]
                    index += 1
        finally:
            reader.close()


_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")
_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")


def train_sentencepiece(captions: Iterable[str], output_prefix: str, vocab_size: int,
                        *, model_type: str = "unigram") -> str:
    """Trains a SentencePiece model on captions and returns the path of the .model file.

    A small corpus cannot support a large vocabulary and SentencePiece refuses it; then the vocabulary is
    shrunk to the largest size the corpus supports, so tiny built-in datasets work with any request.
    """
    import sentencepiece as spm

    if vocab_size < 8:
        raise ConfigError(f"vocab_size must be >= 8 (4 special symbols plus pieces), got {vocab_size}")
    out_dir = os.path.dirname(os.path.abspath(output_prefix))
    os.makedirs(out_dir, exist_ok=True)
    # Written to a file once so that a retry with a smaller vocabulary reads the same corpus.
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", dir=out_dir, delete=False) as f:
        corpus = f.name
        n = 0
        for c in captions:
            c = " ".join(c.split())
            if c:
                f.write(c + "\n")
                n += 1
    try:
        if n == 0:
            raise DataError("no non-empty captions to train a SentencePiece model on")
        size = vocab_size
        while True:
            try:
                spm.SentencePieceTrainer.Train(
                    input=corpus, model_prefix=output_prefix, vocab_size=size, model_type=model_type,
                    character_coverage=1.0, normalization_rule_name="nmt_nfkc_cf",
                    pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                    input_sentence_size=2_000_000, shuffle_input_sentence=True,
                    num_threads=max(1, os.cpu_count() or 1), minloglevel=2)
                break
            except RuntimeError as e:
                small = _TOO_SMALL.search(str(e))
                if small:
                    raise ConfigError(
                        f"vocab_size {size} cannot hold the {int(small.group(2)) - 4} distinct characters of "
                        f"the captions plus 4 special symbols; ask for at least {small.group(2)}") from None
                m = _TOO_HIGH.search(str(e))
                if not m or int(m.group(2)) >= size:
                    raise
                size = int(m.group(2))
    finally:
        os.remove(corpus)
    return output_prefix + ".model"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="converted dataset directory (holds manifest.json)")
    p.add_argument("--output", required=True, help="output prefix: writes PREFIX.model and PREFIX.vocab")
    p.add_argument("--vocab_size", type=int, required=True, help="requested number of pieces")
    p.add_argument("--max_captions", type=int, default=2_000_000,
                   help="train on a deterministic sample of at most this many captions")
    p.add_argument("--model_type", default="unigram", choices=["unigram", "bpe"])
    args = p.parse_args(argv)
    try:
        path = train_sentencepiece(iter_captions(args.data, args.max_captions), args.output, args.vocab_size,
                                   model_type=args.model_type)
    except UserError as e:  # a --vocab_size the captions cannot fill, no captions, a dataset without a manifest
        print(f"error: {e}", file=sys.stderr)
        return 1
    import sentencepiece as spm
    size = spm.SentencePieceProcessor(model_file=path).get_piece_size()
    print(f"wrote {path} with {size} pieces"
          + (f" (requested {args.vocab_size}; the corpus supports no more)" if size != args.vocab_size else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
