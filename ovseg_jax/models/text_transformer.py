"""CLIP-style causal text transformer; the sentence feature is the final LayerNorm's output at [EOS]."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ovseg_jax.models.layers import DType, PreNormBlock


class TextTransformer(nn.Module):
  """Token + learned position embeddings, causal pre-LN blocks, final LayerNorm, pooled at [EOS].

  [EOS] is found as the argmax of the token ids: CLIP's end-of-text id (49407) is the largest in its
  vocabulary, so the argmax is its first occurrence.
  """
  width: int
  depth: int
  num_heads: int
  vocab_size: int = 49408
  context_length: int = 77
  mlp_ratio: int = 4
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    """tokens int [B, L] with L <= context_length -> [B, width]."""
    if tokens.ndim != 2 or tokens.shape[1] > self.context_length:
      raise ValueError(f"TextTransformer: tokens of shape {tokens.shape} must be [B, L] with L <= "
                       f"context_length={self.context_length}; tokenize with a shorter context length.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    length = tokens.shape[1]
    x = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                 name="token_embedding", **kw)(tokens)
    pos = self.param("pos_embedding", nn.initializers.normal(0.01), (self.context_length, self.width),
                     self.param_dtype)
    x = x + pos[:length].astype(self.dtype)
    causal = jnp.tril(jnp.ones((length, length), bool))[None, None]  # [1, 1, L, L]: attend to self and left.
    for i in range(self.depth):
      x = PreNormBlock(self.num_heads, self.mlp_ratio * self.width, layer_norm_eps=1e-5, name=f"block_{i}",
                       **kw)(x, mask=causal)
    x = nn.LayerNorm(epsilon=1e-5, name="ln_final", **kw)(x)
    eos = jnp.argmax(tokens, axis=-1)
    return x[jnp.arange(x.shape[0]), eos]
