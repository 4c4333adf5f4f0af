"""Blocks shared by the image and text towers: MLP, pre-LN transformer block, conv + GroupNorm, 2D sine
position encoding, unit-length normalisation.

Every module takes `dtype` (computation) and `param_dtype` (storage) so mixed precision is a config switch.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

DType = Any

# Exact (erf) GELU as in PyTorch's nn.GELU: flax's default tanh approximation would break weight parity.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": functools.partial(nn.gelu, approximate=False),
    "relu": nn.relu,
}


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) along `axis` (rsqrt form: finite gradients at zero vectors)."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f"activation={name!r}: use one of {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


def norm_groups(channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
  """GroupNorm groups: the most groups (at most 32, MaskFormer's value) that divide `channels` evenly and
  keep at least `min_group_size` channels per group, so narrow test and demo models stay well defined."""
  return max(g for g in range(1, max_groups + 1)
             if channels % g == 0 and (channels // g >= min_group_size or g == 1))


class Mlp(nn.Module):
  """`num_layers` Dense layers with an activation (and optional dropout) between them."""
  hidden_dim: int
  out_dim: int
  num_layers: int = 2
  activation: str = "gelu"
  dropout_rate: float = 0.0
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    act = get_activation(self.activation)
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    for i in range(self.num_layers - 1):
      x = act(dense(self.hidden_dim, name=f"dense_{i}")(x))
      x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    return dense(self.out_dim, name=f"dense_{self.num_layers - 1}")(x)


class PreNormBlock(nn.Module):
  """Pre-LN transformer block (ViT, CLIP): x + attn(LN(x)), then x + MLP(LN(x))."""
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = nn.LayerNorm(epsilon=self.layer_norm_eps, name="ln_1", **kw)(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name="attn", **kw)(y, mask=mask)
    y = nn.LayerNorm(epsilon=self.layer_norm_eps, name="ln_2", **kw)(x)
    return x + Mlp(self.mlp_dim, x.shape[-1], activation="gelu", name="mlp", **kw)(y)


class ConvGroupNorm(nn.Module):
  """Conv (no bias: the norm has one) + GroupNorm, optionally + ReLU: detectron2's `Conv2d(norm='GN')`."""
  features: int
  kernel_size: int
  relu: bool = False
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    x = nn.Conv(self.features, (k, k), padding="SAME", use_bias=False, dtype=self.dtype,
                param_dtype=self.param_dtype, name="conv")(x)
    x = nn.GroupNorm(num_groups=norm_groups(self.features), epsilon=1e-5, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="norm")(x)
    return nn.relu(x) if self.relu else x


class Upsample2x(nn.Module):
  """flax's `nn.ConvTranspose(features, (2, 2), strides=(2, 2), padding='VALID')`, the same parameters and outputs,
  as one matmul: with the stride equal to the kernel every input pixel writes its own 2x2 output block. XLA on CPU
  runs the strided transposed convolution's weight gradient as a generic dilated convolution, 8x slower."""
  features: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x [B, H, W, C] -> [B, 2H, 2W, features]."""
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (2, 2, x.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    b, h, w, _ = x.shape
    # ConvTranspose (transpose_kernel=False) applies the kernel flipped in both spatial axes.
    blocks = jnp.einsum("bhwc,ijco->bhiwjo", x, kernel[::-1, ::-1])
    return blocks.reshape(b, 2 * h, 2 * w, self.features) + bias


def sine_position_encoding(height: int, width: int, num_pos_feats: int, temperature: float = 10000.0,
                           scale: float = 2 * math.pi) -> jax.Array:
  """DETR's normalised `PositionEmbeddingSine` for an unpadded map: float32 [height, width, 2*num_pos_feats].

  Channels are (y features, x features); within each half, channel 2i is sin and 2i+1 is cos of the
  coordinate (normalised to (0, scale]) divided by temperature ** (2i / num_pos_feats).
  """
  if num_pos_feats % 2:
    raise ValueError(f"num_pos_feats={num_pos_feats} must be even (sin/cos pairs); use a model width "
                     "divisible by 4.")
  eps = 1e-6  # DETR's, kept for parity.
  y = jnp.arange(1, height + 1, dtype=jnp.float32) / (height + eps) * scale
  x = jnp.arange(1, width + 1, dtype=jnp.float32) / (width + eps) * scale
  channel = jnp.arange(num_pos_feats)
  inv_freq = temperature ** (-(2 * (channel // 2)) / num_pos_feats)
  is_sin = channel % 2 == 0

  def encode(coord):  # [n] -> [n, num_pos_feats]
    angle = coord[:, None] * inv_freq
    return jnp.where(is_sin, jnp.sin(angle), jnp.cos(angle))

  pos_y = jnp.broadcast_to(encode(y)[:, None, :], (height, width, num_pos_feats))
  pos_x = jnp.broadcast_to(encode(x)[None, :, :], (height, width, num_pos_feats))
  return jnp.concatenate([pos_y, pos_x], axis=-1)
