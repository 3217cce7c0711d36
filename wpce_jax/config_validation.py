"""Checks a training config before any compute; every error names the field and what was expected."""
from typing import NamedTuple, Optional

import jax
from ml_collections import ConfigDict

from wpce_jax.config_fields import get as _get, number as _number, positive_int as _positive_int
from wpce_jax.errors import ConfigError
from wpce_jax.kernels import KINDS
from wpce_jax.losses import MININGS, RANKING_KINDS
from wpce_jax.models.model_config import validate_model_config
from wpce_jax.optimizer import frozen_pattern
from wpce_jax.parallel import per_process_batch
from wpce_jax.relevance import RULES

DATA_KINDS = ("digits", "digit_pairs", "arrayrecord")
TOKENIZERS = ("clip_bpe", "sentencepiece")
MODES = ("image_text", "two_view", "labelled", "ranking", "image_ranking")
METRIC_LOSSES = ("triplet", "margin_contrastive")
RANKING_LOSSES = RANKING_KINDS + ("infonce",)  # infonce: the binary baseline, relevance 1 on the partner only
DIRECTIONS = ("t2i", "i2t", "both")
# Defaults of the mode fields, for configs that do not set them (only `mode` is in configs/common.py).
MODE_TEMPERATURE = 0.1   # SimCLR's NT-Xent temperature (its ImageNet default; 0.5 is its CIFAR-10 choice)
MARGINS = {"triplet": 0.2, "margin_contrastive": 1.0}  # FaceNet's 0.2 on squared distances; 1.0 on distances


class ModeSettings(NamedTuple):
    """The training mode and its resolved fields (`mode_settings`)."""
    mode: str                      # "image_text" | "two_view" | "labelled" | "ranking" | "image_ranking"
    temperature: float             # two_view: NT-Xent temperature (config.mode_temperature)
    metric_loss: str               # labelled: "triplet" | "margin_contrastive" (config.metric_loss)
    margin: float                  # labelled: config.margin
    mining: str                    # labelled, triplet: "semihard" | "hard" | "all" (config.mining)
    views: Optional[dict]          # two_view, image_ranking: image_ops.ViewAugment fields (config.views.*), else None
    relevance: str                 # "exact" | "positional" | "hierarchical" (config.data.relevance; retrieval too)
    ranking_kind: str              # ranking: losses.RANKING_KINDS or "infonce" (config.ranking.kind)
    direction: str                 # ranking: "t2i" | "i2t" | "both" (config.ranking.direction)


