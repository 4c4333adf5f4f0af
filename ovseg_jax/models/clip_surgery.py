"""EBSeg's two uses of a CLIP image tower (`models.clip.VisionTransformer`, its weights unchanged): the layer
features the segmenter fuses, and SAN's recognition head whose query tokens read the last blocks under attention
biases. Both take the bound tower (`clip.visual` inside a parent module's apply).

At inference the released code (slonetime/EBSeg, `clip_surgery_visual.py`) also runs CLIP Surgery's
value-value path: from block `depth // 6` (0-based) on, a second token stream adds each block's value-value
attention output (computed on the ordinary stream's normalised input) and skips the MLPs. The ordinary stream,
and so every fused feature and embedding B, is unchanged by it; the second stream, carried through the recognition
blocks too, gives the dense features D that mask pooling classifies.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ovseg_jax.models.resize import resize_bilinear

# The released recognition head's "cannot attend" logit: added, not a -inf mask.
_BLOCKED = -100.0


def surgery_start(depth: int) -> int:
  """The 0-based block where the value-value path starts (`int(layers / 6)` 1-based blocks precede it)."""
  return depth // 6


def layer_features(visual, images: jax.Array, num_blocks: int, inference: bool
                   ) -> tuple[list[jax.Array], jax.Array | None, tuple[int, int]]:
  """([tokens [B, 1 + h*w, width] after ln_pre and after each of the first `num_blocks` blocks], the
  value-value stream after them (None unless `inference`), the patch grid (h, w)). The position embedding
  is resized bicubically to the grid of `images` (CLIP-normalised NHWC)."""
  x = visual.conv1(images.astype(visual.dtype))
  b, h, w, c = x.shape
  x = x.reshape(b, h * w, c)
  cls = jnp.broadcast_to(visual.class_embedding.astype(x.dtype), (b, 1, c))
  x = visual.ln_pre(jnp.concatenate([cls, x], axis=1) + visual.positions(h, w).astype(x.dtype))
  tokens, surgery = [x], None
  start = surgery_start(len(visual.blocks))
  for i in range(num_blocks):
    if inference and i >= start:
      x, surgery = visual.blocks[i](x, surgery=x if surgery is None else surgery)
    else:
      x = visual.blocks[i](x)
    tokens.append(x)
  return tokens, surgery, (h, w)


def grid_tokens(tokens: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """[B, 1 + h*w, C] -> the patch tokens [B, h, w, C]."""
  return tokens[:, 1:].reshape(tokens.shape[0], *grid, tokens.shape[-1])


def _pool_windows(size: int, out: int) -> list[tuple[int, int]]:
  """PyTorch's adaptive pooling windows [floor(i * size / out), ceil((i + 1) * size / out))."""
  return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def _window_max(x: jax.Array, axis: int) -> jax.Array:
  """The maximum along `axis` taken at its argmax, so the gradient reaches that one element as PyTorch's max pooling
  routes it. (`jnp.max`'s gradient divides by the count of elements equal to the maximum: when XLA recomputes `x`
  in two fusions that round differently, the count can be 0 and the gradient NaN.)"""
  index = jnp.expand_dims(jnp.argmax(x, axis=axis), axis)
  return jnp.squeeze(jnp.take_along_axis(x, index, axis=axis), axis)


def adaptive_max_pool(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """`F.adaptive_max_pool2d` over the last two axes of `x`."""
  rows = jnp.stack([_window_max(x[..., a:b, :], -2) for a, b in _pool_windows(x.shape[-2], out_hw[0])], axis=-2)
  return jnp.stack([_window_max(rows[..., a:b], -1) for a, b in _pool_windows(x.shape[-1], out_hw[1])], axis=-1)


def recognition_bias(biases: jax.Array) -> jax.Array:
  """Query biases [B, heads, Q, h*w] -> the logit bias [B, heads, N, N] over [Q queries, class token, h*w
  patches] (N = Q + 1 + h*w), as the released head builds it: nobody attends to a query but itself; queries do
  not attend to the class token and attend to patches with their bias; class and patch tokens attend to each
  other freely. (The released head passes this one matrix to both paths.)"""
  b, heads, q, length = biases.shape
  n = q + 1 + length
  base = np.zeros((n, n), np.float32)
  base[:, :q] = _BLOCKED
  base[np.arange(q), np.arange(q)] = 0.0
  base[:q, q] = _BLOCKED
  full = jnp.broadcast_to(jnp.asarray(base), (b, heads, n, n))
  return full.at[:, :, :q, q + 1:].set(biases.astype(jnp.float32))


def _project(visual, tokens: jax.Array) -> jax.Array:
  y = visual.ln_post(tokens) @ visual.proj.astype(tokens.dtype)
  return y / jnp.maximum(jnp.linalg.norm(y.astype(jnp.float32), axis=-1, keepdims=True), 1e-12).astype(y.dtype)


def recognize(visual, tokens: list[jax.Array], surgery: jax.Array | None, first_block: int, biases: jax.Array,
              grid: tuple[int, int]) -> tuple[jax.Array, jax.Array | None]:
  """SAN's recognition head with per-head query biases: (unit embeddings B [B, Q, embed_dim], the unit dense
  features D [B, h, w, embed_dim] of the value-value stream, or None without it).

  Q query tokens start as copies of the class token of `tokens[first_block]` and go with it through blocks
  `first_block`.. under `recognition_bias`; `biases` [B, heads, Q, H, W] are max-pooled to the CLIP grid first
  (the released `downsample_method='max'`)."""
  b, heads, q = biases.shape[:3]
  if heads != visual.a.vision_heads:
    raise ValueError(f"CLIP recognition head: {heads} bias maps for a tower with {visual.a.vision_heads} heads.")
  bias = recognition_bias(adaptive_max_pool(biases, grid).reshape(b, heads, q, math.prod(grid)))
  x = tokens[first_block]
  x = jnp.concatenate([jnp.repeat(x[:, :1], q, axis=1), x], axis=1)
  if surgery is not None:
    surgery = jnp.concatenate([jnp.repeat(surgery[:, :1], q, axis=1), surgery], axis=1)
  for block in visual.blocks[first_block:]:
    if surgery is None:
      x = block(x, bias=bias)
    else:
      x, surgery = block(x, bias=bias, surgery=surgery)
  embeddings = _project(visual, x[:, :q])
  if surgery is None:
    return embeddings, None
  return embeddings, _project(visual, surgery[:, q + 1:]).reshape(b, *grid, -1)


def downsampled(images: jax.Array, resolution: float) -> jax.Array:
  """The CLIP branch's input: `images` bilinearly resized by `resolution` (floor of the scaled size; the same
  sampling as PyTorch's `scale_factor` whenever the scaled size is whole, as 640 x 0.5 and 640 x 0.7 are)."""
  h, w = images.shape[1:3]
  return resize_bilinear(images, (int(h * resolution), int(w * resolution)))
