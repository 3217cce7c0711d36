"""The objectives, as a registry: what each training mode encodes, its sharded loss, and its metrics.

`MODES[settings.mode]` (config_validation.ModeSettings, which checked config.mode) is an `Objective`:
  inputs      the batch entries its towers encode (what GradCache splits into micro-batches); the objective may read
              other entries of the whole batch (labels)
  image_only  only the image tower is run (the text tower and the logit scale then get no update, train_step.py)
  encode      (model, config) -> encode(params, batch, rff): the compared vectors, a tuple of [B, F] arrays, row i
              from example i alone (`similarity.embed` of the towers' clouds)
  objective   (model, config, mesh, settings) -> objective(params, vectors, batch) -> (loss, metrics): the loss
              over the global batch, in shard_map over parallel.BATCH_AXES on the vectors' local rows (each device
              gathers what it needs), and its metrics
  metrics     the names of the metrics it returns (besides "train/loss" and what the step adds)
  reads       the other batch entries the objective reads (whole-batch, not encoded): checked by `check_batch`
The image-text objectives (config.objective, held by the model as `model.objective`) are a sub-table,
`IMAGE_TEXT`. Adding an objective is one entry here and its test; train_step.py reads nothing else.
"""
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from wpce_jax.config_validation import ModeSettings
from wpce_jax.errors import ConfigError
from wpce_jax.losses import (infonce_and_accuracy, margin_contrastive_loss, nce_loss, nt_xent, pair_distances,
                             ranking_loss, sigmoid_loss, triplet_loss)
from wpce_jax.logit_scale import value as logit_scale_value
from wpce_jax.parallel import BATCH_AXES
from wpce_jax.relevance import max_grade, relevance
from wpce_jax.similarity import compared


class Objective(NamedTuple):
    inputs: tuple           # batch entries the towers encode
    image_only: bool        # the text tower is never run
    encode: Callable        # (model, config) -> encode(params, batch, rff) -> tuple of [B, F]
    objective: Callable     # (model, config, mesh, ModeSettings) -> objective(params, vectors, batch) -> (loss, metrics)
    metrics: tuple          # metric names the objective returns
    reads: tuple = ()       # batch entries the objective reads


# ------------------------------------------------------------------------------------------------ encoders

def _encode_image_text(model, config: ConfigDict):
    def encode(params, batch, rff):
        vectors = compared(model, config, params, batch["image"], batch["tokens"], rff)
        return vectors.image, vectors.text
    return encode


def _image(model, config, params, images, rff):
    return compared(model, config, params, images, rff=rff).image


def _encode_two_views(model, config: ConfigDict):
    def encode(params, batch, rff):
        return _image(model, config, params, batch["image"], rff), _image(model, config, params, batch["image2"], rff)
    return encode


def _encode_image(model, config: ConfigDict):
    def encode(params, batch, rff):
        return (_image(model, config, params, batch["image"], rff),)
    return encode


# ------------------------------------------------------------------------------------ image-text objectives

def _top1(x, y, scale):
    """The top-1 accuracies of `infonce_and_accuracy` on stopped gradients (a metric, not part of the loss): the
    argmax of scale * x @ y.T, which a bias or any positive scale leaves where it is, so they are the top-1 of the
    sigmoid and NCE logits too."""
    return infonce_and_accuracy(*map(jax.lax.stop_gradient, (x, y, scale)), axis_name=BATCH_AXES)[1]


# name -> (learns "logit_bias", loss_and_accuracy(x, y, scale, *bias) on local shards inside shard_map)
IMAGE_TEXT = {
    "infonce": (False, lambda x, y, scale: infonce_and_accuracy(x, y, scale, BATCH_AXES)),
    "sigmoid": (True, lambda x, y, scale, bias: (sigmoid_loss(x, y, scale, bias, axis_name=BATCH_AXES),
                                                 _top1(x, y, scale))),
    "nce": (False, lambda x, y, scale: (nce_loss(x, y, scale, axis_name=BATCH_AXES), _top1(x, y, scale))),
}


