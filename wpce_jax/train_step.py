"""The training state and the jit-compiled, data-parallel training step.

The towers run under jit on a batch sharded over the batch axes (parallel.BATCH_AXES; `make_encode_fn`); the objective
(`make_objective_fn`; `config.objective`, held by the model as `model.objective`: symmetric InfoNCE, SigLIP's
sigmoid loss with the learned "logit_bias", or NCE) runs in shard_map over the global batch (each device gathers the
other side's features). A step whose loss or gradient is not finite changes nothing and records its number in
`bad_step`; every later step is a no-op too, so the state (and any checkpoint written from it) stays the last good
one until the host notices and stops the run.

`config.mode` picks what is trained: "image_text" (the objective above), or the image tower alone: "two_view"
(SimCLR's NT-Xent over the compared vectors of two augmented views of each image, batch["image"] and
batch["image2"]) or "labelled" (triplet or margin contrastive loss over the compared vectors with batch["label"]);
or both towers again in "ranking" (a learning-to-rank loss with graded relevance from the label tuples
batch["labels"]; "image_ranking" on two views of each image). Each mode is an entry of objectives.py's registry.
Every builder below takes the mode's `ModeSettings`, computed once by the entry point (config_validation.validate,
or config_validation.mode_settings for the mode's fields alone). In the image-only modes the text tower is never
run, so its parameters and the logit scale get a zero gradient; the step also applies no update to them (AdamW's
weight decay would otherwise shrink them), so they stay exactly at their initial values.

`optim.accum_steps` = k splits the towers' work into k micro-batches to save memory (`make_grad_fn`, GradCache): the
objective is still taken over the whole global batch (`batch_size` is the contrastive batch), the step has one RFF
draw and makes one optimiser update, and its loss and gradient are those of the unsplit step (up to float32
rounding of the gradient's sum). The cost is one more forward pass of the towers per step.
"""
from functools import partial
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import ConfigDict

from wpce_jax import logit_scale, objectives
from wpce_jax.config_validation import ModeSettings
from wpce_jax.kernels import RFF
from wpce_jax.models.model_config import init_params
from wpce_jax.optimizer import learning_rate_schedule, stop_frozen
from wpce_jax.parallel import BATCH_AXES, gather_fsdp
from wpce_jax.rng import init_key
from wpce_jax.similarity import eval_rff, train_rff


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


IMAGE_PARAMS = ("image_encoder", "image_head")  # what the image-only modes train


def make_encode_fn(model, config: ConfigDict, settings: ModeSettings):
    """encode(params, batch, rff) -> the mode's compared vectors, a tuple of [B, F] arrays: the towers and
    `similarity.embed`, row i from example i alone (the registry entry's encoder, objectives.py). "image_text" and
    "ranking": (x images, y captions); "two_view": (x, x2) of batch["image"] and batch["image2"]; "labelled": (x,)."""
    encode = objectives.MODES[settings.mode].encode(model, config)
    # Under FSDP: the weights outside the transformer blocks are gathered here, the blocks' where they run.
    return lambda params, batch, rff: encode(gather_fsdp(params, skip_blocks=True), batch, rff)


def make_objective_fn(model, config: ConfigDict, mesh, settings: ModeSettings):
    """objective(params, vectors, batch) -> (loss, metrics): the mode's objective over the global batch, in
    shard_map, of `make_encode_fn`'s vectors (sharded over the data axis), from the registry (objectives.py).
    params feed only the logit scale (and SigLIP's bias); batch only the labels ("labelled", "ranking")."""
    return objectives.MODES[settings.mode].objective(model, config, mesh, settings)


def make_loss_fn(model, config: ConfigDict, mesh, settings: ModeSettings):
    """loss_fn(params, batch, rff) -> (loss, metrics): the towers, the compared vectors, and the mode's objective
    over the global batch in shard_map; objective(params, encode(params, batch, rff), batch) of
    `make_objective_fn` and `make_encode_fn`.

    mode "image_text": the model's objective; metrics "train/logit_scale", "train/i2t_top1", "train/t2i_top1", and
    "train/logit_bias" for the sigmoid objective. "two_view": NT-Xent; "train/view_top1". "labelled": triplet or
    margin contrastive loss; "train/positive_sq_dist" and "train/negative_sq_dist" (mean squared distances of the
    same-label and different-label pairs)."""
    encode, objective = make_encode_fn(model, config, settings), make_objective_fn(model, config, mesh, settings)

    def loss_fn(params, batch, rff):
        return objective(params, encode(params, batch, rff), batch)

    return loss_fn


