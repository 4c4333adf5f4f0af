"""Plain ViT image backbone with a ViTDet simple feature pyramid, and the frozen DINO ViT.

`ViTBackbone` maps images to a dict `{stride: NHWC map}` (strides 4, 8, 16, 32), the interface every
image backbone of the segmentation model shares, so the pixel decoder does not care which one it gets.

`DinoViT` is DINO's VisionTransformer (cls token, learned position embeddings, pre-LN blocks with a fused
qkv projection) laid out so that released weights map onto it one to one; `load_dino` reads them.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ovseg_jax.models.layers import ConvGroupNorm, DType, Mlp, PreNormBlock, norm_groups
from ovseg_jax.weights import dino as dino_weights


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


def _power_of_two_ratio(big: int, small: int) -> int | None:
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
      up = _power_of_two_ratio(self.input_stride, stride)
      down = _power_of_two_ratio(stride, self.input_stride)
      if up is None and down is None:
        raise ValueError(f"SimpleFeaturePyramid: stride {stride} and input stride {self.input_stride} "
                         "must differ by a power of two; choose pyramid strides like (4, 8, 16, 32).")
      y = x
      for i in range(up or 0):
        if i:
          y = nn.GroupNorm(norm_groups(y.shape[-1]), epsilon=1e-5, name=f"stride{stride}_norm{i}", **kw)(y)
          y = functools.partial(nn.gelu, approximate=False)(y)
        y = nn.ConvTranspose(y.shape[-1] // 2, (2, 2), strides=(2, 2), padding="VALID",
                             name=f"stride{stride}_up{i}", **kw)(y)
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


def _torch_cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """PyTorch's bicubic kernel (a = -0.75) at the 4 taps around fractional offset t: [n] -> [n, 4]."""
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_resize_matrix(in_size: int, out_size: int, scale_factor: float | None = None) -> np.ndarray:
  """[out_size, in_size] matrix of `torch.nn.functional.interpolate(mode='bicubic', align_corners=False)`
  along one axis, float64.

  With `scale_factor` the sampling positions follow it (as PyTorch does when it is given) rather than
  out_size / in_size; DINO relies on that. Out-of-range taps are clamped to the border, as in PyTorch.
  """
  scale = 1.0 / scale_factor if scale_factor else in_size / out_size
  source = scale * (np.arange(out_size) + 0.5) - 0.5
  first = np.minimum(np.floor(source), in_size - 1)
  t = np.clip(source - first, 0.0, 1.0)
  taps = np.clip(first[:, None] + np.arange(-1, 3), 0, in_size - 1).astype(int)
  matrix = np.zeros((out_size, in_size))
  np.add.at(matrix, (np.repeat(np.arange(out_size), 4), taps.ravel()), _torch_cubic_weights(t).ravel())
  return matrix


