"""A config's data, resolved: the training records, the tokenizer, and the config with what they determine.

"digits" builds the built-in dataset once (cached under data.cache_dir, default $XDG_CACHE_HOME/wpce_jax, i.e.
~/.cache/wpce_jax) and uses its SentencePiece model (its held-out split serves the evaluations that name "digits");
"digit_pairs" builds the built-in graded set of digit pairs the same way (data/digit_pairs.py; its held-out pairs
serve the evaluations that name "digit_pairs"); "arrayrecord" reads a converted dataset and the configured tokenizer. The tokenizer file is copied into the workdir
so that a checkpoint is self-contained. The resolved config (a copy; the input is not changed) names that copy and
carries model.text.vocab_size and eot_id from the tokenizer, with `epochs` set total_steps and optim.warmup_steps
counted from the manifest's num_examples, and optim.schedule_steps (the schedule's horizon: total_steps unless the
config sets it; a resumed run then keeps its checkpoint's, run_record.keep_schedule).
"""
import os
from typing import NamedTuple, Optional

from etils import epath
from ml_collections import ConfigDict

from wpce_jax.config_fields import get as _get
from wpce_jax.data import digit_pairs, digits
from wpce_jax.data.records import read_manifest
from wpce_jax.data.tokenizers import get_tokenizer
from wpce_jax.errors import ConfigError, MissingInputError, WrongPathError
from wpce_jax.paths import is_remote


class RunData(NamedTuple):
    config: ConfigDict                   # the resolved config (what the run trains with and saves)
    train_dir: str
    tokenizer: object
    num_examples: int                    # training records (the manifest's num_examples)
    digits: Optional[digits.DigitsData]  # the built-in dataset, when the run trains on it


def prepare_digits(config: ConfigDict) -> digits.DigitsData:
    """The built-in digits at the config's image size (built once into data.cache_dir)."""
    return digits.prepare(config.data.cache_dir or default_cache_dir(), image_side=config.data.image_size)


def prepare_digit_pairs(config: ConfigDict) -> digit_pairs.DigitPairsData:
    """The built-in digit pairs (32 px; built once into data.cache_dir)."""
    return digit_pairs.prepare(config.data.cache_dir or default_cache_dir())


def default_cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "wpce_jax")


def _copy_tokenizer(path: epath.Path, target: epath.Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if str(path) == str(target):
        return
    if is_remote(target):  # one object, written whole
        path.copy(target, overwrite=True)
        return
    tmp = target.parent / (target.name + ".tmp")
    path.copy(tmp, overwrite=True)
    tmp.replace(target)


def schedule(config: ConfigDict, num_examples: int) -> tuple[int, int]:
    """(total_steps, warmup_steps): from `epochs` and `warmup_epochs` when the config counts in epochs (steps per
    epoch = num_examples // batch_size), else the config's own optim.warmup_steps and total_steps."""
    epochs = _get(config, "epochs", None)
    if epochs is None:
        return config.total_steps, config.optim.warmup_steps
    steps_per_epoch = num_examples // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"config field epochs: the training set's {num_examples} examples fill no batch of "
                          f"batch_size = {config.batch_size}")
    warmup = config.warmup_epochs
    return max(round(epochs * steps_per_epoch), 1), round(warmup * steps_per_epoch)


def with_schedule(config: ConfigDict, num_examples: int) -> ConfigDict:
    """A copy of `config` with total_steps and optim.warmup_steps (`schedule`) and optim.schedule_steps, the
    schedule's horizon: total_steps unless the config sets it."""
    total_steps, warmup_steps = schedule(config, num_examples)
    resolved = config.copy_and_resolve_references()
    with resolved.unlocked():
        resolved.total_steps, resolved.optim.warmup_steps = total_steps, warmup_steps
        resolved.optim.schedule_steps = _get(config, "optim.schedule_steps", None) or total_steps
    return resolved


def resolve(config: ConfigDict, workdir, is_main: bool = True) -> RunData:
    """Prepares the data; returns it with the resolved config (see the module docstring)."""
    d = config.data
    if d.kind == "digits":
        built = prepare_digits(config)
        train_dir, kind, tok_path = built.train_dir, "sentencepiece", built.tokenizer_path
    elif d.kind == "digit_pairs":
        pairs, built = prepare_digit_pairs(config), None
        train_dir, kind, tok_path = pairs.train_dir, "sentencepiece", pairs.tokenizer_path
    else:
        train_dir, kind, tok_path = d.train_dir, d.tokenizer, d.tokenizer_path
        if not epath.Path(tok_path).exists():
            raise MissingInputError(f"config field data.tokenizer_path: {tok_path} does not exist")
        if epath.Path(tok_path).is_dir():
            raise WrongPathError(f"config field data.tokenizer_path: {tok_path} is a directory; name the file "
                                 f"(bpe_simple_vocab_16e6.txt.gz for clip_bpe, a .model file for sentencepiece)")
        built = None
    num_examples = int(read_manifest(train_dir)["num_examples"])  # a clear error now rather than in a worker later
    # Each process reads the original; the saved config names process 0's copy in the workdir.
    copy = epath.Path(workdir) / "tokenizer" / epath.Path(tok_path).name
    if is_main:
        _copy_tokenizer(epath.Path(tok_path), copy)
    tokenizer = get_tokenizer(kind, tok_path, config.model.text.context_length)
    resolved = with_schedule(config, num_examples)
    with resolved.unlocked():
        resolved.data.tokenizer, resolved.data.tokenizer_path = kind, os.fspath(copy)
        resolved.model.text.vocab_size = tokenizer.vocab_size
        resolved.model.text.eot_id = tokenizer.eot_id
    return RunData(resolved, train_dir, tokenizer, num_examples, built)