def split_micro_batches(tree, k: int, mesh):
    """Global arrays [B, ...] sharded over the data axis -> [k, B/k, ...], micro-batch j on axis 0 sharded over the
    data axis on axis 1: every device's local rows [j m, (j + 1) m) (m = B / (k n), n devices), so each micro-batch
    is spread evenly over the devices and nothing moves between them (a local reshape in shard_map)."""
    def split(a):
        return a.reshape(k, a.shape[0] // k, *a.shape[1:])
    return jax.shard_map(lambda t: jax.tree.map(split, t), mesh=mesh, in_specs=P(BATCH_AXES),
                         out_specs=P(None, BATCH_AXES))(tree)


def join_micro_batches(tree, k: int, mesh):
    """The inverse of `split_micro_batches`: [k, B/k, ...] -> [B, ...] in the batch's own row order."""
    def join(a):
        return a.reshape(k * a.shape[1], *a.shape[2:])
    return jax.shard_map(lambda t: jax.tree.map(join, t), mesh=mesh, in_specs=P(None, BATCH_AXES),
                         out_specs=P(BATCH_AXES))(tree)


def make_grad_fn(model, config: ConfigDict, mesh, settings: ModeSettings):
    """grad_fn(params, batch, rff) -> ((loss, metrics), grads): `make_loss_fn`'s loss over the whole global batch,
    its metrics, and its gradient with respect to params.

    With `optim.accum_steps` k > 1 the objective is still the whole batch's (every negative of the batch); only the
    towers run on k micro-batches of B/k examples (`split_micro_batches`), one at a time, so that one micro-batch's
    activations are alive at once (GradCache, Gao et al. 2021; open_clip's accum_freq):
      1. encode each micro-batch (lax.map, no gradient: nothing is kept but the compared vectors);
      2. the objective, and its gradient with respect to params (logit scale, bias) and to the vectors [B, F];
      3. each micro-batch's towers again, with their VJP against its slice of the vectors' gradient (lax.scan),
         summed into the parameter gradient.
    The cost is one more forward pass of the towers. Loss and metrics are those of k = 1; the gradient equals
    k = 1's up to float32 rounding (the batch sum is taken in k parts)."""
    encode_all = make_encode_fn(model, config, settings)
    objective_all = make_objective_fn(model, config, mesh, settings)
    # Frozen parameters (optim.frozen) enter behind stop_gradient: a zero gradient, and no backward pass of theirs.
    encode = lambda p, b, r: encode_all(stop_frozen(p, config), b, r)  # noqa: E731
    objective = lambda p, v, b: objective_all(stop_frozen(p, config), v, b)  # noqa: E731
    k = config.optim.accum_steps
    if k == 1:
        return jax.value_and_grad(lambda p, b, r: objective(p, encode(p, b, r), b), has_aux=True)
    inputs = objectives.MODES[settings.mode].inputs
    rows, micro_rows = NamedSharding(mesh, P(BATCH_AXES)), NamedSharding(mesh, P(None, BATCH_AXES))

    def grad_fn(params, batch, rff):
        micro = split_micro_batches({name: batch[name] for name in inputs}, k, mesh)

        def encode_micro(p, mb):  # one micro-batch [B/k, ...], spread over the devices like the batch
            vectors = encode(p, jax.lax.with_sharding_constraint(mb, rows), rff)
            return jax.lax.with_sharding_constraint(vectors, rows)

        vectors = jax.lax.with_sharding_constraint(jax.lax.map(partial(encode_micro, params), micro), micro_rows)
        (loss, metrics), (grads, vector_grads) = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(
            params, join_micro_batches(vectors, k, mesh), batch)

        def backward(total, xs):
            mb, cotangent = xs
            _, vjp = jax.vjp(lambda p: encode_micro(p, mb), params)
            return jax.tree.map(jnp.add, total, vjp(cotangent)[0]), None

        grads, _ = jax.lax.scan(backward, grads, (micro, split_micro_batches(vector_grads, k, mesh)))
        return (loss, metrics), grads

    return grad_fn


def make_train_step(model, config: ConfigDict, mesh, tx: optax.GradientTransformation, settings: ModeSettings):
    """Returns step(state, batch) -> (state, metrics); batch {"image" [B,H,W,3], "tokens" [B,L]} global arrays
    (two_view: "image" and "image2"; labelled: "image" and "label" [B] int32). One RFF draw and one optimiser update
    per step, whatever `optim.accum_steps` (which only splits the towers' work, `make_grad_fn`)."""
    similarity = config.model.similarity
    image_only = objectives.MODES[settings.mode].image_only
    schedule = learning_rate_schedule(config)
    grad_fn = make_grad_fn(model, config, mesh, settings)

    def step(state: TrainState, batch):
        rff = train_rff(jax.random.wrap_key_data(state.rng), state.step, config)
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # for gather_fsdp (FSDP's weight gathers)
            (loss, loss_metrics), grads = grad_fn(state.params, batch, rff)
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (state.bad_step < 0)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        if image_only:  # the unused text tower and logit scale stay as initialised (no weight decay either)
            updates = {k: v if k in IMAGE_PARAMS else jax.tree.map(jnp.zeros_like, v) for k, v in updates.items()}
        params = logit_scale.clip(optax.apply_updates(state.params, updates), similarity,
                                  config.logit_scale_min, config.logit_scale_max)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
        bad_step = jnp.where((state.bad_step < 0) & ~ok, state.step, state.bad_step)
        new_state = state._replace(params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
                                   step=state.step + 1, bad_step=bad_step)
        metrics = {"train/loss": loss, "train/grad_norm": grad_norm, **loss_metrics,
                   "train/learning_rate": schedule(state.step)}
        return new_state, metrics

    return step
