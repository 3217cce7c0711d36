"""Resolves a config's data fields into the run's training data and tokenizer.

"digits" builds the built-in dataset once (cached) and uses its SentencePiece model (its held-out split serves
the evaluations that name "digits"); "arrayrecord" reads a converted dataset and the configured tokenizer. The
tokenizer file is copied into the workdir so that a checkpoint is self-contained.
"""
import os
import shutil
from typing import NamedTuple, Optional

from ml_collections import ConfigDict

from wpce_jax.data import digits
from wpce_jax.data.records import read_manifest
from wpce_jax.data.tokenizers import get_tokenizer


class RunData(NamedTuple):
    train_dir: str
    tokenizer: object
    digits: Optional[digits.DigitsData]  # the built-in dataset, when the run trains on it


def prepare_digits(config: ConfigDict) -> digits.DigitsData:
    """The built-in digits at the config's image size (built once into data.cache_dir)."""
    return digits.prepare(config.data.cache_dir or default_cache_dir(), image_side=config.data.image_size)


def default_cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "wpce_jax")


def _copy_tokenizer(path: str, target: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.abspath(path) != os.path.abspath(target):
        shutil.copyfile(path, target + ".tmp")
        os.replace(target + ".tmp", target)


def resolve(config: ConfigDict, workdir: str, is_main: bool = True) -> RunData:
    """Prepares the data and fills in config.data.tokenizer(_path) and config.model.text.{vocab_size, eot_id}."""
    d = config.data
    if d.kind == "digits":
        built = prepare_digits(config)
        train_dir, kind, tok_path = built.train_dir, "sentencepiece", built.tokenizer_path
    else:
        train_dir, kind, tok_path = d.train_dir, d.tokenizer, d.tokenizer_path
        if not os.path.exists(tok_path):
            raise FileNotFoundError(f"config field data.tokenizer_path: {tok_path} does not exist")
        read_manifest(train_dir)  # a clear error now rather than in a worker later
        built = None
    # Each process reads the original; the saved config names process 0's copy in the workdir.
    copy = os.path.join(os.path.abspath(workdir), "tokenizer", os.path.basename(tok_path))
    if is_main:
        _copy_tokenizer(tok_path, copy)
    tokenizer = get_tokenizer(kind, tok_path, config.model.text.context_length)
    with config.unlocked():
        d.tokenizer, d.tokenizer_path = kind, copy
        config.model.text.vocab_size = tokenizer.vocab_size
        config.model.text.eot_id = tokenizer.eot_id
    return RunData(train_dir, tokenizer, built)
