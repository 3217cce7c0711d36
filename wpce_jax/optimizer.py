"""AdamW with the paper's decay mask and schedule and optional clipping (the logit-scale bound: wpce_jax.logit_scale).

Schedule: linear warm-up from `optim.init_lr` to `optim.lr` over `optim.warmup_steps`, then cosine to `optim.end_lr`
at update `schedule_steps` (the horizon planned when the run started, run_data.resolve; the update there runs just
above `optim.end_lr` and any later one at it: a run extended past its plan goes on at the final rate, a shortened
one stops early on the same curve). There is one update per train step
whatever `optim.accum_steps` (which only splits a step's batch into micro-batches, train_step.make_grad_fn), so the
schedule counts train steps. Weight decay touches matrices only: dense kernels (attention projections included),
token and position embeddings; never biases (the attention q/k/v biases are [heads, head_dim] but still biases),
norm scales, the class token or the logit scale.

Frozen parameters (`optim.frozen`, a regular expression over '/'-joined parameter paths such as
"image_encoder/encoder/block_0/attn/query/kernel"): a parameter is frozen when the expression matches the whole of its
path or of one of its ancestors' ("image_.*" and "image_encoder" both freeze the image encoder). They get no
update, no weight decay and no optimiser state (`optax.partition` with `optax.set_to_zero`), their gradient is
never computed (`stop_frozen` in the train step), and gradient clipping sees the trained parameters' norm only.
"""
import math
import re

import jax
import optax
from ml_collections import ConfigDict

from wpce_jax.errors import ConfigError
from wpce_jax.logit_scale import clip as clip_logit_scale  # noqa: F401 (re-exported)


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


def param_path(path) -> str:
    """A key path of the parameter tree -> "image_encoder/encoder/block_0/attn/query/kernel"."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def frozen_pattern(config: ConfigDict) -> "re.Pattern | None":
    """`optim.frozen` compiled (None when unset or empty); a ConfigError naming the field when it does not compile."""
    pattern = config.optim.get("frozen")
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"config field optim.frozen = {pattern!r} is not a regular expression ({e}); give one "
                          f"over '/'-joined parameter paths, e.g. 'image_.*' (docs/architecture.md)") from None


def is_frozen(pattern: "re.Pattern | None", path: str) -> bool:
    """Whether `pattern` matches the whole of `path` or of one of its ancestors' paths."""
    if pattern is None:
        return False
    parts = path.split("/")
    return any(pattern.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1))


def frozen_mask(params, config: ConfigDict):
    """A tree like `params` of bools: True where `optim.frozen` freezes the parameter."""
    pattern = frozen_pattern(config)
    return jax.tree_util.tree_map_with_path(lambda path, _: is_frozen(pattern, param_path(path)), params)


def stop_frozen(params, config: ConfigDict):
    """`params` with the frozen ones behind stop_gradient: their gradient is exactly zero and XLA drops the work
    that only fed it (the whole backward pass of a frozen tower)."""
    pattern = frozen_pattern(config)
    if pattern is None:
        return params
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jax.lax.stop_gradient(x) if is_frozen(pattern, param_path(path)) else x, params)


def count_frozen(params, config: ConfigDict) -> tuple[int, int]:
    """(frozen, trained) parameter counts (scalars, not arrays); a ConfigError when `optim.frozen` is set but
    matches no parameter (a misspelt path would otherwise silently train everything)."""
    sizes = list(zip((math.prod(x.shape) for x in jax.tree.leaves(params)),
                     jax.tree.leaves(frozen_mask(params, config))))
    frozen = sum(n for n, m in sizes if m)
    if config.optim.get("frozen") and not any(m for _, m in sizes):
        groups = ", ".join(sorted(params))
        raise ConfigError(f"config field optim.frozen = {config.optim.frozen!r} matches no parameter; paths are "
                          f"'/'-joined from the top-level groups {groups} (e.g. 'image_.*' for a locked image "
                          f"tower)")
    return frozen, sum(n for n, _ in sizes) - frozen


def make_optimizer(config: ConfigDict) -> optax.GradientTransformation:
    o = config.optim
    tx = optax.adamw(learning_rate_schedule(config), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                     mask=decay_mask)
    if o.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), tx)
    if frozen_pattern(config) is None:
        return tx  # the state tree of a run without frozen parameters stays what it always was
    labels = lambda params: jax.tree.map(lambda m: "frozen" if m else "trained", frozen_mask(params, config))  # noqa: E731
    return optax.partition({"trained": tx, "frozen": optax.set_to_zero()}, labels)
