"""Resolves a config's data fields into the run's training data, tokenizer and zero-shot tasks.

"digits" builds the built-in dataset once (cached) and uses its SentencePiece model and held-out split;
"arrayrecord" reads a converted dataset, the configured tokenizer, and zero-shot sets from `eval.zeroshot`
(name -> a converted, labelled dataset whose directory holds classes.json: {"class_names": [...],
"templates": [...]}). The tokenizer file is copied into the workdir so that a checkpoint is self-contained.
"""
import json
import os
import shutil
from typing import NamedTuple

from ml_collections import ConfigDict

from wpce_jax.data import digits
from wpce_jax.data.records import read_manifest
from wpce_jax.data.tokenizers import get_tokenizer
from wpce_jax.evaluate.zeroshot import ZeroShotTask


class RunData(NamedTuple):
    train_dir: str
    tokenizer: object
    zeroshot: list  # of ZeroShotTask


def default_cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "wpce_jax")


def _zeroshot_task(name: str, data_dir: str) -> ZeroShotTask:
    path = os.path.join(data_dir, "classes.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config field eval.zeroshot.{name}: {path} is missing; it must hold "
                                f'{{"class_names": [...], "templates": ["a photo of a {{}}.", ...]}}')
    with open(path) as f:
        spec = json.load(f)
    return ZeroShotTask(name, data_dir, spec["class_names"], spec["templates"])


def _copy_tokenizer(path: str, target: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.abspath(path) != os.path.abspath(target):
        shutil.copyfile(path, target + ".tmp")
        os.replace(target + ".tmp", target)


def resolve(config: ConfigDict, workdir: str, is_main: bool = True) -> RunData:
    """Prepares the data and fills in config.data.tokenizer(_path) and config.model.text.{vocab_size, eot_id}."""
    d = config.data
    if d.kind == "digits":
        built = digits.prepare(d.cache_dir or default_cache_dir(), image_side=d.image_size)
        train_dir, kind, tok_path = built.train_dir, "sentencepiece", built.tokenizer_path
        tasks = [ZeroShotTask("digits", built.test_dir, built.class_names, built.zeroshot_templates)]
    else:
        train_dir, kind, tok_path = d.train_dir, d.tokenizer, d.tokenizer_path
        if not os.path.exists(tok_path):
            raise FileNotFoundError(f"config field data.tokenizer_path: {tok_path} does not exist")
        read_manifest(train_dir)  # a clear error now rather than in a worker later
        tasks = [_zeroshot_task(name, path) for name, path in config.eval.zeroshot.items()]
    # Each process reads the original; the saved config names process 0's copy in the workdir.
    copy = os.path.join(os.path.abspath(workdir), "tokenizer", os.path.basename(tok_path))
    if is_main:
        _copy_tokenizer(tok_path, copy)
    tokenizer = get_tokenizer(kind, tok_path, config.model.text.context_length)
    with config.unlocked():
        d.tokenizer, d.tokenizer_path = kind, copy
        config.model.text.vocab_size = tokenizer.vocab_size
        config.model.text.eot_id = tokenizer.eot_id
    return RunData(train_dir, tokenizer, tasks)
