"""A config's data, resolved: the training records, the tokenizer, and the run plan they determine.

"digits" builds the built-in dataset once (cached under data.cache_dir, default $XDG_CACHE_HOME/wpce_jax, i.e.
~/.cache/wpce_jax) and uses its SentencePiece model (its held-out split serves the evaluations that name "digits");
"digit_pairs" builds the built-in graded set of digit pairs the same way (data/digit_pairs.py; its held-out pairs
serve the evaluations that name "digit_pairs"); "arrayrecord" reads a converted dataset and the configured tokenizer. The tokenizer file is copied into the workdir
so that a checkpoint is self-contained.

What the data determines is the run's plan (`RunPlan`, frozen): the tokenizer's kind, copy, vocabulary size and
end-of-text id; the manifest's num_examples and, with `epochs`, the step counts (total_steps and optim.warmup_steps
counted from it); optim.schedule_steps (the schedule's horizon: total_steps unless the config sets it; a resumed
run then keeps its checkpoint's, run_record.keep_schedule). The user's config is not changed; the resolved config
(`RunPlan.applied`, a copy) is the user's with the plan written into its fields, which is what the model and
optimiser builders read. Every checkpoint stores the resolved config and the plan (a resumed run's must agree:
run_record.check_resume, check_plan); DIR/config.json records the user's config, the resolved one and the plan.
"""
import dataclasses
import os
from typing import NamedTuple, Optional

from etils import epath
from ml_collections import ConfigDict

from wpce_jax.config_fields import get as _get, set_field
from wpce_jax.data import digit_pairs, digits
from wpce_jax.data.records import read_manifest
from wpce_jax.data.tokenizers import get_tokenizer
from wpce_jax.errors import ConfigError, MissingInputError, WrongPathError
from wpce_jax.paths import is_remote


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a run derives from its config and data when it starts (module docstring)."""
    train_dir: str
    num_examples: int               # training records (the manifest's num_examples)
    steps_per_epoch: Optional[int]  # num_examples // batch_size when the config counts in epochs, else None
    total_steps: int
    warmup_steps: int
    schedule_steps: int             # the learning-rate schedule's horizon
    tokenizer: str                  # "clip_bpe" | "sentencepiece"
    tokenizer_path: str             # the copy in the workdir
    vocab_size: int
    eot_id: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def applied(self, config: ConfigDict) -> ConfigDict:
        """A copy of `config` with the plan in its fields (the resolved config)."""
        return _written(config, {"total_steps": self.total_steps, "optim.warmup_steps": self.warmup_steps,
                                 "optim.schedule_steps": self.schedule_steps, "data.tokenizer": self.tokenizer,
                                 "data.tokenizer_path": self.tokenizer_path, "model.text.vocab_size": self.vocab_size,
                                 "model.text.eot_id": self.eot_id})


def _written(config: ConfigDict, fields: dict) -> ConfigDict:
    """A copy of `config` with `fields` (dotted path -> value) set."""
    resolved = config.copy_and_resolve_references()
    with resolved.unlocked():
        for path, value in fields.items():
            set_field(resolved, path, value)
    return resolved


class RunData(NamedTuple):
    config: ConfigDict                   # the resolved config (plan.applied: what the run trains with and saves)
    plan: RunPlan
    tokenizer: object
    digits: Optional[digits.DigitsData]  # the built-in dataset, when the run trains on it

    @property
    def train_dir(self) -> str:
        return self.plan.train_dir

    @property
    def num_examples(self) -> int:
        return self.plan.num_examples


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


def steps_per_epoch(config: ConfigDict, num_examples: int) -> Optional[int]:
    """num_examples // batch_size when the config counts in epochs, else None."""
    if _get(config, "epochs", None) is None:
        return None
    steps = num_examples // config.batch_size
    if steps == 0:
        raise ConfigError(f"config field epochs: the training set's {num_examples} examples fill no batch of "
                          f"batch_size = {config.batch_size}")
    return steps


def schedule(config: ConfigDict, num_examples: int) -> tuple[int, int]:
    """(total_steps, warmup_steps): from `epochs` and `warmup_epochs` when the config counts in epochs (steps per
    epoch = num_examples // batch_size), else the config's own optim.warmup_steps and total_steps."""
    per_epoch = steps_per_epoch(config, num_examples)
    if per_epoch is None:
        return config.total_steps, config.optim.warmup_steps
    return max(round(config.epochs * per_epoch), 1), round(config.warmup_epochs * per_epoch)


def schedule_fields(config: ConfigDict, num_examples: int) -> dict:
    """{total_steps, warmup_steps, schedule_steps}: `schedule` and the schedule's horizon (optim.schedule_steps,
    total_steps unless the config sets it)."""
    total_steps, warmup_steps = schedule(config, num_examples)
    return {"total_steps": total_steps, "warmup_steps": warmup_steps,
            "schedule_steps": _get(config, "optim.schedule_steps", None) or total_steps}


def with_schedule(config: ConfigDict, num_examples: int) -> ConfigDict:
    """A copy of `config` with the step counts of `schedule_fields` in total_steps and optim.*."""
    f = schedule_fields(config, num_examples)
    return _written(config, {"total_steps": f["total_steps"], "optim.warmup_steps": f["warmup_steps"],
                             "optim.schedule_steps": f["schedule_steps"]})


def resolve(config: ConfigDict, workdir, is_main: bool = True) -> RunData:
    """Prepares the data; returns it with the run plan and the resolved config (see the module docstring)."""
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
    plan = RunPlan(train_dir=os.fspath(train_dir), num_examples=num_examples,
                   steps_per_epoch=steps_per_epoch(config, num_examples), **schedule_fields(config, num_examples),
                   tokenizer=kind, tokenizer_path=os.fspath(copy), vocab_size=int(tokenizer.vocab_size),
                   eot_id=int(tokenizer.eot_id))
    return RunData(plan.applied(config), plan, tokenizer, built)
