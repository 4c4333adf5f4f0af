"""UperNet on a plain ViT: the second-stage segmenter of S-Seg+ (self-training), as BEiT/MAE segment.

Four ViT depths (by default blocks 4/6/8/12 of 12, scaled for other depths) become a pyramid at strides
4/8/16/32 by 2x transposed convs or max pooling; UperNet's head fuses it: a pyramid pooling module on the
coarsest level, a top-down FPN, all levels upsampled to stride 4, concatenated, fused, classified.
GroupNorm replaces the reference's (synchronised) BatchNorm: no batch statistics to share across devices
and the same behaviour at batch 1.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ovseg_jax.models.layers import ConvGroupNorm, DType, Upsample2x, norm_groups
from ovseg_jax.models.vit import ViT, power_of_two_ratio

PYRAMID_STRIDES = (4, 8, 16, 32)


def default_feature_blocks(depth: int) -> tuple[int, ...]:
  """Blocks 4/6/8/12 of a 12-block ViT, at the same relative depths for other depths."""
  return tuple(sorted({max(1, round(depth * k / 12)) for k in (4, 6, 8, 12)}))


def adaptive_pool_matrix(size: int, bins: int) -> np.ndarray:
  """[bins, size] averaging weights of PyTorch's adaptive average pooling (bin i covers
  floor(i*size/bins) .. ceil((i+1)*size/bins))."""
  m = np.zeros((bins, size), np.float32)
  for i in range(bins):
    lo, hi = (i * size) // bins, -((-(i + 1) * size) // bins)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


def _resize(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
  return x if x.shape[1:3] == hw else jax.image.resize(x, (x.shape[0], *hw, x.shape[-1]), "bilinear")


class MultiLevelNeck(nn.Module):
  """Maps ViT block outputs at stride `patch_size` to strides 4/8/16/32 (BEiT's fpn1..fpn4)."""
  patch_size: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array]) -> list[jax.Array]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    outputs = []
    for level, (stride, x) in enumerate(zip(PYRAMID_STRIDES, features)):
      up = power_of_two_ratio(self.patch_size, stride)
      down = power_of_two_ratio(stride, self.patch_size)
      if up is None and down is None:
        raise ValueError(f"UperNet: patch size {self.patch_size} and stride {stride} must differ by a power "
                         "of two (patch sizes 4, 8, 16 or 32).")
      for i in range(up or 0):
        if i:
          x = nn.GroupNorm(norm_groups(x.shape[-1]), epsilon=1e-5, name=f"level{level}_norm{i}", **kw)(x)
          x = functools.partial(nn.gelu, approximate=False)(x)
        x = Upsample2x(x.shape[-1], name=f"level{level}_up{i}", **kw)(x)
      if down:
        x = nn.max_pool(x, (2 ** down, 2 ** down), strides=(2 ** down, 2 ** down), padding="VALID")
      outputs.append(x)
    return outputs


class UperHead(nn.Module):
  """PPM + FPN + fusion over a stride-4..32 pyramid -> class logits at stride 4."""
  num_classes: int
  channels: int
  pool_scales: tuple[int, ...] = (1, 2, 3, 6)
  dropout_rate: float = 0.1
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, pyramid: Sequence[jax.Array], train: bool = False) -> jax.Array:
    conv = functools.partial(ConvGroupNorm, relu=True, dtype=self.dtype, param_dtype=self.param_dtype)
    top = pyramid[-1]
    h, w = top.shape[1:3]
    pooled = [top]
    for scale in self.pool_scales:
      ph, pw = (jnp.asarray(adaptive_pool_matrix(n, scale), top.dtype) for n in (h, w))
      y = jnp.einsum("ih,jw,bhwc->bijc", ph, pw, top)
      pooled.append(_resize(conv(self.channels, 1, name=f"ppm_{scale}")(y), (h, w)))
    laterals = [conv(self.channels, 1, name=f"lateral_{i}")(x) for i, x in enumerate(pyramid[:-1])]
    laterals.append(conv(self.channels, 3, name="ppm_bottleneck")(jnp.concatenate(pooled, axis=-1)))
    for i in range(len(laterals) - 1, 0, -1):  # Top-down: each level gets the coarser one added.
      laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[1:3])
    outs = [conv(self.channels, 3, name=f"fpn_{i}")(x) for i, x in enumerate(laterals[:-1])] + [laterals[-1]]
    fine = outs[0].shape[1:3]
    fused = conv(self.channels, 3, name="fpn_bottleneck")(jnp.concatenate([_resize(x, fine) for x in outs], -1))
    fused = nn.Dropout(self.dropout_rate, deterministic=not train)(fused)
    return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype,
                   name="classifier")(fused)


class UperNetViT(nn.Module):
  """images [B, H, W, 3] (normalised) -> logits [B, H/4, W/4, num_classes]."""
  num_classes: int
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  channels: int = 512
  feature_blocks: tuple[int, ...] = ()
  dropout_rate: float = 0.1
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    blocks = self.feature_blocks or default_feature_blocks(self.depth)
    if len(blocks) != len(PYRAMID_STRIDES):
      raise ValueError(f"UperNet: feature_blocks={blocks} must name {len(PYRAMID_STRIDES)} blocks, one per "
                       f"stride {PYRAMID_STRIDES}; a depth-{self.depth} ViT gives {default_feature_blocks(self.depth)}.")
    features = ViT(self.patch_size, self.width, self.depth, self.num_heads, self.mlp_dim, feature_blocks=blocks,
                   name="backbone", **kw)(images, train)
    pyramid = MultiLevelNeck(self.patch_size, name="neck", **kw)(features)
    return UperHead(self.num_classes, self.channels, dropout_rate=self.dropout_rate, name="head", **kw)(
        pyramid, train)
