"""Plain ViT image backbone with a ViTDet simple feature pyramid.

`ViTBackbone` maps images to a dict `{stride: NHWC map}` (strides 4, 8, 16, 32), the interface every
image backbone of the segmentation model shares, so the pixel decoder does not care which one it gets.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ovseg_jax.models.layers import ConvGroupNorm, DType, PreNormBlock, Upsample2x, norm_groups


class ViT(nn.Module):
  """Conv patch embedding + learned position embeddings + pre-LN blocks + final LayerNorm.

  Position embeddings are learned on the patch grid of the images seen at initialisation and bilinearly
  resized for other image sizes (as DINO and ViTDet do). With `feature_blocks` (1-based block numbers) the
  ViT returns those blocks' outputs instead, for heads that fuse several depths (BEiT/MAE segmentation).
  """
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  feature_blocks: tuple[int, ...] = ()
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array | list[jax.Array]:
    """images [B, H, W, 3] float -> tokens [B, H/p, W/p, width] after the final LayerNorm, or the list of
    `feature_blocks` outputs. `train` is unused (no stochastic layers); it keeps the signature every
    backbone shares."""
    del train
    p = self.patch_size
    if images.ndim != 4 or images.shape[1] % p or images.shape[2] % p:
      raise ValueError(f"ViT: images of shape {images.shape} must be [B, H, W, C] with H and W divisible by "
                       f"patch_size={p}; resize or pad the images.")
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                param_dtype=self.param_dtype, name="patch_embed")(images)
    b, h, w, c = x.shape
    # The declared shape is the stored one once it exists, so other grids resize instead of failing.
    stored = self.get_variable("params", "pos_embedding")
    pos = self.param("pos_embedding", nn.initializers.normal(0.02),
                     (1, h, w, c) if stored is None else stored.shape, self.param_dtype)
    if pos.shape[1:3] != (h, w):
      pos = jax.image.resize(pos, (1, h, w, c), method="bilinear")
    x = (x + pos.astype(self.dtype)).reshape(b, h * w, c)
    blocks = self.feature_blocks
    if any(not 1 <= k <= self.depth for k in blocks) or list(blocks) != sorted(set(blocks)):
      raise ValueError(f"ViT: feature_blocks={blocks} must be increasing block numbers in 1..{self.depth}.")
    features = []
    for i in range(self.depth):
      x = PreNormBlock(self.num_heads, self.mlp_dim, layer_norm_eps=1e-6, dtype=self.dtype,
                       param_dtype=self.param_dtype, name=f"block_{i}")(x)
      if i + 1 in self.feature_blocks:
        features.append(x.reshape(b, h, w, c))
      if features and len(features) == len(self.feature_blocks):
        return features
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(x)
    return x.reshape(b, h, w, c)


def power_of_two_ratio(big: int, small: int) -> int | None:
  """log2(big / small) if that ratio is an exact power of two, else None."""
  if big % small:
    return None
  ratio = big // small
  return ratio.bit_length() - 1 if ratio & (ratio - 1) == 0 else None


class SimpleFeaturePyramid(nn.Module):
  """ViTDet's simple pyramid: one stride-`input_stride` map -> `{stride: map}` with `out_dim` channels.

  Finer strides come from 2x transposed convs (halving channels, GroupNorm + GELU between them), coarser
  ones from max pooling; each level then gets a 1x1 and a 3x3 conv, both with GroupNorm.
  """
  input_stride: int
  out_dim: int
  strides: Sequence[int] = (4, 8, 16, 32)
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[int, jax.Array]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    outputs = {}
    for stride in self.strides:
      up = power_of_two_ratio(self.input_stride, stride)
      down = power_of_two_ratio(stride, self.input_stride)
      if up is None and down is None:
        raise ValueError(f"SimpleFeaturePyramid: stride {stride} and input stride {self.input_stride} "
                         "must differ by a power of two; choose pyramid strides like (4, 8, 16, 32).")
      y = x
      for i in range(up or 0):
        if i:
          y = nn.GroupNorm(norm_groups(y.shape[-1]), epsilon=1e-5, name=f"stride{stride}_norm{i}", **kw)(y)
          y = functools.partial(nn.gelu, approximate=False)(y)
        y = Upsample2x(y.shape[-1] // 2, name=f"stride{stride}_up{i}", **kw)(y)
      if down:
        window = (2 ** down, 2 ** down)
        if min(y.shape[1:3]) < window[0]:
          raise ValueError(f"SimpleFeaturePyramid: a {y.shape[1]}x{y.shape[2]} token grid is too small for "
                           f"stride {stride}; use larger images or drop that stride.")
        y = nn.max_pool(y, window, strides=window, padding="VALID")
      y = ConvGroupNorm(self.out_dim, 1, name=f"stride{stride}_lateral", **kw)(y)
      outputs[stride] = ConvGroupNorm(self.out_dim, 3, name=f"stride{stride}_output", **kw)(y)
    return outputs


class ViTBackbone(nn.Module):
  """ViT + simple feature pyramid: images -> `{stride: [B, H/stride, W/stride, out_dim]}`."""
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  out_dim: int
  strides: Sequence[int] = (4, 8, 16, 32)
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> dict[int, jax.Array]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    tokens = ViT(self.patch_size, self.width, self.depth, self.num_heads, self.mlp_dim, name="vit",
                 **kw)(images, train)
    return SimpleFeaturePyramid(self.patch_size, self.out_dim, tuple(self.strides), name="pyramid",
                                **kw)(tokens)
