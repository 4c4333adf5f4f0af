"""Segment Anything's ViT image encoder: a ViTDet-style ViT (windowed attention with decomposed relative
positions, a few global blocks) followed by SAM's conv neck. Laid out so that Meta's and Hugging Face's
weights map onto it one to one (`ovseg_jax.weights.sam` reads them).

Other input sizes than the pretraining one work as in EBSeg, which feeds SAM arbitrary (padded) sizes:
- the absolute position embedding is resized to the token grid with bicubic interpolation
  (`torch.nn.functional.interpolate(mode='bicubic', align_corners=False, size=grid)`, EBSeg's choice);
- the global blocks' relative position tables are resized with linear interpolation
  (`interpolate(mode='linear', align_corners=False)`), as SAM's `get_rel_pos` does by itself;
- windowed blocks pad the grid with zeros (after their first LayerNorm) to a multiple of the window; the
  padded tokens take part in attention unmasked, as in SAM.
At the pretraining size nothing is resized. Images are NHWC floats normalised with SAM's pixel mean
(123.675, 116.28, 103.53) and std (58.395, 57.12, 57.375) on a 0-255 scale.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ovseg_jax.models.layers import DType, Mlp
from ovseg_jax.models.resize import bicubic_resize_matrix, linear_resize_matrix

# segment_anything's build_sam: all three use 1024 images, patch 16, window 14 and a 256-channel neck.
SAM_VARIANTS = {
    "vit_b": dict(width=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(width=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(width=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}


def resize_position_embedding(pos: jax.Array, height: int, width: int) -> jax.Array:
  """[1, g, g, C] absolute position embedding -> [1, height, width, C], bicubic (PyTorch's kernel, a=-0.75,
  half-pixel centres, border taps clamped), as EBSeg resizes SAM's embedding for its input size."""
  rows = jnp.asarray(bicubic_resize_matrix(pos.shape[1], height), jnp.float32)
  cols = jnp.asarray(bicubic_resize_matrix(pos.shape[2], width), jnp.float32)
  resized = jnp.einsum("ia,abc,jb->ijc", rows, pos[0].astype(jnp.float32), cols,
                       precision=jax.lax.Precision.HIGHEST)
  return resized[None].astype(pos.dtype)


def relative_positions(table: jax.Array, size: int) -> jax.Array:
  """SAM's `get_rel_pos` for equal query and key sizes: table [L, d] -> [size, size, d], entry [i, j] the
  embedding of offset i - j. The table is linearly resized to 2 * size - 1 rows first if it has another length."""
  length = 2 * size - 1
  if table.shape[0] != length:
    matrix = jnp.asarray(linear_resize_matrix(table.shape[0], length), jnp.float32)
    table = jnp.matmul(matrix, table.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST).astype(table.dtype)
  offsets = np.arange(size)[:, None] - np.arange(size)[None, :] + size - 1
  return table[offsets]


def window_partition(x: jax.Array, window: int) -> tuple[jax.Array, tuple[int, int]]:
  """[B, H, W, C] -> ([B * windows, window, window, C], padded (H, W)), zero-padding bottom and right."""
  b, h, w, c = x.shape
  hp, wp = h + (-h % window), w + (-w % window)
  x = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
  x = x.reshape(b, hp // window, window, wp // window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows: jax.Array, window: int, padded: tuple[int, int], size: tuple[int, int]) -> jax.Array:
  """Inverse of `window_partition`: windows -> [B, H, W, C] with the padding cropped off."""
  (hp, wp), (h, w) = padded, size
  c = windows.shape[-1]
  x = windows.reshape(-1, hp // window, wp // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, hp, wp, c)[:, :h, :w]


class SamAttention(nn.Module):
  """Multi-head self-attention over a [B, H, W, C] grid with a fused qkv projection and, if
  `rel_pos_size` is set, decomposed relative position biases (MViTv2) learned for that grid side."""
  num_heads: int
  rel_pos_size: int | None
  qkv_bias: bool = True
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    heads, d = self.num_heads, c // self.num_heads
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    qkv = dense(3 * c, use_bias=self.qkv_bias, name="qkv")(x).reshape(b, h * w, 3, heads, d)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * d ** -0.5, k)
    if self.rel_pos_size is not None:
      length = 2 * self.rel_pos_size - 1
      rel_h = self.param("rel_pos_h", nn.initializers.zeros, (length, d), self.param_dtype)
      rel_w = self.param("rel_pos_w", nn.initializers.zeros, (length, d), self.param_dtype)
      grid_q = q.reshape(b, h, w, heads, d)  # The unscaled query, as in SAM.
      bias_h = jnp.einsum("byxhd,ykd->bhyxk", grid_q, relative_positions(rel_h, h).astype(self.dtype))
      bias_w = jnp.einsum("byxhd,xkd->bhyxk", grid_q, relative_positions(rel_w, w).astype(self.dtype))
      logits = logits.reshape(b, heads, h, w, h, w) + bias_h[..., :, None] + bias_w[..., None, :]
      logits = logits.reshape(b, heads, h * w, h * w)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, h, w, c)
    return dense(c, name="proj")(out)


