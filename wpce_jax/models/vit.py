"""Vision Transformer image tower: images [B, H, W, 3] -> final-normed tokens [B, 1 + (H/p)(W/p), width].

Token 0 is the class token, the rest are the patches in row-major order. Named variants follow the ViT paper
("Ti/16", "S/16", "B/16", "L/14", ...: size name, a slash, the patch size); `VisionTransformer` itself takes the
explicit dimensions so that a tiny test model needs no special case.
"""
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from wpce_jax.data.image_ops import normalize
from wpce_jax.models.transformer import TransformerStack


class ViTDims(NamedTuple):
    """The dimensions a named variant fixes."""
    width: int
    depth: int
    heads: int
    mlp_dim: int


VIT_SIZES = {
    "Ti": ViTDims(width=192, depth=12, heads=3, mlp_dim=768),
    "S": ViTDims(width=384, depth=12, heads=6, mlp_dim=1536),
    "B": ViTDims(width=768, depth=12, heads=12, mlp_dim=3072),
    "L": ViTDims(width=1024, depth=24, heads=16, mlp_dim=4096),
}


def parse_variant(variant: str) -> tuple[ViTDims, int]:
    """"B/16" -> (ViTDims of B, patch size 16). Raises ValueError naming the variant and the known sizes."""
    known = ", ".join(f"{name}/<patch>" for name in VIT_SIZES)
    if not isinstance(variant, str) or variant.count("/") != 1:
        raise ValueError(f"unknown ViT variant {variant!r}; expected one of {known} (e.g. 'B/16')")
    size, patch = variant.split("/")
    if size not in VIT_SIZES or not patch.isdigit() or int(patch) <= 0:
        raise ValueError(f"unknown ViT variant {variant!r}; expected one of {known} (e.g. 'B/16')")
    return VIT_SIZES[size], int(patch)


def check_tiles(what: str, size: int, patch_size: int, error=ValueError) -> int:
    """Patches along one side of `size` pixels; `error` naming `what` when the side does not tile exactly (a
    ragged edge would be silently dropped by the strided convolution)."""
    if size % patch_size:
        raise error(f"{what} is not divisible by the ViT patch size {patch_size}")
    return size // patch_size


class VisionTransformer(nn.Module):
    """ViT with class token, learned position embeddings, pre-norm blocks and a final LayerNorm.

    Call: images [B, H, W, 3], uint8 pixels (ImageNet-normalised here, image_ops.normalize) or already normalised
    float (any float dtype; cast to `dtype`) -> tokens [B, 1 + N, width] in `dtype`,
    N = (H / patch_size) * (W / patch_size). H and W must be multiples of patch_size (ValueError otherwise,
    raised at trace time since shapes are static). The position table is sized from the input shape, so the
    parameters depend on the image size used at initialisation.
    """
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    ln_eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    remat: str = "none"  # transformer.REMAT_POLICIES
    scan: bool = False   # blocks under nn.scan (transformer.TransformerStack)
    # What distinguishes the sources of imported weights (the defaults are timm's ViT, the reference release's):
    ln_pre: bool = False        # a LayerNorm after the position embedding, before the blocks (OpenAI CLIP's ViT)
    patch_bias: bool = True     # the patch embedding has a bias (OpenAI CLIP's conv1 has none)
    activation: str = "gelu"    # MLP activation, transformer.ACTIVATIONS ("quick_gelu": OpenAI CLIP's ViT)
    pixel_stats: str = "imagenet"  # uint8 pixels normalised with image_ops.PIXEL_STATS[pixel_stats]
    attention: str = "flax"  # transformer.ATTENTIONS

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [B, H, W, 3], got shape {images.shape}")
        if images.dtype == jnp.uint8:  # pixels as the input pipeline hands them: normalised here, on the device
            images = normalize(images, self.pixel_stats)
        _, height, width_px, _ = images.shape
        for name, size in (("height", height), ("width", width_px)):
            check_tiles(f"image {name} {size}", size, self.patch_size)
        # A strided convolution is the patch split followed by one shared linear map.
        x = nn.Conv(self.width, kernel_size=(self.patch_size, self.patch_size),
                    strides=(self.patch_size, self.patch_size), padding="VALID", use_bias=self.patch_bias,
                    dtype=self.dtype, param_dtype=jnp.float32, name="patch_embed")(images)
        batch, gh, gw, _ = x.shape
        x = x.reshape(batch, gh * gw, self.width)
        cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.width), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, self.width)), x], axis=1)
        pos = self.param("pos_embed", nn.initializers.normal(stddev=0.02), (1, x.shape[1], self.width),
                         jnp.float32)
        x = x + pos.astype(self.dtype)
        if self.ln_pre:
            x = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, param_dtype=jnp.float32, name="ln_pre")(x)
        return TransformerStack(depth=self.depth, num_heads=self.heads, mlp_dim=self.mlp_dim, ln_eps=self.ln_eps,
                                dtype=self.dtype, remat=self.remat, scan=self.scan, activation=self.activation,
                                attention=self.attention, name="encoder")(x)
