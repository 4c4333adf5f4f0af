"""MaskFormer's transformer decoder (DETR-style, post-norm) and mask embedding head.

N learned queries cross-attend to the backbone's coarsest map; every layer's output (after a shared final
LayerNorm) is a set of N mask features, and its dot product with the per-pixel embeddings gives N masks,
so every layer can be supervised (MaskFormer's auxiliary losses).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ovseg_jax.models.layers import DType, Mlp, sine_position_encoding


class DecoderLayer(nn.Module):
  """Self-attention, cross-attention to memory, FFN; each followed by dropout, residual add and LayerNorm."""
  dim: int
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, tgt: jax.Array, query_pos: jax.Array, memory: jax.Array, memory_pos: jax.Array,
               deterministic: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    attn_kw = dict(num_heads=self.num_heads, dropout_rate=self.dropout_rate, deterministic=deterministic,
                   **kw)
    drop = lambda x: nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    norm = lambda name: nn.LayerNorm(epsilon=1e-5, name=name, **kw)

    q = tgt + query_pos  # Positions go into queries and keys, never into values.
    tgt = norm("norm1")(tgt + drop(nn.MultiHeadDotProductAttention(name="self_attn", **attn_kw)(q, q, tgt)))
    cross = nn.MultiHeadDotProductAttention(name="cross_attn", **attn_kw)(
        tgt + query_pos, memory + memory_pos, memory)
    tgt = norm("norm2")(tgt + drop(cross))
    ffn = Mlp(self.mlp_dim, self.dim, activation="relu", dropout_rate=self.dropout_rate, name="ffn", **kw)
    return norm("norm3")(tgt + drop(ffn(tgt, deterministic=deterministic)))


class TransformerDecoder(nn.Module):
  """memory [B, h, w, C] -> mask features of every layer [num_layers, B, num_queries, dim].

  The memory is projected to `dim` (1x1 conv) and its keys get DETR's normalised 2D sine encoding; the
  targets start at zero and the learned query embeddings act as query positions.
  """
  num_queries: int
  dim: int
  num_heads: int
  mlp_dim: int
  num_layers: int
  dropout_rate: float = 0.0
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, memory: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, h, w, _ = memory.shape
    memory = nn.Dense(self.dim, name="input_proj", **kw)(memory).reshape(b, h * w, self.dim)
    memory_pos = sine_position_encoding(h, w, self.dim // 2).reshape(1, h * w, self.dim).astype(self.dtype)
    query_pos = self.param("query_embedding", nn.initializers.normal(1.0), (self.num_queries, self.dim),
                           self.param_dtype)
    query_pos = jnp.broadcast_to(query_pos.astype(self.dtype), (b, self.num_queries, self.dim))
    tgt = jnp.zeros_like(query_pos)
    final_norm = nn.LayerNorm(epsilon=1e-5, name="norm", **kw)  # Shared by all layers' outputs.
    outputs = []
    for i in range(self.num_layers):
      tgt = DecoderLayer(self.dim, self.num_heads, self.mlp_dim, self.dropout_rate, name=f"layer_{i}",
                         **kw)(tgt, query_pos, memory, memory_pos, deterministic=not train)
      outputs.append(final_norm(tgt))
    return jnp.stack(outputs)


class MaskHead(nn.Module):
  """MLP mask embedding (ReLU between layers) and masks = <embedding, per-pixel embedding>."""
  dim: int
  mask_dim: int
  num_layers: int = 3
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  def setup(self):
    self.mlp = Mlp(self.dim, self.mask_dim, num_layers=self.num_layers, activation="relu", dtype=self.dtype,
                   param_dtype=self.param_dtype)

  def embed(self, mask_features: jax.Array) -> jax.Array:
    """[..., N, dim] -> [..., N, mask_dim]."""
    return self.mlp(mask_features)

  def __call__(self, mask_features: jax.Array, pixel_embeddings: jax.Array) -> jax.Array:
    """mask_features [..., B, N, dim], pixel_embeddings [B, h, w, mask_dim] -> logits [..., B, N, h, w]."""
    return jnp.einsum("...bnc,bhwc->...bnhw", self.embed(mask_features), pixel_embeddings)
