"""DINO's VisionTransformer (cls token, learned position embeddings, pre-LN blocks with a fused qkv projection),
laid out so that released weights map onto it one to one (`ovseg_jax.weights.load_dino` reads them). Frozen, it
gives the features of S-Seg's pseudo masks.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from ovseg_jax.models.layers import DType, Mlp
from ovseg_jax.models.resize import bicubic_resize_matrix


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
