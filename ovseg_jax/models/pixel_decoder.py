"""MaskFormer's FPN pixel decoder: multi-scale backbone maps -> per-pixel embeddings at the finest stride."""
from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from ovseg_jax.models.layers import ConvGroupNorm, DType


def resize_nearest(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """[B, h, w, C] -> [B, *out_hw, C] with PyTorch's `F.interpolate(mode='nearest')` rule
  (source index floor(i * in / out)), so odd sizes line up exactly with the reference FPN."""
  (h, w), (oh, ow) = x.shape[1:3], out_hw
  rows = (jnp.arange(oh) * h) // oh
  cols = (jnp.arange(ow) * w) // ow
  return x[:, rows][:, :, cols]


class FPNPixelDecoder(nn.Module):
  """Top-down FPN (MaskFormer's `BasePixelDecoder`).

  The coarsest map gets a 3x3 conv; each finer map a 1x1 lateral conv, plus the nearest-upsampled
  top-down path, then a 3x3 output conv (all with GroupNorm, ReLU after the 3x3s). A last 3x3 conv at the
  finest stride gives the `mask_dim` per-pixel embeddings.
  """
  conv_dim: int
  mask_dim: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, features: Mapping[int, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """features: {stride: [B, H/stride, W/stride, C_stride]}, e.g. strides 4, 8, 16, 32.

    Returns (per-pixel embeddings [B, H/s_min, W/s_min, mask_dim], memory = the coarsest input map),
    the memory being what the transformer decoder attends to.
    """
    if not features:
      raise ValueError("FPNPixelDecoder: got no feature maps; the backbone must return {stride: map}.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    strides = sorted(features, reverse=True)
    coarsest = strides[0]
    y = ConvGroupNorm(self.conv_dim, 3, relu=True, name=f"output_{coarsest}", **kw)(features[coarsest])
    for stride in strides[1:]:
      lateral = ConvGroupNorm(self.conv_dim, 1, name=f"lateral_{stride}", **kw)(features[stride])
      y = lateral + resize_nearest(y, lateral.shape[1:3])
      y = ConvGroupNorm(self.conv_dim, 3, relu=True, name=f"output_{stride}", **kw)(y)
    mask_features = nn.Conv(self.mask_dim, (3, 3), padding="SAME", name="mask_features", **kw)(y)
    return mask_features, features[coarsest]