def mode_settings(config: ConfigDict) -> ModeSettings:
    """config.mode and the fields it reads, with their defaults, checked; ValueError naming a bad field.

    Fields (top level; absent or None take the default):
      mode               "image_text" (default) | "two_view" (SimCLR: two augmented views, image tower only) |
                         "labelled" (class labels of the records, image tower only) | "ranking" (images and
                         captions with graded relevance from the records' label tuples, objectives.py) |
                         "image_ranking" (the image tower alone: two augmented views of each image, the first
                         view's vectors ranking the second's with graded relevance from the label tuples)
      mode_temperature   two_view: NT-Xent temperature, > 0 (default 0.1)
      views.strength     two_view, image_ranking: colour-jitter strength s >= 0 (default 1.0; 0 turns jitter off)
      views.flip         two_view: random horizontal flips (default False)
      views.jitter_prob  two_view: probability of colour jitter, in [0, 1] (default 0.8)
      views.grayscale_prob  two_view: probability of grayscale, in [0, 1] (default 0.2)
      metric_loss        labelled: "triplet" (default) | "margin_contrastive"
      margin             labelled: > 0 (default 0.2 for triplet, 1.0 for margin_contrastive)
      mining             labelled, triplet: "semihard" (default) | "hard" | "all"
      data.relevance     the grade of a pair of label tuples (relevance.py): "exact" (default) | "positional" |
                         "hierarchical"; the ranking loss's and the graded retrieval NDCG's
      ranking.kind       ranking, image_ranking: "softmax" (default) | "pairwise_logistic" | "approx_ndcg" | "pointwise_sigmoid" |
                         "infonce" (the binary baseline: relevance 1 on the partner only)
      ranking.direction  ranking: "t2i" (captions query images, default) | "i2t" | "both" (the mean of the two);
                         image_ranking: "i2t" (the first view queries the second) | "t2i" | "both"
    """
    mode = _get(config, "mode", "image_text")
    if mode not in MODES:
        raise ConfigError(f"config field mode must be one of {MODES}, got {mode!r}")
    temperature = _get(config, "mode_temperature", MODE_TEMPERATURE)
    metric_loss = _get(config, "metric_loss", "triplet")
    margin = _get(config, "margin", None)
    mining = _get(config, "mining", "semihard")
    views = None
    if mode in ("two_view", "image_ranking"):
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ConfigError(f"config field mode_temperature must be a number > 0, got {temperature!r}")
        views = {"strength": _get(config, "views.strength", 1.0), "flip": _get(config, "views.flip", False),
                 "jitter_prob": _get(config, "views.jitter_prob", 0.8),
                 "grayscale_prob": _get(config, "views.grayscale_prob", 0.2)}
        for field, value in views.items():
            if field == "flip":
                if not isinstance(value, bool):
                    raise ConfigError(f"config field views.flip must be a bool, got {value!r}")
                continue
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
            if not ok or (field != "strength" and value > 1):
                raise ConfigError(f"config field views.{field} must be a number "
                                  f"{'>= 0' if field == 'strength' else 'in [0, 1]'}, got {value!r}")
    if mode == "labelled":
        if metric_loss not in METRIC_LOSSES:
            raise ConfigError(f"config field metric_loss must be one of {METRIC_LOSSES}, got {metric_loss!r}")
        if metric_loss == "triplet" and mining not in MININGS:
            raise ConfigError(f"config field mining must be one of {MININGS}, got {mining!r}")
        margin = MARGINS[metric_loss] if margin is None else margin
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin > 0:
            raise ConfigError(f"config field margin must be a number > 0, got {margin!r}")
    relevance = _get(config, "data.relevance", "exact")
    if relevance not in RULES:
        raise ConfigError(f"config field data.relevance must be one of {RULES}, got {relevance!r}")
    kind = _get(config, "ranking.kind", "softmax")
    direction = _get(config, "ranking.direction", "t2i")
    if mode in ("ranking", "image_ranking"):
        if kind not in RANKING_LOSSES:
            raise ConfigError(f"config field ranking.kind must be one of {RANKING_LOSSES}, got {kind!r}")
        if direction not in DIRECTIONS:
            raise ConfigError(f"config field ranking.direction must be one of {DIRECTIONS}, got {direction!r}")
    return ModeSettings(mode, float(temperature) if mode == "two_view" else MODE_TEMPERATURE, metric_loss,
                        float(margin) if margin is not None else 0.0, mining, views, relevance, kind, direction)


def validate(config: ConfigDict) -> ModeSettings:
    """Every field of a training config, before any data is prepared or compute runs: the training fields, the
    evaluation fields and the model's (its vocabulary is checked once the tokenizer has filled it in, by
    make_model). Returns the mode settings (`mode_settings`), computed once here for the entry point."""
    from wpce_jax.evaluate.evaluator import validate_eval_config  # the evaluator imports this module's helpers

    settings = validate_config(config)
    validate_eval_config(config)
    validate_model_config(config, require_vocabulary=False)
    return settings