class SamBlock(nn.Module):
  """Pre-LN block: x + attn(norm1(x)) (in windows of `window_size` unless 0), then x + MLP(norm2(x))."""
  num_heads: int
  mlp_dim: int
  window_size: int
  rel_pos_size: int | None
  qkv_bias: bool = True
  layer_norm_eps: float = 1e-6
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = functools.partial(nn.LayerNorm, epsilon=self.layer_norm_eps, use_fast_variance=False, **kw)
    y = norm(name="norm1")(x)
    if self.window_size:
      y, padded = window_partition(y, self.window_size)
    y = SamAttention(self.num_heads, self.rel_pos_size, self.qkv_bias, name="attn", **kw)(y)
    if self.window_size:
      y = window_unpartition(y, self.window_size, padded, x.shape[1:3])
    x = x + y
    return x + Mlp(self.mlp_dim, x.shape[-1], activation="gelu", name="mlp", **kw)(norm(name="norm2")(x))


class SamImageEncoder(nn.Module):
  """SAM's `ImageEncoderViT`: images [B, H, W, 3] -> `{'hidden_states': [every block's output
  [B, H/p, W/p, width]], 'image_embeddings': [B, H/p, W/p, out_channels]}` (the neck's output).

  `image_size` is the pretraining size: it fixes the position-embedding grid and the global blocks'
  relative-position tables. Blocks in `global_attn_indexes` (or all, if `window_size` is 0) attend
  globally, the others within `window_size` windows. Variants: `sam_image_encoder('vit_b')`.
  """
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  out_channels: int = 256
  patch_size: int = 16
  image_size: int = 1024
  window_size: int = 14
  global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
  use_abs_pos: bool = True
  use_rel_pos: bool = True
  qkv_bias: bool = True
  layer_norm_eps: float = 1e-6
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  def block_window(self, index: int) -> int:
    """Window side of block `index`, 0 for global attention."""
    return 0 if index in self.global_attn_indexes else self.window_size

  def rel_pos_size(self, index: int) -> int | None:
    """Grid side block `index`'s relative-position tables are learned for (None without them)."""
    if not self.use_rel_pos:
      return None
    return self.block_window(index) or self.image_size // self.patch_size

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array | list[jax.Array]]:
    p = self.patch_size
    if images.ndim != 4 or images.shape[-1] != 3 or min(images.shape[1:3]) < p:
      raise ValueError(f"SamImageEncoder: images of shape {images.shape} must be [B, H, W, 3] with H, W >= "
                       f"patch_size={p}; pass NHWC RGB batches.")
    if self.width % self.num_heads:
      raise ValueError(f"SamImageEncoder: width {self.width} is not divisible by num_heads={self.num_heads}.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    # PyTorch's strided conv ignores pixels beyond a multiple of the patch size; VALID padding does too.
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", name="patch_embed", **kw)(images)
    _, h, w, c = x.shape
    if self.use_abs_pos:
      grid = self.image_size // p
      pos = self.param("pos_embed", nn.initializers.zeros, (1, grid, grid, c), self.param_dtype)
      x = x + (pos if (h, w) == (grid, grid) else resize_position_embedding(pos, h, w)).astype(x.dtype)
    hidden_states = []
    for i in range(self.depth):
      x = SamBlock(self.num_heads, self.mlp_dim, self.block_window(i), self.rel_pos_size(i), self.qkv_bias,
                   self.layer_norm_eps, name=f"block_{i}", **kw)(x)
      hidden_states.append(x)
    # LayerNorm2d normalises over channels: in NHWC that is a plain LayerNorm (SAM's eps, 1e-6).
    norm = functools.partial(nn.LayerNorm, epsilon=1e-6, use_fast_variance=False, **kw)
    y = nn.Conv(self.out_channels, (1, 1), use_bias=False, name="neck_conv1", **kw)(x)
    y = norm(name="neck_norm1")(y)
    y = nn.Conv(self.out_channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="neck_conv2", **kw)(y)
    return {"hidden_states": hidden_states, "image_embeddings": norm(name="neck_norm2")(y)}


def sam_image_encoder(variant: str, **overrides) -> SamImageEncoder:
  """The image encoder of a released SAM ('vit_b', 'vit_l', 'vit_h'), optionally with fields overridden."""
  if variant not in SAM_VARIANTS:
    raise ValueError(f"SAM variant {variant!r}: use one of {sorted(SAM_VARIANTS)}.")
  fields = SAM_VARIANTS[variant]
  return SamImageEncoder(**{**fields, "mlp_dim": 4 * fields["width"], **overrides})
