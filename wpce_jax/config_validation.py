"""Checks a training config before any compute; every error names the field and what was expected."""
import jax
from ml_collections import ConfigDict

from wpce_jax.config_fields import get as _get, number as _number, positive_int as _positive_int
from wpce_jax.kernels import KINDS
from wpce_jax.models.towers import OBJECTIVES

DATA_KINDS = ("digits", "arrayrecord")
TOKENIZERS = ("clip_bpe", "sentencepiece")


def validate_config(config: ConfigDict) -> None:
    """Everything except the model's own fields (`models.towers.validate_model_config` checks those)."""
    for path in ("total_steps", "batch_size", "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
                 "keep_checkpoints", "eval.batch_size", "optim.accum_steps", "wpce.num_features",
                 "data.image_size"):
        _positive_int(config, path)
    objective = _get(config, "objective", "infonce")  # absent in configs saved before the field existed
    if objective not in OBJECTIVES:
        raise ValueError(f"config field objective must be one of {OBJECTIVES}, got {objective!r}")
    if not isinstance(config.seed, int):
        raise ValueError(f"config field seed must be an int, got {config.seed!r}")
    devices = jax.device_count()
    for path, size in (("batch_size", config.batch_size), ("eval.batch_size", config.eval.batch_size)):
        if size % devices:
            raise ValueError(f"config field {path} = {size} must be divisible by the number of devices ({devices})")
    if config.total_steps % config.optim.accum_steps:
        raise ValueError(f"config field total_steps = {config.total_steps} must be a multiple of "
                         f"optim.accum_steps = {config.optim.accum_steps}")
    if config.data.kind not in DATA_KINDS:
        raise ValueError(f"config field data.kind must be one of {DATA_KINDS}, got {config.data.kind!r}")
    if config.data.kind == "arrayrecord":
        if not config.data.train_dir:
            raise ValueError("config field data.train_dir is required for data.kind='arrayrecord': a directory "
                             "made by `python -m wpce_jax.data.convert` (holding manifest.json)")
        if config.data.tokenizer not in TOKENIZERS:
            raise ValueError(f"config field data.tokenizer must be one of {TOKENIZERS}, got {config.data.tokenizer!r}")
        if not config.data.tokenizer_path:
            raise ValueError("config field data.tokenizer_path is required: bpe_simple_vocab_16e6.txt.gz for "
                             "clip_bpe, a .model file for sentencepiece")
    lo, hi = config.data.crop_scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"config field data.crop_scale must satisfy 0 < lo <= hi <= 1, got {tuple(config.data.crop_scale)}")
    if config.wpce.kernel not in KINDS:
        raise ValueError(f"config field wpce.kernel must be one of {KINDS}, got {config.wpce.kernel!r}")
    _number(config, "wpce.scale", 0, low_inclusive=False)
    _number(config, "wpce.a_lin", 0)
    _number(config, "wpce.a_rff", 0)
    for path in ("optim.lr", "optim.init_lr", "optim.end_lr", "optim.weight_decay", "optim.grad_clip_norm",
                 "optim.eps"):
        _number(config, path, 0)
    for path in ("optim.b1", "optim.b2"):
        beta = _number(config, path, 0)
        if not beta < 1:
            raise ValueError(f"config field {path} must lie in [0, 1), got {beta!r}")
    if not isinstance(config.optim.warmup_steps, int) or config.optim.warmup_steps < 0:
        raise ValueError(f"config field optim.warmup_steps must be an int >= 0, got {config.optim.warmup_steps!r}")
    if not 0 < _number(config, "logit_scale_min", 0, False) < _number(config, "logit_scale_max", 0, False):
        raise ValueError(f"config fields logit_scale_min < logit_scale_max required, got "
                         f"{config.logit_scale_min} and {config.logit_scale_max}")
