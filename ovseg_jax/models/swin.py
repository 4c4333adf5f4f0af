"""Swin Transformer backbone as MaskFormer uses it (Liu et al. 2021; the segmentation variant).

Window attention with a learned relative position bias; every second block shifts its windows by half a
window and masks attention between regions that the cyclic shift made adjacent; patch merging halves the
resolution between stages. Feature maps whose size is not a multiple of the window are padded (bottom and
right) before the shift, as in the segmentation Swin, so any input size works. Each stage's output gets its
own LayerNorm and is returned at strides 4, 8, 16, 32, the interface every backbone here shares.

Parameter names follow the released checkpoints (`layers_0/blocks_1/attn/qkv`, ...) so that
`ovseg_jax.weights.swin` maps them one to one.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ovseg_jax.models.layers import DType, Mlp

# name -> (embed_dim, depths, num_heads); all with patch 4, window 7, MLP ratio 4.
VARIANTS = {
    "Swin-T": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "Swin-S": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "Swin-B": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
}
_MASKED = -100.0  # The reference's additive mask value.


def relative_position_index(window: int) -> np.ndarray:
  """[window^2, window^2] index into the (2*window - 1)^2 bias table for each (query, key) pair."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
  rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # [2, n, n], each in [0, 2w-2]
  return (rel[0] * (2 * window - 1) + rel[1]).astype(np.int32)


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
  """[num_windows, window^2, window^2] additive mask for a padded `height` x `width` map shifted by `shift`:
  0 within a region, -100 between regions that only the cyclic shift brought together."""
  region = np.zeros((height, width), np.int32)
  cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
  for i, hs in enumerate(cuts):
    for j, ws in enumerate(cuts):
      region[hs, ws] = 3 * i + j
  windows = _partition(region[None, :, :, None], window)[..., 0]  # [nW, w*w]
  return np.where(windows[:, None, :] != windows[:, :, None], _MASKED, 0.0).astype(np.float32)


def _partition(x, window: int):
  """[B, H, W, C] -> [B * H/w * W/w, w*w, C] (numpy or jax)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, window * window, c)


def _merge(windows: jax.Array, b: int, h: int, w: int, window: int) -> jax.Array:
  c = windows.shape[-1]
  x = windows.reshape(b, h // window, w // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, c)


class WindowAttention(nn.Module):
  num_heads: int
  window: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """x [num_windows*B, w*w, C]; mask [num_windows, w*w, w*w] or None."""
    n, t, c = x.shape
    head_dim = c // self.num_heads
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    qkv = dense(3 * c, name="qkv")(x).reshape(n, t, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                       ((2 * self.window - 1) ** 2, self.num_heads), self.param_dtype)
    bias = table[relative_position_index(self.window)].transpose(2, 0, 1)  # [heads, t, t]
    logits = jnp.einsum("nqhd,nkhd->nhqk", q * head_dim ** -0.5, k).astype(jnp.float32) + bias
    if mask is not None:
      num_windows = mask.shape[0]
      logits = logits.reshape(n // num_windows, num_windows, self.num_heads, t, t) + mask[None, :, None]
      logits = logits.reshape(n, self.num_heads, t, t)
    attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("nhqk,nkhd->nqhd", attn, v).reshape(n, t, c)
    return dense(c, name="proj")(out)


class DropPath(nn.Module):
  """Stochastic depth: drops a sample's whole residual branch with probability `rate` while training."""
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if not train or self.rate == 0.0:
      return x
    keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.rate, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / (1.0 - self.rate), 0.0).astype(x.dtype)


class SwinBlock(nn.Module):
  num_heads: int
  window: int
  shift: int
  drop_path: float = 0.0
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x [B, H, W, C] -> same shape."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, h, w, c = x.shape
    ws = self.window
    y = nn.LayerNorm(epsilon=1e-5, name="norm1", **kw)(x)
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    y = jnp.pad(y, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
    mask = None
    if self.shift:
      y = jnp.roll(y, (-self.shift, -self.shift), axis=(1, 2))
      mask = jnp.asarray(shifted_window_mask(hp, wp, ws, self.shift))
    y = WindowAttention(self.num_heads, ws, name="attn", **kw)(_partition(y, ws), mask)
    y = _merge(y, b, hp, wp, ws)
    if self.shift:
      y = jnp.roll(y, (self.shift, self.shift), axis=(1, 2))
    x = x + DropPath(self.drop_path)(y[:, :h, :w], train)
    y = Mlp(4 * c, c, name="mlp", **kw)(nn.LayerNorm(epsilon=1e-5, name="norm2", **kw)(x))
    return x + DropPath(self.drop_path)(y, train)


class PatchMerging(nn.Module):
  """2x2 neighbourhoods concatenated (4C), LayerNorm, linear to 2C; odd sizes padded first."""
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    # The reference's channel order: (0,0), (1,0), (0,1), (1,1) offsets.
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(x)
    return nn.Dense(2 * c, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, name="reduction")(x)


class Swin(nn.Module):
  """images [B, H, W, 3] -> {4: [B, H/4, W/4, C], 8: ..., 16: ..., 32: [B, H/32, W/32, 8C]}."""
  embed_dim: int
  depths: tuple[int, ...]
  num_heads: tuple[int, ...]
  window: int = 7
  patch_size: int = 4
  drop_path_rate: float = 0.0
  output_norms: bool = True
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> dict[int, jax.Array]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    p = self.patch_size
    _, h, w, _ = images.shape
    images = jnp.pad(images, ((0, 0), (0, -h % p), (0, -w % p), (0, 0)))
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", name="patch_embed_proj", **kw)(images)
    x = nn.LayerNorm(epsilon=1e-5, name="patch_embed_norm", **kw)(x)
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths))
    outputs, block = {}, 0
    for stage, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
      for i in range(depth):
        x = SwinBlock(heads, self.window, 0 if i % 2 == 0 else self.window // 2, float(rates[block]),
                      name=f"layers_{stage}_blocks_{i}", **kw)(x, train)
        block += 1
      out = nn.LayerNorm(epsilon=1e-5, name=f"norm{stage}", **kw)(x) if self.output_norms else x
      outputs[p * 2 ** stage] = out
      if stage < len(self.depths) - 1:
        x = PatchMerging(name=f"layers_{stage}_downsample", **kw)(x)
    return outputs


def swin(variant: str, **kwargs) -> Swin:
  if variant not in VARIANTS:
    raise ValueError(f"unknown Swin variant {variant!r}; use one of {sorted(VARIANTS)}.")
  embed_dim, depths, heads = VARIANTS[variant]
  return Swin(embed_dim, depths, heads, **kwargs)
