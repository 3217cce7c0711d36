"""AdamW with the paper's decay mask and schedule, optional clipping, and the logit-scale bound.

Schedule: linear warm-up from `optim.init_lr` to `optim.lr` over `optim.warmup_steps`, then cosine to `optim.end_lr`
at update `schedule_steps` (the horizon planned when the run started, run_data.resolve; the update there runs just
above `optim.end_lr` and any later one at it: a run extended past its plan goes on at the final rate, a shortened
one stops early on the same curve). There is one update per train step
whatever `optim.accum_steps` (which only splits a step's batch into micro-batches, train_step.make_grad_fn), so the
schedule counts train steps. Weight decay touches matrices only: dense kernels (attention projections included),
token and position embeddings; never biases (the attention q/k/v biases are [heads, head_dim] but still biases),
norm scales, the class token or the logit scale.
"""
import math

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict


def num_updates(config: ConfigDict) -> int:
    """Optimizer updates in the run: one per train step."""
    return config.total_steps


def schedule_steps(config: ConfigDict) -> int:
    """The schedule's length in updates, warm-up included: `optim.schedule_steps`, recorded when the run started;
    a config saved before that field existed planned its schedule over its own total_steps."""
    return config.optim.get("schedule_steps") or config.total_steps


def learning_rate_schedule(config: ConfigDict) -> optax.Schedule:
    """update count -> learning rate (optax holds end_lr from schedule_steps on)."""
    o = config.optim
    total = max(schedule_steps(config), o.warmup_steps + 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=o.init_lr, peak_value=o.lr, warmup_steps=o.warmup_steps, decay_steps=total, end_value=o.end_lr)


# Leaf names (Flax's) of the parameters that weight decay applies to.
DECAYED_NAMES = ("kernel", "embedding", "pos_embed")


def decay_mask(params):
    def decayed(path, leaf):
        name = getattr(path[-1], "key", getattr(path[-1], "name", None))
        return name in DECAYED_NAMES and leaf.ndim >= 2
    return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(config: ConfigDict) -> optax.GradientTransformation:
    o = config.optim
    tx = optax.adamw(learning_rate_schedule(config), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                     mask=decay_mask)
    if o.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), tx)
    return tx


def logit_scale_bounds(similarity: str, low: float, high: float) -> tuple[float, float]:
    """Bounds on the logit-scale parameter: the scale itself for WPCE, its log for the exp-parameterised CLIP."""
    return (low, high) if similarity == "wpce" else (math.log(low), math.log(high))


def clip_logit_scale(params, similarity: str, low: float, high: float):
    lo, hi = logit_scale_bounds(similarity, low, high)
    return {**params, "logit_scale": jnp.clip(params["logit_scale"], lo, hi)}
