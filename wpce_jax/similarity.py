"""How the trainer and evaluators turn a tower's PointCloud into the vector that is compared: one place for both.

"wpce": the point-cloud feature map with the config's kernel (`wpce.kernel`, `wpce.scale`, `wpce.num_features`,
`wpce.a_lin`, `wpce.a_rff`), so that phi(P) . phi(Q) is the WPCE similarity. "clip": the single point, unit
normalised, so that the dot product is the cosine similarity. Training draws fresh RFF frequencies every step from
the step's key; evaluation uses one fixed draw that is saved with the checkpoint. The keys come from
wpce_jax/rng.py, which lists every random stream of a run.
"""
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from wpce_jax.kernels import RFF, sample_rff
from wpce_jax.parallel import apply_gathered
from wpce_jax.pointcloud import PointCloud, feature_map
from wpce_jax.rng import eval_rff_draw_key, eval_rff_key, train_rff_key


def uses_rff(config: ConfigDict) -> bool:
    return config.model.similarity == "wpce" and config.wpce.a_rff > 0


def draw_rff(key: jax.Array, config: ConfigDict) -> Optional[RFF]:
    """The RFF draw for `key` ([D, d] frequencies), or None when the similarity needs none."""
    if not uses_rff(config):
        return None
    w = config.wpce
    return sample_rff(key, w.kernel, config.model.embed_dim, w.num_features, w.scale)


def train_rff(root_key: jax.Array, step: jax.Array, config: ConfigDict) -> Optional[RFF]:
    """Fresh frequencies for this step: a function of (seed, step) only, hence identical on every device."""
    return draw_rff(train_rff_key(root_key, step), config)


def eval_rff(root_key: jax.Array, config: ConfigDict) -> Optional[RFF]:
    return draw_rff(eval_rff_key(root_key), config)


def eval_rff_draws(root_key: jax.Array, saved: Optional[RFF], config: ConfigDict, count: int) -> Optional[RFF]:
    """`count` evaluation draws stacked on a leading axis ([count, D, d] frequencies): the checkpoint's saved
    draw first (so that one draw reproduces the run's numbers), then fresh ones from the evaluation key stream."""
    if saved is None:
        return None
    extra = [draw_rff(eval_rff_draw_key(root_key, r), config) for r in range(1, count)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), saved, *extra)


def embed(cloud: PointCloud, rff: Optional[RFF], config: ConfigDict) -> jax.Array:
    """PointCloud [B, M, d] -> the compared vector [B, F] (F = d + D for WPCE with RFF, d otherwise)."""
    if config.model.similarity == "clip":
        return feature_map(cloud, None, 1.0, 0.0)  # one point of weight 1: its unit vector
    return feature_map(cloud, rff, config.wpce.a_lin, config.wpce.a_rff)


def embed_draws(cloud: PointCloud, rffs: Optional[RFF], config: ConfigDict) -> jax.Array:
    """[B, R, F]: the compared vectors under each of the draws stacked on rffs' leading axis (R = 1 without RFF)."""
    if rffs is None:
        return embed(cloud, None, config)[:, None]
    return jax.vmap(lambda r: embed(cloud, r, config), out_axes=1)(rffs)


class Compared(NamedTuple):
    image: Optional[jax.Array]   # [B, F], or [B, R, F] with stacked draws; None without images
    text: Optional[jax.Array]    # [B', F], or [B', R, F]; None without tokens
    pooled: Optional[jax.Array]  # [B, width] f32: the linear-probe feature (DualEncoder.encode_image_and_pool)


def compared(model, config: ConfigDict, params, images=None, tokens=None, rff: Optional[RFF] = None,
             mesh=None, stacked: bool = False) -> Compared:
    """Parameters and inputs -> the compared vectors: the towers, then `embed`. The one path from a model to the
    vectors whose dot product is the similarity, for training, evaluation and loaded models.

    params: the inner parameter dict. images [B, H, W, 3], tokens [B', L] int32 (either may be None). rff: one
    draw, or with `stacked` draws stacked on a leading axis (`eval_rff_draws`), each vector then [.., R, F].
    mesh: the parameters may be FSDP-split over it and are gathered where used (parallel.apply_gathered, to be
    traced under jit); None applies them as they are (the train step, already inside the mesh). Under jit the
    pooled output costs nothing when unused.
    """
    def apply(inputs, method):
        if mesh is None:
            return model.apply({"params": params}, inputs, method=method)
        return apply_gathered(model, mesh, params, inputs, method)

    vectors = (lambda cloud: embed_draws(cloud, rff, config)) if stacked else (lambda cloud: embed(cloud, rff, config))
    image = text = pooled = None
    if images is not None:
        cloud, pooled = apply(images, "encode_image_and_pool")
        image = vectors(cloud)
    if tokens is not None:
        text = vectors(apply(tokens, "encode_text"))
    return Compared(image, text, pooled)
