"""Flax towers: ViT image encoder, causal text encoder, point-cloud heads, and the dual encoder built from a config."""
from wpce_jax.logit_scale import value as logit_scale_value
from wpce_jax.models.heads import PointCloudHead, soft_clip
from wpce_jax.models.text import TextTransformer, end_positions, sequel_token_ids
from wpce_jax.models.model_config import dummy_inputs, init_params, make_model, validate_model_config
from wpce_jax.models.towers import DualEncoder
from wpce_jax.models.vit import VIT_SIZES, VisionTransformer, ViTDims, parse_variant

__all__ = ["PointCloudHead", "soft_clip", "TextTransformer", "end_positions", "sequel_token_ids",
           "DualEncoder", "dummy_inputs", "init_params", "logit_scale_value", "make_model",
           "validate_model_config", "VIT_SIZES", "VisionTransformer", "ViTDims", "parse_variant"]
