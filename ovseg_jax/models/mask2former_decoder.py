"""Mask2Former's masked-attention transformer decoder (Cheng et al. 2022, `MultiScaleMaskedTransformerDecoder`).

Learnable query features and query position embeddings go through `num_layers` post-norm layers, each:
masked cross-attention to one of the pixel decoder's three maps (round-robin, coarsest first), self-attention
among the queries, then a ReLU FFN. The cross-attention of a layer only sees the pixels where the previous
prediction's mask (bilinearly resized to that map) has sigmoid >= 0.5; a query whose mask is empty there sees
every pixel. Predictions (class logits and mask logits = mask embeddings . mask features) are made from the
shared-LayerNorm queries before the first layer and after every layer.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ovseg_jax.models.resize import resize_bilinear
from ovseg_jax.models.layers import DType, Mlp, sine_position_encoding


def cross_attention_mask(mask_logits: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """bool [B, Q, h*w], True where a query may attend: mask logits [B, Q, H, W] resized to `out_hw`, kept
  where sigmoid >= 0.5; rows with no such pixel are opened entirely (no gradient flows through)."""
  resized = resize_bilinear(jax.lax.stop_gradient(mask_logits).astype(jnp.float32), out_hw, axes=(2, 3))
  allowed = (jax.nn.sigmoid(resized) >= 0.5).reshape(*mask_logits.shape[:2], -1)
  return allowed | ~jnp.any(allowed, axis=-1, keepdims=True)


class Attention(nn.Module):
  """Multi-head attention with separate q/k/v/out projections (PyTorch's nn.MultiheadAttention maths)."""
  num_heads: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """query [B, Q, C], key/value [B, K, C], mask [B, Q, K] (True = attend) -> [B, Q, C]."""
    c = query.shape[-1]
    head_dim = c // self.num_heads
    dense = functools.partial(nn.Dense, c, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.zeros)
    split = lambda x: x.reshape(*x.shape[:2], self.num_heads, head_dim)
    q = split(dense(name="q_proj")(query)) * head_dim ** -0.5
    k, v = split(dense(name="k_proj")(key)), split(dense(name="v_proj")(value))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    if mask is not None:
      logits = jnp.where(mask[:, None], logits, -jnp.inf)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(*query.shape[:2], c)
    return dense(name="out_proj")(out)


class MaskedAttentionDecoderLayer(nn.Module):
  """Masked cross-attention, self-attention, FFN; each added to the residual, then LayerNorm (post-norm)."""
  num_heads: int
  ffn_dim: int
  dropout_rate: float = 0.0
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, query_pos: jax.Array, memory: jax.Array, memory_pos: jax.Array,
               mask: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    dropout = functools.partial(nn.Dropout(self.dropout_rate), deterministic=not train)
    norm = functools.partial(nn.LayerNorm, epsilon=1e-5, **kw)
    y = Attention(self.num_heads, name="cross_attn", **kw)(x + query_pos, memory + memory_pos, memory, mask)
    x = norm(name="cross_attn_layer_norm")(x + dropout(y))
    q = x + query_pos
    y = Attention(self.num_heads, name="self_attn", **kw)(q, q, x)
    x = norm(name="self_attn_layer_norm")(x + dropout(y))
    y = Mlp(self.ffn_dim, x.shape[-1], activation="relu", dropout_rate=self.dropout_rate, name="ffn", **kw)(
        x, deterministic=not train)
    return norm(name="final_layer_norm")(x + dropout(y))


class MaskedAttentionDecoder(nn.Module):
  """(multi-scale maps [B, h_i, w_i, C_in] coarsest first, mask features [B, H, W, mask_dim]) -> predictions.

  Returns {'pred_logits': [B, Q, K+1] (absent when num_classes == 0), 'pred_masks': [B, Q, H, W],
  'query_embeddings': [B, Q, hidden_dim] (the normalised queries the heads read; a text classifier can
  replace the class head with them), 'mask_embeddings': [B, Q, mask_dim] (the mask head's output, which heads
  such as EBSeg's attention biases reuse), 'aux_outputs': the same dicts for the `num_layers` earlier predictions}
  from the last layer.
  """
  num_classes: int
  num_queries: int = 100
  hidden_dim: int = 256
  num_heads: int = 8
  ffn_dim: int = 2048
  num_layers: int = 9
  mask_dim: int = 256
  enforce_input_projection: bool = False
  dropout_rate: float = 0.0
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, multi_scale: Sequence[jax.Array], mask_features: jax.Array, train: bool = False) -> dict:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    d = self.hidden_dim
    num_levels = len(multi_scale)
    b = mask_features.shape[0]
    level_embed = self.param("level_embed", nn.initializers.normal(1.0), (num_levels, d), self.param_dtype)
    memories, memory_pos, sizes = [], [], []
    for i, x in enumerate(multi_scale):
      if x.shape[-1] != d or self.enforce_input_projection:
        x = nn.Conv(d, (1, 1), kernel_init=nn.initializers.xavier_uniform(), name=f"input_proj_{i}", **kw)(x)
      sizes.append(x.shape[1:3])
      memories.append(x.reshape(b, -1, d) + level_embed[i])
      memory_pos.append(sine_position_encoding(*x.shape[1:3], d // 2).reshape(1, -1, d).astype(x.dtype))
    query_pos = jnp.broadcast_to(self.param("query_embed", nn.initializers.normal(1.0), (self.num_queries, d),
                                            self.param_dtype), (b, self.num_queries, d)).astype(self.dtype)
    x = jnp.broadcast_to(self.param("query_feat", nn.initializers.normal(1.0), (self.num_queries, d),
                                    self.param_dtype), (b, self.num_queries, d)).astype(self.dtype)
    decoder_norm = nn.LayerNorm(epsilon=1e-5, name="decoder_norm", **kw)
    class_head = nn.Dense(self.num_classes + 1, name="class_embed", **kw) if self.num_classes else None
    mask_head = Mlp(d, self.mask_dim, num_layers=3, activation="relu", name="mask_embed", **kw)

    def predict(queries):
      embeddings = decoder_norm(queries)
      mask_embeddings = mask_head(embeddings)
      out = {"pred_masks": jnp.einsum("bqc,bhwc->bqhw", mask_embeddings, mask_features),
             "query_embeddings": embeddings, "mask_embeddings": mask_embeddings}
      if class_head is not None:
        out["pred_logits"] = class_head(embeddings)
      return out

    predictions = [predict(x)]
    for i in range(self.num_layers):
      level = i % num_levels
      mask = cross_attention_mask(predictions[-1]["pred_masks"], sizes[level])
      x = MaskedAttentionDecoderLayer(self.num_heads, self.ffn_dim, self.dropout_rate, name=f"layers_{i}", **kw)(
          x, query_pos, memories[level], memory_pos[level], mask, train)
      predictions.append(predict(x))
    return {**predictions[-1], "aux_outputs": predictions[:-1]}