class DinoAttention(nn.Module):
  """DINO's multi-head self-attention with one fused qkv projection; also returns the keys."""
  num_heads: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [B, N, C] -> (output [B, N, C], keys [B, N, C] with heads concatenated as in DINO)."""
    b, n, c = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    qkv = nn.Dense(3 * c, name="qkv", **kw)(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (c // self.num_heads) ** -0.5
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, c)
    return nn.Dense(c, name="proj", **kw)(out), k.reshape(b, n, c)


class DinoBlock(nn.Module):
  """Pre-LN block x + attn(norm1(x)), then x + mlp(norm2(x)); also returns the attention keys."""
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = functools.partial(nn.LayerNorm, epsilon=self.layer_norm_eps, use_fast_variance=False, **kw)
    y, keys = DinoAttention(self.num_heads, name="attn", **kw)(norm(name="norm1")(x))
    x = x + y
    return x + Mlp(self.mlp_dim, x.shape[-1], activation="gelu", name="mlp", **kw)(norm(name="norm2")(x)), keys


class DinoViT(nn.Module):
  """DINO's VisionTransformer: images -> last-layer patch tokens after the final norm, `[B, h*w, width]`.

  Position embeddings are learned for `image_size` images and resized bicubically for other grids:
  `dino_interpolation=True` samples with DINO's scale factor ((grid + 0.1) / native grid, from DINO's
  `interpolate_pos_encoding`), False with Hugging Face ViT's exact output size. Images are NHWC floats,
  ImageNet-normalised; as in PyTorch's patch conv, pixels beyond a multiple of `patch_size` are ignored.
  """
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  image_size: int
  layer_norm_eps: float = 1e-6
  dino_interpolation: bool = True
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  def _position_embedding(self, h: int, w: int) -> jax.Array:
    """[1, 1 + h*w, width]: cls position + patch positions resized to the h x w grid."""
    grid = self.image_size // self.patch_size
    pos = self.param("pos_embed", nn.initializers.truncated_normal(0.02), (1, 1 + grid * grid, self.width),
                     self.param_dtype)
    if (h, w) == (grid, grid):
      return pos
    scales = ((h + 0.1) / grid, (w + 0.1) / grid) if self.dino_interpolation else (None, None)
    rows = jnp.asarray(bicubic_resize_matrix(grid, h, scales[0]), jnp.float32)
    cols = jnp.asarray(bicubic_resize_matrix(grid, w, scales[1]), jnp.float32)
    patch_pos = pos[0, 1:].reshape(grid, grid, self.width).astype(jnp.float32)
    patch_pos = jnp.einsum("ia,abc,jb->ijc", rows, patch_pos, cols, precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([pos[:, :1], patch_pos.reshape(1, h * w, self.width).astype(pos.dtype)], axis=1)

  @nn.compact
  def __call__(self, images: jax.Array, return_keys: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """images [B, H, W, 3] -> patch tokens [B, h*w, width], or (tokens, keys) with `return_keys`, where
    keys [B, h*w, width] are the last block's attention keys (heads concatenated), as used for pseudo masks."""
    p = self.patch_size
    if images.ndim != 4 or images.shape[-1] != 3 or min(images.shape[1:3]) < p:
      raise ValueError(f"DinoViT: images of shape {images.shape} must be [B, H, W, 3] with H, W >= "
                       f"patch_size={p}; pass NHWC RGB batches.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", name="patch_embed", **kw)(images)
    b, h, w, c = x.shape
    cls = self.param("cls_token", nn.initializers.truncated_normal(0.02), (1, 1, c), self.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, c)).astype(x.dtype), x.reshape(b, h * w, c)], axis=1)
    x = x + self._position_embedding(h, w).astype(x.dtype)
    for i in range(self.depth):
      x, keys = DinoBlock(self.num_heads, self.mlp_dim, self.layer_norm_eps, name=f"block_{i}", **kw)(x)
    x = nn.LayerNorm(epsilon=self.layer_norm_eps, use_fast_variance=False, name="norm", **kw)(x)
    return (x[:, 1:], keys[:, 1:]) if return_keys else x[:, 1:]


def load_dino(path: str | Path, *, num_heads: int | None = None, checkpoint_key: str = "teacher",
              dtype: DType = jnp.float32) -> tuple[DinoViT, dict]:
  """A DINO ViT and its params from a DINO `.pth` file or a Hugging Face `facebook/dino-*` directory.

  `.pth` files do not record the number of heads: it defaults to width / 64 (every released DINO ViT);
  pass `num_heads` for others. Full training checkpoints use their `checkpoint_key` ('teacher' as in
  DINO's own evaluation, or 'student'). Use as `module.apply({'params': params}, images)`.
  """
  architecture, params = dino_weights.read_dino(path, num_heads=num_heads, checkpoint_key=checkpoint_key)
  return DinoViT(**dataclasses.asdict(architecture), dtype=dtype), params


DINO_SIZES = {"S/8": (8, 384, 6), "S/16": (16, 384, 6), "B/8": (8, 768, 12), "B/16": (16, 768, 12)}


def dino_of_size(variant: str, dtype: DType = jnp.float32) -> DinoViT:
  """The DINO ViT architecture of a released size ('S/8', 'S/16', 'B/8', 'B/16'), for 224 images."""
  if variant not in DINO_SIZES:
    raise ValueError(f"DINO variant {variant!r}: use one of {sorted(DINO_SIZES)}.")
  patch, width, heads = DINO_SIZES[variant]
  return DinoViT(patch, width, 12, heads, 4 * width, image_size=224, dtype=dtype)


def random_dino(variant: str, seed: int = 0, dtype: DType = jnp.float32) -> tuple[DinoViT, dict]:
  """A randomly initialised DINO ViT of a released size: the real pseudo-mask cost for benchmarks and compile
  tests, meaningless pseudo masks. Selected by `pseudo_masks.dino_checkpoint='random:S/8'`."""
  module = dino_of_size(variant, dtype)
  params = jax.jit(module.init)(jax.random.key(seed), jnp.zeros((1, 224, 224, 3)))["params"]
  return module, params