def _image_text_objective(model, config: ConfigDict, mesh, settings: ModeSettings):
    """model.objective over (images x, captions y); metrics: logit scale, top-1 both ways, and the bias."""
    similarity = config.model.similarity
    if model.objective not in IMAGE_TEXT:
        raise ConfigError(f"config field objective must be one of {tuple(IMAGE_TEXT)}, got {model.objective!r}")
    with_bias, loss = IMAGE_TEXT[model.objective]
    sharded_loss = jax.shard_map(loss, mesh=mesh,
                                 in_specs=(P(BATCH_AXES), P(BATCH_AXES), P()) + ((P(),) if with_bias else ()),
                                 out_specs=(P(), P()))

    def objective(params, vectors, batch):
        x, y = vectors
        scale = logit_scale_value(params, similarity)
        bias = (params["logit_bias"],) if with_bias else ()
        loss, accuracy = sharded_loss(x, y, scale, *bias)
        metrics = {"train/logit_scale": scale, "train/i2t_top1": accuracy["i2t_top1"],
                   "train/t2i_top1": accuracy["t2i_top1"]}
        if with_bias:
            metrics["train/logit_bias"] = bias[0]
        return loss, metrics

    return objective


# ---------------------------------------------------------------------------------- image-only objectives

def _two_view_loss(temperature, x, y):
    """NT-Xent of local view shards x, y, and the top-1 of each view finding its partner among the other view's B
    (on stopped gradients, a metric)."""
    _, accuracy = infonce_and_accuracy(*map(jax.lax.stop_gradient, (x, y)), 1 / temperature, BATCH_AXES)
    return nt_xent(x, y, temperature, BATCH_AXES), (accuracy["i2t_top1"] + accuracy["t2i_top1"]) / 2


def _two_view_objective(model, config: ConfigDict, mesh, settings: ModeSettings):
    sharded = jax.shard_map(partial(_two_view_loss, settings.temperature), mesh=mesh,
                            in_specs=(P(BATCH_AXES), P(BATCH_AXES)), out_specs=(P(), P()))

    def objective(params, vectors, batch):
        loss, top1 = sharded(*vectors)
        return loss, {"train/view_top1": top1}

    return objective


def _mean_pair_distances(x, labels):
    """Mean squared distance of same-label pairs (i != j) and of different-label pairs of the global batch x."""
    d, similar, dissimilar = pair_distances(x, labels)
    mean = lambda mask: jnp.sum(jnp.where(mask, d, 0)) / jnp.maximum(jnp.sum(mask), 1)
    return mean(similar), mean(dissimilar)


def _labelled_objective(model, config: ConfigDict, mesh, settings: ModeSettings):
    if settings.metric_loss == "triplet":
        loss = partial(triplet_loss, margin=settings.margin, mining=settings.mining, axis_name=BATCH_AXES)
    else:
        loss = partial(margin_contrastive_loss, margin=settings.margin, axis_name=BATCH_AXES)
    sharded = jax.shard_map(loss, mesh=mesh, in_specs=(P(BATCH_AXES), P(BATCH_AXES)), out_specs=P())

    def objective(params, vectors, batch):
        (x,) = vectors
        positive, negative = _mean_pair_distances(jax.lax.stop_gradient(x).astype(jnp.float32), batch["label"])
        return sharded(x, batch["label"]), {"train/positive_sq_dist": positive,
                                            "train/negative_sq_dist": negative}

    return objective


# --------------------------------------------------------------------------------------------- ranking

def _ranking_loss(kind: str, direction: str, rule: str, x, y, labels, scale):
    """The ranking loss of local shards x (images), y (captions, or the images' second views) [b, F] with label
    tuples labels [b, K], inside shard_map. Relevance [b, B] of this device's queries against every item of the global batch, from the
    all-gathered labels (an image and its caption share a tuple, so it is the same matrix both ways); "infonce":
    1 on the partner only, the listwise softmax of which is InfoNCE (both directions: the symmetric one)."""
    local = x.shape[0]
    if kind == "infonce":
        offset = jax.lax.axis_index(BATCH_AXES) * local
        total = local * jax.lax.axis_size(BATCH_AXES)
        grades = (jnp.arange(total)[None, :] == offset + jnp.arange(local)[:, None]).astype(jnp.float32)
        kind = "softmax"
    else:
        grades = relevance(labels, jax.lax.all_gather(labels, BATCH_AXES, tiled=True), rule)
        if kind == "pointwise_sigmoid":  # a probability in [0, 1]
            grades = grades / max_grade(rule, labels.shape[1])
    one_way = lambda queries, items: ranking_loss(queries, items, grades, scale, kind, axis_name=BATCH_AXES)
    if direction == "t2i":
        return one_way(y, x)
    if direction == "i2t":
        return one_way(x, y)
    return (one_way(x, y) + one_way(y, x)) / 2


