"""The pre-norm transformer stack shared by the image tower (ViT) and the text tower.

Both towers are the same computation once their tokens are embedded: `depth` residual blocks
    x = x + Attention(LayerNorm(x), mask)
    x = x + MLP(LayerNorm(x))
and a final LayerNorm. The towers differ only in how tokens are embedded and in the attention mask
(none for images, causal for text), so the stack takes the mask as an argument.

Precision: `dtype` is the compute dtype (float32 or bfloat16); parameters are always float32
(`param_dtype`), which is what mixed-precision training with a float32 optimiser state expects. The attention
softmax is taken in float32 whatever the compute dtype (bfloat16's 8-bit mantissa would round the attention
weights of long sequences), as the reference release does.

Attention implementations (the `attention` field of the modules below; the config's model.attention is resolved
to one of them by `model_config.resolve_attention`):
    "flax"   Flax's own dot_product_attention (mask array; query scaled before the product, logits in the compute
             dtype, softmax in float32, the weighted sum of values in float32).
    "xla"    jax.nn.dot_product_attention(implementation="xla"): logits and softmax in float32, the weights cast
             back to the compute dtype for the weighted sum; a causal mask is built by JAX from is_causal.
    "cudnn"  jax.nn.dot_product_attention(implementation="cudnn"): cuDNN's fused (flash) kernel on NVIDIA GPUs,
             bfloat16/float16 only; a causal mask is the kernel's own (is_causal), so no [L, L] mask is read.
The three compute the same function (to float32 rounding; bfloat16 rounds the attention weights at different
places) and none has parameters, so checkpoints are interchangeable.
"""
import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from wpce_jax.parallel import gather_fsdp

# Xavier-uniform for every matrix, as in the reference ViT and CLIP implementations; Flax's default
# lecun-normal would scale activations differently at initialisation.
_KERNEL_INIT = nn.initializers.xavier_uniform()


ACTIVATIONS = ("gelu", "quick_gelu")
# The attention implementations of the module docstring.
ATTENTIONS = ("flax", "xla", "cudnn")
# What a rematerialised block keeps for the backward pass: "none" (no remat: everything), "full" (only its input;
# the backward pass recomputes the block), "save_dots" (the outputs of the dense layers' matmuls; the attention
# scores, softmax, norms and activations are recomputed).
REMAT_POLICIES = {"none": None, "full": None, "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def quick_gelu(x: jax.Array) -> jax.Array:
    """x * sigmoid(1.702 x): OpenAI CLIP's GELU approximation, which its text tower (and the reference release's)
    was trained with."""
    return x * jax.nn.sigmoid(1.702 * x)


def _jax_attention(query, key, value, mask=None, *, implementation, is_causal):
    """Flax's attention_fn interface on jax.nn.dot_product_attention: query [B, L, heads, head_dim], key and value
    [B, S, heads, head_dim] (the compute dtype), mask None or bool broadcastable to [B, heads, L, S] ->
    [B, L, heads, head_dim]. Flax passes only the keyword arguments this signature names (mask); what it leaves out
    is dropout, which the towers never use."""
    return jax.nn.dot_product_attention(query, key, value, mask=mask, is_causal=is_causal,
                                        implementation=implementation)


def attention_fn(attention: str, causal: bool):
    """The attention_fn for nn.MultiHeadDotProductAttention: None (Flax's default) for "flax", else
    jax.nn.dot_product_attention with the given implementation and is_causal=causal."""
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    if attention == "flax":
        return None
    return functools.partial(_jax_attention, implementation=attention, is_causal=causal)


class MlpBlock(nn.Module):
    """Two-layer MLP: [..., width] -> [..., mlp_dim] -> [..., width].

    activation "gelu": exact (erf) GELU, PyTorch's nn.GELU of the reference ViT/open_clip towers (Flax's default is
    the tanh approximation); "quick_gelu": `quick_gelu`.
    """
    mlp_dim: int
    dtype: jnp.dtype = jnp.float32
    activation: str = "gelu"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        x = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=jnp.float32,
                     kernel_init=_KERNEL_INIT, name="fc1")(x)
        x = quick_gelu(x) if self.activation == "quick_gelu" else nn.gelu(x, approximate=False)
        return nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32,
                        kernel_init=_KERNEL_INIT, name="fc2")(x)


