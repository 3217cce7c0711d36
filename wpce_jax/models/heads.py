"""Point-cloud head: final-normed tower tokens [B, M, width] -> PointCloud(points [B, M, d], weights [B, M]).

WPCE: every token is a point. Its vector is a linear projection width -> d; its weight is a linear map
width -> 1 squashed by `alpha * tanh(x / alpha)` (alpha = 100 in the paper): roughly the identity for
|x| << alpha, bounded by alpha so that one weight cannot blow up the kernel sum, and sign-preserving
(negative weights matter, per the paper's ablation, whose positive-only variant `alpha * sigmoid(x / alpha)`
is `weight_activation="sigmoid"`).

CLIP baseline (`with_weights=False`): the caller passes the one pooled token per input ([B, 1, width]: class
token or end-of-text token); its weight is 1, so the cloud similarity reduces to cosine similarity.

The head computes in float32 whatever the tower's compute dtype: it is cheap (M x width x d) and the kernels
and loss downstream want float32 points and weights.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from wpce_jax.pointcloud import PointCloud


def soft_clip(x: jax.Array, alpha: float) -> jax.Array:
    """alpha * tanh(x / alpha): elementwise, values in (-alpha, alpha), slope 1 at 0."""
    return alpha * jnp.tanh(x / alpha)


def scaled_sigmoid(x: jax.Array, alpha: float) -> jax.Array:
    """alpha * sigmoid(x / alpha): elementwise, values in (0, alpha). Positive weights only: the paper's ablation
    (its section 6.4, the release's ScaledSigmoid), which scores worse than tanh's signed weights."""
    return alpha * jax.nn.sigmoid(x / alpha)


# model.weight_activation -> the squashing of the raw point weights.
WEIGHT_ACTIVATIONS = {"tanh": soft_clip, "sigmoid": scaled_sigmoid}


class PointCloudHead(nn.Module):
    """tokens [B, M, width] -> PointCloud(points [B, M, embed_dim] f32, weights [B, M] f32, mask None).

    The point projection has no bias, like CLIP's `proj` (points are L2-normalised downstream, and a shared
    bias would only pull every point the same way). The weight projection has one unless `weight_bias` is False
    (the reference release has none).
    """
    embed_dim: int
    weight_alpha: float = 100.0
    with_weights: bool = True
    weight_bias: bool = True
    weight_activation: str = "tanh"  # WEIGHT_ACTIVATIONS

    @nn.compact
    def __call__(self, tokens: jax.Array) -> PointCloud:
        tokens = tokens.astype(jnp.float32)
        points = nn.Dense(self.embed_dim, use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32,
                          kernel_init=nn.initializers.xavier_uniform(), name="points")(tokens)
        if self.with_weights:
            raw = nn.Dense(1, use_bias=self.weight_bias, dtype=jnp.float32, param_dtype=jnp.float32,
                           name="weights")(tokens)[..., 0]
            weights = WEIGHT_ACTIVATIONS[self.weight_activation](raw, self.weight_alpha)
        else:
            weights = jnp.ones(tokens.shape[:-1], jnp.float32)
        return PointCloud(points=points, weights=weights, mask=None)