def _ranking_objective(model, config: ConfigDict, mesh, settings: ModeSettings):
    """config.ranking.kind over (images x, captions y) with relevance by config.data.relevance from batch["labels"]
    [B, K]; metrics: the logit scale and the partner top-1 both ways."""
    similarity = config.model.similarity
    loss = partial(_ranking_loss, settings.ranking_kind, settings.direction, settings.relevance)
    sharded = jax.shard_map(lambda x, y, labels, scale: (loss(x, y, labels, scale), _top1(x, y, scale)), mesh=mesh,
                            in_specs=(P(BATCH_AXES), P(BATCH_AXES), P(BATCH_AXES), P()), out_specs=(P(), P()))

    def objective(params, vectors, batch):
        x, y = vectors
        scale = logit_scale_value(params, similarity)
        value, accuracy = sharded(x, y, batch["labels"], scale)
        return value, {"train/logit_scale": scale, "train/i2t_top1": accuracy["i2t_top1"],
                       "train/t2i_top1": accuracy["t2i_top1"]}

    return objective


def _image_ranking_objective(model, config: ConfigDict, mesh, settings: ModeSettings):
    """config.ranking.kind over two views (x, y) of each image, relevance by config.data.relevance from the label
    tuples batch["labels"] [B, K] (an image's two views share its tuple; its other view is one of the most relevant
    items, so no query is ranked against itself). The logit scale stays at its initial value (the image-only steps
    do not train it, train_step.py), like NT-Xent's fixed temperature. Metrics: the mean top-1 of each view finding
    its partner among the other view's B."""
    similarity = config.model.similarity
    loss = partial(_ranking_loss, settings.ranking_kind, settings.direction, settings.relevance)
    sharded = jax.shard_map(lambda x, y, labels, scale: (loss(x, y, labels, scale), _top1(x, y, scale)), mesh=mesh,
                            in_specs=(P(BATCH_AXES), P(BATCH_AXES), P(BATCH_AXES), P()), out_specs=(P(), P()))

    def objective(params, vectors, batch):
        value, accuracy = sharded(*vectors, batch["labels"], logit_scale_value(params, similarity))
        return value, {"train/view_top1": (accuracy["i2t_top1"] + accuracy["t2i_top1"]) / 2}

    return objective


MODES = {
    "image_text": Objective(("image", "tokens"), False, _encode_image_text, _image_text_objective,
                            ("train/logit_scale", "train/i2t_top1", "train/t2i_top1")),
    "two_view": Objective(("image", "image2"), True, _encode_two_views, _two_view_objective, ("train/view_top1",)),
    "labelled": Objective(("image",), True, _encode_image, _labelled_objective,
                          ("train/positive_sq_dist", "train/negative_sq_dist"), reads=("label",)),
    "ranking": Objective(("image", "tokens"), False, _encode_image_text, _ranking_objective,
                         ("train/logit_scale", "train/i2t_top1", "train/t2i_top1"), reads=("labels",)),
    "image_ranking": Objective(("image", "image2"), True, _encode_two_views, _image_ranking_objective,
                               ("train/view_top1",), reads=("labels",)),
}


def check_batch(mode: str, batch: dict) -> None:
    """ConfigError when a (host) batch lacks what `mode`'s objective reads: class labels for "labelled" (records
    without one have label -1), label tuples [b, K] for "ranking"."""
    if mode == "labelled" and (batch["label"] < 0).any():
        raise ConfigError("config field mode='labelled' needs class labels, but the training records include "
                          "unlabelled ones (label -1); use mode 'image_text' or 'two_view' for this data")
    if mode in ("ranking", "image_ranking") and ("labels" not in batch or batch["labels"].ndim != 2
                                                 or batch["labels"].shape[1] < 1):
        raise ConfigError(f"config field mode={mode!r} needs a label tuple in every training record (header field "
                          "\"labels\": a list of ints, e.g. configs/digit_pairs.py's data, a converted set with "
                          "--labels_key, or tfds_to_records --labels_features); these records have none")
