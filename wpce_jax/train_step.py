"""The training state and the jit-compiled, data-parallel training step.

The towers run under jit on a batch sharded over the "data" axis; the objective (`config.objective`, held by the
model as `model.objective`: symmetric InfoNCE, SigLIP's sigmoid loss with the learned "logit_bias", or NCE) runs in
shard_map over the global batch (each device gathers the other side's features). A step whose loss or gradient is
not finite changes nothing and records its number in `bad_step`; every later step is a no-op too, so the state (and
any checkpoint written from it) stays the last good one until the host notices and stops the run.

`config.mode` (config_validation.mode_settings) picks what is trained: "image_text" (the objective above), or the
image tower alone: "two_view" (SimCLR's NT-Xent over the compared vectors of two augmented views of each image,
batch["image"] and batch["image2"]) or "labelled" (triplet or margin contrastive loss over the compared vectors with
batch["label"]). In the image-only modes the text tower is never run, so its parameters and the logit scale get a
zero gradient; the step also applies no update to them (AdamW's weight decay would otherwise shrink them), so they
stay exactly at their initial values.
"""
from functools import partial
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from wpce_jax.config_validation import mode_settings
from wpce_jax.kernels import RFF
from wpce_jax.losses import (infonce_and_accuracy, margin_contrastive_loss, nce_loss, nt_xent, pair_distances,
                             sigmoid_loss, triplet_loss)
from wpce_jax.models.towers import init_params, logit_scale_value
from wpce_jax.optimizer import clip_logit_scale, learning_rate_schedule
from wpce_jax.parallel import DATA_AXIS
from wpce_jax.rng import init_key
from wpce_jax.similarity import embed, eval_rff, train_rff


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array        # int32 scalar: train steps taken
    rng: jax.Array         # uint32 key data of the run's root key (RFF draws fold the step into it)
    bad_step: jax.Array    # int32 scalar: first step with a non-finite loss or gradient, -1 if none
    eval_rff: Optional[RFF]  # the fixed RFF draw used for evaluation (None for the CLIP baseline)


def initial_state(model, tx: optax.GradientTransformation, config: ConfigDict, root_key: jax.Array) -> TrainState:
    """Step 0 of a run: fresh parameters and optimiser state, and the run's fixed evaluation RFF draw."""
    params = init_params(model, init_key(root_key), config)
    return TrainState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
                      rng=jax.random.key_data(root_key), bad_step=jnp.full((), -1, jnp.int32),
                      eval_rff=eval_rff(root_key, config))


def _loss_and_accuracy(objective: str, x, y, scale, *bias):
    """The objective and the top-1 accuracies of local shards x, y inside shard_map over the data axis.

    The accuracies are those of `infonce_and_accuracy`: the argmax of scale * x @ y.T, which a bias or any
    positive scale leaves where it is, so they are the top-1 of the sigmoid and NCE logits too (computed on
    stopped gradients: a metric, not part of the loss)."""
    if objective == "infonce":
        return infonce_and_accuracy(x, y, scale, DATA_AXIS)
    _, accuracy = infonce_and_accuracy(*map(jax.lax.stop_gradient, (x, y, scale)), axis_name=DATA_AXIS)
    if objective == "sigmoid":
        return sigmoid_loss(x, y, scale, *bias, axis_name=DATA_AXIS), accuracy
    return nce_loss(x, y, scale, axis_name=DATA_AXIS), accuracy


IMAGE_PARAMS = ("image_encoder", "image_head")  # what the image-only modes train


def _two_view_loss(temperature, x, y):
    """NT-Xent of local view shards x, y, and the top-1 of each view finding its partner among the other view's B
    (on stopped gradients, a metric)."""
    _, accuracy = infonce_and_accuracy(*map(jax.lax.stop_gradient, (x, y)), 1 / temperature, DATA_AXIS)
    return nt_xent(x, y, temperature, DATA_AXIS), (accuracy["i2t_top1"] + accuracy["t2i_top1"]) / 2


def _pair_distances(x, labels):
    """Mean squared distance of same-label pairs (i != j) and of different-label pairs of the global batch x."""
    d, similar, dissimilar = pair_distances(x, labels)
    mean = lambda mask: jnp.sum(jnp.where(mask, d, 0)) / jnp.maximum(jnp.sum(mask), 1)
    return mean(similar), mean(dissimilar)


