"""CLIP-style causal text tower with "sequel" padding embeddings: tokens [B, L] -> tokens [B, L, width].

End of text. The end of a row is the FIRST position holding `eot_id`; every later position is padding,
whatever token it holds. A row with no `eot_id` (text truncated to the context) ends at its last position,
so it has no padding; this is also the position the CLIP baseline reads.

Sequel padding (WPCE). Every position is a point of the text cloud, padding included, so padding must not all
look alike: the k-th padding position (k = 1, 2, ... after the end) is embedded with row `vocab_size + k - 1`
of the embedding table instead of its token. The table therefore has `vocab_size + context_length` rows; a row
needs at most context_length - 1 sequels (eot at position 0), so one row is spare, kept for the paper's layout.

Token ids. Ids must lie in [0, vocab_size). Inside jit the model cannot check this, and a bad id fails quietly
in the embedding gather (`jnp.take`, mode "fill"): an id in [vocab_size, vocab_size + context_length) reads a
sequel row, a larger one gives NaN embeddings, a negative one counts from the end of the table. The tokenizers
only produce ids below their vocabulary size, which is the model's vocab_size (filled in from the tokenizer).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wpce_jax.models.transformer import TransformerStack


def end_positions(tokens: jax.Array, eot_id: int) -> jax.Array:
    """tokens [B, L] int -> [B] int32: the first position holding eot_id, or L - 1 where a row has none."""
    is_eot = tokens == eot_id
    first = jnp.argmax(is_eot, axis=-1).astype(jnp.int32)  # argmax returns the first True
    return jnp.where(jnp.any(is_eot, axis=-1), first, tokens.shape[-1] - 1)


def sequel_token_ids(tokens: jax.Array, vocab_size: int, eot_id: int) -> jax.Array:
    """tokens [B, L] int -> effective embedding ids [B, L] int32.

    Positions up to and including the end keep their token; the k-th position after the end gets
    vocab_size + k - 1.
    """
    positions = jnp.arange(tokens.shape[-1], dtype=jnp.int32)
    after_end = positions[None, :] - end_positions(tokens, eot_id)[:, None]  # k for padding, <= 0 otherwise
    return jnp.where(after_end > 0, vocab_size + after_end - 1, tokens.astype(jnp.int32))


def release_sequel_token_ids(tokens: jax.Array, vocab_size: int) -> jax.Array:
    """The reference release's rule, tokens [B, L] int -> [B, L] int32: every id-0 token counts as padding (its
    tokenizer pads with 0), and the k-th of them gets vocab_size + k - 1. It equals `sequel_token_ids` on rows
    padded with 0 after the end whose text holds no id 0; CLIP BPE's id 0 is "!", which the release embeds as
    padding even inside the text."""
    is_pad = tokens == 0
    count = jnp.cumsum(is_pad.astype(jnp.int32), axis=-1)
    return jnp.where(is_pad, vocab_size + count - 1, tokens.astype(jnp.int32))


POOLS = ("first_eot", "argmax")
SEQUEL_RULES = ("after_end", "zero_id")


def pool_positions(tokens: jax.Array, eot_id: int, pool: str) -> jax.Array:
    """tokens [B, L] int -> [B] int32, the position a one-point (CLIP) text embedding reads: "first_eot",
    `end_positions`; "argmax", the position of the largest id (OpenAI CLIP's rule: its eot id is the largest)."""
    if pool == "argmax":
        return jnp.argmax(tokens, axis=-1).astype(jnp.int32)
    return end_positions(tokens, eot_id)


class TextTransformer(nn.Module):
    """Causal transformer: tokens [B, L] int (L <= context_length) -> final-normed tokens [B, L, width] in `dtype`.

    Ids are first mapped by `sequel_token_ids`, then embedded, plus learned position embeddings; attention is
    causal, so the output at position t depends on the tokens at positions <= t only.
    """
    vocab_size: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    context_length: int
    eot_id: int
    ln_eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    remat: str = "none"  # transformer.REMAT_POLICIES
    scan: bool = False   # blocks under nn.scan (transformer.TransformerStack)
    activation: str = "gelu"  # "quick_gelu": the reference release's text tower
    # Embedding rows after the vocabulary for the sequel padding tokens: None means context_length (one spare);
    # context_length - 1 is the reference release's table; 0 turns sequel padding off (OpenAI CLIP: padding is
    # embedded as its own token id).
    null_rows: int | None = None
    sequel_rule: str = "after_end"  # SEQUEL_RULES: which positions are padding ("zero_id": the release's rule)
    attention: str = "flax"   # transformer.ATTENTIONS

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [B, L], got shape {tokens.shape}")
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}")
        length = tokens.shape[1]
        if length > self.context_length:
            raise ValueError(f"tokens have length {length} > context_length {self.context_length}")
        null_rows = self.context_length if self.null_rows is None else self.null_rows
        if null_rows == 0:
            ids = tokens.astype(jnp.int32)
        elif self.sequel_rule == "zero_id":
            ids = release_sequel_token_ids(tokens, self.vocab_size)
        else:
            ids = sequel_token_ids(tokens, self.vocab_size, self.eot_id)
        # Initialisation scales follow CLIP (token 0.02, position 0.01).
        x = nn.Embed(self.vocab_size + null_rows, self.width, dtype=self.dtype, param_dtype=jnp.float32,
                     embedding_init=nn.initializers.normal(stddev=0.02), name="token_embed")(ids)
        pos = self.param("pos_embed", nn.initializers.normal(stddev=0.01), (self.context_length, self.width),
                         jnp.float32)
        x = x + pos[:length].astype(self.dtype)
        return TransformerStack(depth=self.depth, num_heads=self.heads, mlp_dim=self.mlp_dim, ln_eps=self.ln_eps,
                                dtype=self.dtype, remat=self.remat, scan=self.scan, activation=self.activation,
                                causal=True, attention=self.attention, name="encoder")(x)
