"""Every random stream of a run, and the key that names each one.

A run's randomness is a function of `config.seed` alone, so a run is reproducible and resumes exactly:

- JAX keys, all folded off the root key `root_key(seed)` (`jax.random.key(config.seed)`, whose key data the
  TrainState keeps as `rng` and the checkpoint saves) with one stream number each:
    * parameter initialisation: `init_key(root)` = fold_in(root, INIT_STREAM);
    * the training RFF frequencies, fresh every step: `train_rff_key(root, step)`
      = fold_in(fold_in(root, TRAIN_RFF_STREAM), step), so identical on every device and process;
    * the evaluation RFF draw, fixed for the run and saved with the checkpoint: `eval_rff_key(root)`
      = fold_in(root, EVAL_RFF_STREAM);
    * the extra evaluation draws averaged over when `eval.rff_draws` > 1: `eval_rff_draw_key(root, r)`
      = fold_in(eval_rff_key(root), r) for r = 1, 2, ... (draw 0 is the checkpoint's own, above).
  wpce_jax/similarity.py turns these keys into RFF draws (wpce_jax/kernels.sample_rff splits each key further).
- The data, keyed by numpy generators rather than JAX keys (wpce_jax/data/pipeline.py): the training order is a
  permutation per epoch seeded by (seed, epoch) (wpce_jax/data/class_balanced.py for class-balanced batches), and
  the crops and two-view augmentation of global example position g come from an RNG keyed by (seed, g) alone.
- Not keyed by the run's seed: the linear probe's validation split (a fixed seed, wpce_jax/evaluate/linear_probe.py)
  and the built-in digits dataset's train/test split (wpce_jax/data/digits.py).

The stream numbers and fold-in chains are part of a run's identity: changing one changes every checkpointed run's
evaluation draw and any resumed run's RFF frequencies. Add a new stream with a new number; never renumber.
"""
import jax

INIT_STREAM, TRAIN_RFF_STREAM, EVAL_RFF_STREAM = 0, 1, 2


def root_key(seed: int) -> jax.Array:
    """The run's root key, from `config.seed`."""
    return jax.random.key(seed)


def init_key(root: jax.Array) -> jax.Array:
    """Parameter initialisation."""
    return jax.random.fold_in(root, INIT_STREAM)


def train_rff_key(root: jax.Array, step) -> jax.Array:
    """The training RFF draw of train step `step` (an int or a traced int32 scalar)."""
    return jax.random.fold_in(jax.random.fold_in(root, TRAIN_RFF_STREAM), step)


def eval_rff_key(root: jax.Array) -> jax.Array:
    """The run's fixed evaluation RFF draw (saved with the checkpoint)."""
    return jax.random.fold_in(root, EVAL_RFF_STREAM)


def eval_rff_draw_key(root: jax.Array, r: int) -> jax.Array:
    """The r-th extra evaluation RFF draw (r >= 1; draw 0 is the one from `eval_rff_key`)."""
    if r < 1:
        raise ValueError(f"extra evaluation draws are numbered from 1 (draw 0 is eval_rff_key), got {r}")
    return jax.random.fold_in(eval_rff_key(root), r)


__all__ = ["INIT_STREAM", "TRAIN_RFF_STREAM", "EVAL_RFF_STREAM", "root_key", "init_key", "train_rff_key",
           "eval_rff_key", "eval_rff_draw_key"]