def _image_only_loss_fn(model, config: ConfigDict, mesh):
    settings = mode_settings(config)

    def compared(params, images, rff):
        return embed(model.apply({"params": params}, images, method="encode_image"), rff, config)

    if settings.mode == "two_view":
        sharded = jax.shard_map(partial(_two_view_loss, settings.temperature), mesh=mesh,
                                in_specs=(P(DATA_AXIS), P(DATA_AXIS)), out_specs=(P(), P()))

        def loss_fn(params, batch, rff):
            x, y = compared(params, batch["image"], rff), compared(params, batch["image2"], rff)
            loss, top1 = sharded(x, y)
            return loss, {"train/view_top1": top1}

        return loss_fn

    if settings.metric_loss == "triplet":
        objective = partial(triplet_loss, margin=settings.margin, mining=settings.mining, axis_name=DATA_AXIS)
    else:
        objective = partial(margin_contrastive_loss, margin=settings.margin, axis_name=DATA_AXIS)
    sharded = jax.shard_map(objective, mesh=mesh, in_specs=(P(DATA_AXIS), P(DATA_AXIS)), out_specs=P())

    def loss_fn(params, batch, rff):
        x = compared(params, batch["image"], rff)
        loss = sharded(x, batch["label"])
        positive, negative = _pair_distances(jax.lax.stop_gradient(x).astype(jnp.float32), batch["label"])
        return loss, {"train/positive_sq_dist": positive, "train/negative_sq_dist": negative}

    return loss_fn


def make_loss_fn(model, config: ConfigDict, mesh):
    """loss_fn(params, batch, rff) -> (loss, metrics): the towers, the compared vectors, and the mode's objective
    over the global batch in shard_map.

    mode "image_text": the model's objective; metrics "train/logit_scale", "train/i2t_top1", "train/t2i_top1", and
    "train/logit_bias" for the sigmoid objective. "two_view": NT-Xent; "train/view_top1". "labelled": triplet or
    margin contrastive loss; "train/positive_sq_dist" and "train/negative_sq_dist" (mean squared distances of the
    same-label and different-label pairs)."""
    if mode_settings(config).mode != "image_text":
        return _image_only_loss_fn(model, config, mesh)
    similarity = config.model.similarity
    objective = model.objective
    sigmoid = objective == "sigmoid"
    sharded_loss = jax.shard_map(partial(_loss_and_accuracy, objective), mesh=mesh,
                                 in_specs=(P(DATA_AXIS), P(DATA_AXIS), P()) + ((P(),) if sigmoid else ()),
                                 out_specs=(P(), P()))

    def loss_fn(params, batch, rff):
        image_cloud, text_cloud = model.apply({"params": params}, batch["image"], batch["tokens"])
        x, y = embed(image_cloud, rff, config), embed(text_cloud, rff, config)
        scale = logit_scale_value(params, similarity)
        bias = (params["logit_bias"],) if sigmoid else ()
        loss, accuracy = sharded_loss(x, y, scale, *bias)
        metrics = {"train/logit_scale": scale, "train/i2t_top1": accuracy["i2t_top1"],
                   "train/t2i_top1": accuracy["t2i_top1"]}
        if sigmoid:
            metrics["train/logit_bias"] = bias[0]
        return loss, metrics

    return loss_fn


def make_train_step(model, config: ConfigDict, mesh, tx: optax.GradientTransformation):
    """Returns step(state, batch) -> (state, metrics); batch {"image" [B,H,W,3], "tokens" [B,L]} global arrays
    (two_view: "image" and "image2"; labelled: "image" and "label" [B] int32)."""
    similarity = config.model.similarity
    image_only = mode_settings(config).mode != "image_text"
    schedule = learning_rate_schedule(config)
    loss_fn = make_loss_fn(model, config, mesh)

    def step(state: TrainState, batch):
        rff = train_rff(jax.random.wrap_key_data(state.rng), state.step, config)
        (loss, loss_metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rff)
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (state.bad_step < 0)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        if image_only:  # the unused text tower and logit scale stay as initialised (no weight decay either)
            updates = {k: v if k in IMAGE_PARAMS else jax.tree.map(jnp.zeros_like, v) for k, v in updates.items()}
        params = clip_logit_scale(optax.apply_updates(state.params, updates), similarity,
                                  config.logit_scale_min, config.logit_scale_max)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
        bad_step = jnp.where((state.bad_step < 0) & ~ok, state.step, state.bad_step)
        new_state = state._replace(params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
                                   step=state.step + 1, bad_step=bad_step)
        metrics = {"train/loss": loss, "train/grad_norm": grad_norm, **loss_metrics,
                   "train/learning_rate": schedule(state.step // config.optim.accum_steps)}
        return new_state, metrics

    return step