class EncoderBlock(nn.Module):
    """One pre-norm residual block: [B, L, width] -> [B, L, width].

    causal: query i attends to keys j <= i only (the kernels' is_causal where the implementation has one).
    mask: None or bool broadcastable to [B, heads, L, L], True where query i may attend to key j (with causal, both
    apply).
    attention: an ATTENTIONS name (see the module docstring); it changes no parameter.
    """
    num_heads: int
    mlp_dim: int
    ln_eps: float
    dtype: jnp.dtype = jnp.float32
    activation: str = "gelu"
    scan_form: bool = False  # return (x, None): the (carry, output) form nn.scan wants
    causal: bool = False
    attention: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None):
        fn = attention_fn(self.attention, self.causal)
        if fn is None:  # Flax's attention takes the causal mask as an array
            if self.causal:
                causal = nn.make_causal_mask(jnp.ones((1, x.shape[1]), jnp.int32), dtype=jnp.bool_)
                mask = causal if mask is None else nn.combine_masks(mask, causal)
            extra = {}
        else:
            extra = {"attention_fn": fn}
        y = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, param_dtype=jnp.float32, name="ln_attn")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, param_dtype=jnp.float32,
            kernel_init=_KERNEL_INIT, deterministic=True, force_fp32_for_softmax=True, name="attn",
            **extra)(y, mask=mask)
        x = x + y
        y = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, param_dtype=jnp.float32, name="ln_mlp")(x)
        y = MlpBlock(self.mlp_dim, dtype=self.dtype, activation=self.activation, name="mlp")(y)
        return (x + y, None) if self.scan_form else x + y


class TransformerStack(nn.Module):
    """`depth` EncoderBlocks followed by the final LayerNorm: [B, L, width] -> [B, L, width] (compute dtype).

    scan: the blocks run under `nn.scan`, one block's program applied `depth` times to parameters stacked on a
    leading axis (params "blocks/..." of shape [depth, ...]), so compile time and program size do not grow
    with depth; otherwise a Python loop over blocks named "block_0", "block_1", ... The two compute the same
    function of the same weights (stack the loop's block parameters to convert).
    causal, attention: as EncoderBlock's (causal: the text tower's mask, given as a flag so that fused kernels
    skip the masked half instead of reading an [L, L] mask).
    remat: a REMAT_POLICIES name: "full" or "save_dots" wrap each block in `nn.remat`, so that the backward pass
    recomputes what the policy does not keep (memory for compute; outputs and gradients unchanged). The parameter
    tree does not depend on `remat`.
    """
    depth: int
    num_heads: int
    mlp_dim: int
    ln_eps: float
    dtype: jnp.dtype = jnp.float32
    remat: str = "none"
    activation: str = "gelu"
    scan: bool = False
    causal: bool = False
    attention: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be one of {tuple(REMAT_POLICIES)}, got {self.remat!r}")
        block_cls = EncoderBlock
        if self.remat != "none":  # under scan, the loop already keeps XLA from merging the recomputation away
            block_cls = nn.remat(EncoderBlock, policy=REMAT_POLICIES[self.remat], prevent_cse=not self.scan)
        block = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, ln_eps=self.ln_eps, dtype=self.dtype,
                     activation=self.activation, causal=self.causal, attention=self.attention)
        # Under FSDP each block gathers its own weights where it runs (inside the scan's loop: one layer at a time).
        block_cls = nn.map_variables(block_cls, "params", trans_in_fn=gather_fsdp, init=self.is_initializing())
        if self.scan:
            blocks = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                             in_axes=nn.broadcast, length=self.depth)
            x, _ = blocks(**block, scan_form=True, name="blocks")(x, mask)
        else:
            for i in range(self.depth):
                x = block_cls(**block, name=f"block_{i}")(x, mask)
        return nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, param_dtype=jnp.float32, name="ln_final")(x)
