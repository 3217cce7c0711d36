"""The dual encoder: a ViT image tower and a causal text tower, each ending in a point-cloud head.

    images [B, H, W, 3] -> encode_image -> PointCloud(points [B, M_img, d], weights [B, M_img], mask None)
    tokens [B, L] int32 -> encode_text  -> PointCloud(points [B, M_txt, d], weights [B, M_txt], mask None)
(images: uint8 pixels, normalised inside the ViT, or float already ImageNet-normalised)

similarity "wpce": M_img = 1 + (H/p)(W/p) (class token and every patch), M_txt = L (every position, padding
included); weights alpha * tanh(x / alpha). similarity "clip": M = 1 (class token; end-of-text token), weights 1.
Outputs are float32 whatever the compute dtype.

Build one from a config with `wpce_jax.models.model_config.make_model` (which also documents and validates every
config field a model reads).

Logit scale: the model owns the scalar parameter "logit_scale" (and "logit_bias" for objective "sigmoid"); their
parameterisation lives in wpce_jax.logit_scale. The other objectives have no "logit_bias", so the parameter trees
of their runs (and their checkpoints) are unchanged.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from wpce_jax import logit_scale
from wpce_jax.logit_scale import SIGMOID_INIT_BIAS, SIMILARITIES
from wpce_jax.models.heads import PointCloudHead
from wpce_jax.models.text import TextTransformer, pool_positions
from wpce_jax.models.vit import VisionTransformer
from wpce_jax.pointcloud import PointCloud

OBJECTIVES = ("infonce", "sigmoid", "nce")  # the top-level config field `objective`: it picks the logit parameters


class DualEncoder(nn.Module):
    """Image and text towers with point-cloud heads and the logit-scale parameter.

    Build it with `model_config.make_model(config)`; the towers are ordinary submodule attributes, so a notebook can also
    assemble one by hand.
    """
    image_encoder: VisionTransformer
    text_encoder: TextTransformer
    embed_dim: int
    similarity: str = "wpce"
    weight_alpha: float = 100.0
    objective: str = "infonce"
    weight_bias: bool = True
    weight_activation: str = "tanh"  # heads.WEIGHT_ACTIVATIONS
    text_pool: str = "first_eot"     # text.POOLS: the position the "clip" text embedding reads

    def setup(self):
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        with_weights = self.similarity == "wpce"
        head = dict(embed_dim=self.embed_dim, weight_alpha=self.weight_alpha, with_weights=with_weights,
                    weight_bias=self.weight_bias, weight_activation=self.weight_activation)
        self.image_head = PointCloudHead(**head)
        self.text_head = PointCloudHead(**head)
        init_value = logit_scale.to_parameter(logit_scale.init_scale(self.objective), self.similarity)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(init_value), (), jnp.float32)
        if self.objective == "sigmoid":
            self.logit_bias = self.param("logit_bias", nn.initializers.constant(SIGMOID_INIT_BIAS), (), jnp.float32)

    def encode_image(self, images: jax.Array) -> PointCloud:
        """images [B, H, W, 3] (uint8 pixels, or float already ImageNet-normalised) -> PointCloud, points [B, M, d]
        f32, weights [B, M] f32, mask None; M = 1 + (H/p)(W/p) for "wpce" (class token first), 1 (class token)
        for "clip"."""
        return self.encode_image_and_pool(images)[0]

    def encode_image_and_pool(self, images: jax.Array) -> tuple[PointCloud, jax.Array]:
        """(the PointCloud of `encode_image`, pooled [B, width] f32): the mean over points of weight x final-normed
        token, before the point projection (the linear-probe feature of the reference; for "clip" the class
        token). Under jit the pooled output costs nothing when unused."""
        tokens = self.image_encoder(images)
        if self.similarity == "clip":
            tokens = tokens[:, :1]
        cloud = self.image_head(tokens)
        return cloud, jnp.mean(cloud.weights[..., None] * tokens.astype(jnp.float32), axis=1)

    def encode_text(self, tokens: jax.Array) -> PointCloud:
        """tokens [B, L] int32 -> PointCloud, points [B, M, d] f32, weights [B, M] f32, mask None;
        M = L for "wpce" (padding positions included), 1 (the end-of-text position) for "clip"."""
        hidden = self.text_encoder(tokens)
        if self.similarity == "clip":
            end = pool_positions(tokens, self.text_encoder.eot_id, self.text_pool)
            hidden = jnp.take_along_axis(hidden, end[:, None, None], axis=1)
        return self.text_head(hidden)

    def __call__(self, images: jax.Array, tokens: jax.Array) -> tuple[PointCloud, PointCloud]:
        """(images [B, H, W, 3], tokens [B', L]) -> (image PointCloud, text PointCloud)."""
        return self.encode_image(images), self.encode_text(tokens)