def validate_config(config: ConfigDict) -> ModeSettings:
    """Everything except the model's own fields (`models.model_config.validate_model_config` checks those) and the
    evaluation fields (`evaluate.evaluator.validate_eval_config`)."""
    epochs = _get(config, "epochs", None)
    if epochs is None:
        _positive_int(config, "total_steps")
    else:  # total_steps and optim.warmup_steps are then computed from the data (run_data.schedule)
        _number(config, "epochs", 0, low_inclusive=False)
        _number(config, "warmup_epochs", 0)
    for path in ("batch_size", "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
                 "keep_checkpoints", "eval.batch_size", "optim.accum_steps", "wpce.num_features",
                 "data.image_size"):
        _positive_int(config, path)
    settings = mode_settings(config)
    profile = _get(config, "profile_steps", ())
    if profile and not (len(profile) == 2 and all(isinstance(s, int) and not isinstance(s, bool) for s in profile)
                        and 1 <= profile[0] <= profile[1]):
        raise ConfigError(f"config field profile_steps must be () or (first, last) steps with 1 <= first <= last, "
                          f"got {tuple(profile)!r}")
    if not isinstance(config.seed, int):
        raise ConfigError(f"config field seed must be an int, got {config.seed!r}")
    devices = jax.device_count()
    for path in ("batch_size", "eval.batch_size"):
        per_process_batch(_get(config, path), path)
    fsdp = _get(config, "mesh.fsdp", 1)
    if isinstance(fsdp, bool) or not isinstance(fsdp, int) or fsdp < 1 or devices % fsdp:
        raise ConfigError(f"config field mesh.fsdp = {fsdp!r} must be a positive divisor of the number of devices "
                          f"({devices})")
    accum = config.optim.accum_steps  # micro-batches of the global batch, each spread over every device
    if accum > 1 and config.batch_size % (accum * devices):
        raise ConfigError(f"config fields batch_size = {config.batch_size} and optim.accum_steps = {accum}: "
                          f"batch_size must be divisible by optim.accum_steps x the number of devices "
                          f"({accum} x {devices} = {accum * devices}), so that every micro-batch is spread evenly")
    per_class = _get(config, "data.samples_per_class", 0)
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class == 1 or per_class < 0:
        raise ConfigError(f"config field data.samples_per_class must be 0 (uniform) or an int >= 2, got {per_class!r}")
    if per_class and config.batch_size % (per_class * jax.process_count()):
        raise ConfigError(f"config field batch_size = {config.batch_size} must be a multiple of data.samples_per_class "
                          f"({per_class}) x processes ({jax.process_count()})")
    if config.data.kind not in DATA_KINDS:
        raise ConfigError(f"config field data.kind must be one of {DATA_KINDS}, got {config.data.kind!r}")
    if config.data.kind == "arrayrecord":
        if not config.data.train_dir:
            raise ConfigError("config field data.train_dir is required for data.kind='arrayrecord': a directory "
                              "made by `python -m wpce_jax.data.convert` (holding manifest.json)")
        if config.data.tokenizer not in TOKENIZERS:
            raise ConfigError(f"config field data.tokenizer must be one of {TOKENIZERS}, got {config.data.tokenizer!r}")
        if not config.data.tokenizer_path:
            raise ConfigError("config field data.tokenizer_path is required: bpe_simple_vocab_16e6.txt.gz for "
                              "clip_bpe, a .model file for sentencepiece")
    if _number(config, "data.max_skipped_fraction", 0) > 1:
        raise ConfigError(f"config field data.max_skipped_fraction must be in [0, 1], got "
                          f"{config.data.max_skipped_fraction!r}")
    lo, hi = config.data.crop_scale
    if not 0 < lo <= hi <= 1:
        raise ConfigError(f"config field data.crop_scale must satisfy 0 < lo <= hi <= 1, got {tuple(config.data.crop_scale)}")
    if config.wpce.kernel not in KINDS:
        raise ConfigError(f"config field wpce.kernel must be one of {KINDS}, got {config.wpce.kernel!r}")
    _number(config, "wpce.scale", 0, low_inclusive=False)
    _number(config, "wpce.a_lin", 0)
    _number(config, "wpce.a_rff", 0)
    if config.model.similarity == "wpce" and config.wpce.a_lin == 0 and config.wpce.a_rff == 0:
        raise ConfigError("config fields wpce.a_lin and wpce.a_rff are both 0: the similarity would be 0 for every "
                          "pair; give at least one kernel a positive weight (the paper: a_lin 0.667, a_rff 0.333)")
    for path in ("optim.lr", "optim.init_lr", "optim.end_lr", "optim.weight_decay", "optim.grad_clip_norm",
                 "optim.eps"):
        _number(config, path, 0)
    for path in ("optim.b1", "optim.b2"):
        beta = _number(config, path, 0)
        if not beta < 1:
            raise ConfigError(f"config field {path} must lie in [0, 1), got {beta!r}")
    if not isinstance(config.optim.warmup_steps, int) or config.optim.warmup_steps < 0:
        raise ConfigError(f"config field optim.warmup_steps must be an int >= 0, got {config.optim.warmup_steps!r}")
    if _get(config, "optim.schedule_steps", None) is not None:
        _positive_int(config, "optim.schedule_steps")
    for path in ("init_from", "optim.frozen"):
        value = _get(config, path, None)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"config field {path} must be a string or unset, got {value!r}")
    frozen_pattern(config)  # a ConfigError when it is not a regular expression
    if _get(config, "require_init_from", False) and not _get(config, "init_from", None):
        raise ConfigError("config field init_from is required by this fine-tuning config: set "
                          "--config.init_from=DIR[:STEP], the workdir (e.g. from python -m wpce_jax.import_checkpoint) "
                          "whose parameters the run starts from")
    if not 0 < _number(config, "logit_scale_min", 0, False) < _number(config, "logit_scale_max", 0, False):
        raise ConfigError(f"config fields logit_scale_min < logit_scale_max required, got "
                          f"{config.logit_scale_min} and {config.logit_scale_max}")
    return settings
