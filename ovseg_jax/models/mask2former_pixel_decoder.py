"""Mask2Former's pixel decoder (`MSDeformAttnPixelDecoder`): a deformable-attention encoder over the three
coarsest backbone maps, then an FPN step down to stride 4 for the per-pixel mask features.

The coarsest `num_levels` maps (strides 8, 16, 32 for a ResNet or Swin) are projected to `conv_dim`
(1x1 conv + GroupNorm), flattened together with sine position encodings plus a learned embedding per level,
and refined by `num_layers` post-norm encoder layers (multi-scale deformable self-attention, ReLU FFN). Each
finer backbone map (stride 4) gets a 1x1 lateral conv, the bilinearly upsampled previous output, and a 3x3
output conv (GroupNorm throughout); a 1x1 conv gives the `mask_dim` mask features.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ovseg_jax.models.deformable_attention import MSDeformAttn
from ovseg_jax.models.resize import resize_bilinear
from ovseg_jax.models.layers import DType, sine_position_encoding


class ConvNorm(nn.Module):
  """Conv + GroupNorm (+ ReLU) with the group count and conv bias of the PyTorch layer it mirrors."""
  features: int
  kernel_size: int
  num_groups: int
  use_bias: bool = False
  relu: bool = False
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    k = self.kernel_size
    x = nn.Conv(self.features, (k, k), padding="SAME", use_bias=self.use_bias, name="conv",
                kernel_init=nn.initializers.xavier_uniform(), **kw)(x)
    # Two-pass variance: E[x^2] - E[x]^2 loses digits on the small groups of narrow maps.
    x = nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-5, use_fast_variance=False, name="norm", **kw)(x)
    return nn.relu(x) if self.relu else x


class DeformableEncoderLayer(nn.Module):
  """Post-norm: x = LN(x + MSDeformAttn(x + pos, ...)); x = LN(x + FFN(x))."""
  dim: int
  num_levels: int
  num_heads: int
  num_points: int
  ffn_dim: int
  dropout_rate: float = 0.0
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, pos: jax.Array, reference_points: jax.Array,
               spatial_shapes: tuple[tuple[int, int], ...], train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    dropout = functools.partial(nn.Dropout(self.dropout_rate), deterministic=not train)
    y = MSDeformAttn(self.dim, self.num_levels, self.num_heads, self.num_points, name="self_attn", **kw)(
        x + pos, reference_points, x, spatial_shapes)
    x = nn.LayerNorm(epsilon=1e-5, name="self_attn_layer_norm", **kw)(x + dropout(y))
    y = nn.relu(nn.Dense(self.ffn_dim, name="fc1", **kw)(x))
    y = nn.Dense(self.dim, name="fc2", **kw)(dropout(y))
    return nn.LayerNorm(epsilon=1e-5, name="final_layer_norm", **kw)(x + dropout(y))


def encoder_reference_points(spatial_shapes: tuple[tuple[int, int], ...]) -> np.ndarray:
  """[S, 2] (x, y) pixel centres of every level's map, normalised to [0, 1], levels concatenated."""
  points = []
  for h, w in spatial_shapes:
    y, x = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    points.append(np.stack([x.reshape(-1), y.reshape(-1)], -1))
  return np.concatenate(points).astype(np.float32)


class MSDeformAttnPixelDecoder(nn.Module):
  """features {stride: [B, H/stride, W/stride, C]} -> (mask features [B, H/4, W/4, mask_dim],
  [the `num_levels` refined maps [B, h, w, conv_dim], coarsest first]) for the transformer decoder."""
  conv_dim: int = 256
  mask_dim: int = 256
  num_layers: int = 6
  num_heads: int = 8
  num_points: int = 4
  ffn_dim: int = 1024
  num_levels: int = 3
  common_stride: int = 4
  num_groups: int = 32
  dropout_rate: float = 0.0
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, features: Mapping[int, jax.Array], train: bool = False) -> tuple[jax.Array, list[jax.Array]]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    strides = sorted(features, reverse=True)  # Coarsest first.
    if len(strides) < self.num_levels or min(strides) > self.common_stride:
      raise ValueError(f"MSDeformAttnPixelDecoder: needs {self.num_levels} maps for the encoder and one at stride "
                       f"{self.common_stride}; the backbone gave strides {sorted(features)}.")
    levels = strides[:self.num_levels]
    b = features[levels[0]].shape[0]
    shapes = tuple(tuple(features[s].shape[1:3]) for s in levels)
    level_embed = self.param("level_embed", nn.initializers.normal(1.0), (self.num_levels, self.conv_dim),
                             self.param_dtype)
    tokens, pos = [], []
    for i, stride in enumerate(levels):
      x = ConvNorm(self.conv_dim, 1, self.num_groups, use_bias=True, name=f"input_proj_{i}", **kw)(features[stride])
      tokens.append(x.reshape(b, -1, self.conv_dim))
      encoding = sine_position_encoding(*shapes[i], self.conv_dim // 2).reshape(-1, self.conv_dim)
      pos.append(encoding + level_embed[i])
    x = jnp.concatenate(tokens, axis=1)
    pos = jnp.concatenate(pos, axis=0)[None].astype(x.dtype)
    reference = jnp.broadcast_to(jnp.asarray(encoder_reference_points(shapes))[None, :, None, :],
                                 (b, x.shape[1], self.num_levels, 2))
    for i in range(self.num_layers):
      x = DeformableEncoderLayer(self.conv_dim, self.num_levels, self.num_heads, self.num_points, self.ffn_dim,
                                 self.dropout_rate, name=f"encoder_layers_{i}", **kw)(x, pos, reference, shapes, train)
    outputs, start = [], 0
    for h, w in shapes:
      outputs.append(x[:, start:start + h * w].reshape(b, h, w, self.conv_dim))
      start += h * w
    for stride in [s for s in strides[self.num_levels:] if s >= self.common_stride]:
      lateral = ConvNorm(self.conv_dim, 1, self.num_groups, name=f"lateral_{stride}", **kw)(features[stride])
      y = lateral + resize_bilinear(outputs[-1], lateral.shape[1:3])
      outputs.append(ConvNorm(self.conv_dim, 3, self.num_groups, relu=True, name=f"output_{stride}", **kw)(y))
    mask_features = nn.Conv(self.mask_dim, (1, 1), kernel_init=nn.initializers.xavier_uniform(),
                            name="mask_features", **kw)(outputs[-1])
    return mask_features, outputs[:self.num_levels]
