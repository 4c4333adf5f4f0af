"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021), as Mask2Former's pixel decoder uses it.

Each query predicts, per head, `num_points` sampling offsets around its reference point on every level and a
softmax weight for each of the `num_levels * num_points` samples; the output is the weighted sum of the
value maps sampled there. Sampling is bilinear with zero padding outside the map and the half-pixel
convention of `F.grid_sample(..., mode='bilinear', padding_mode='zeros', align_corners=False)`, written as
four gathers so it runs anywhere without a custom kernel.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ovseg_jax.models.layers import DType


def grid_sample_bilinear(image: jax.Array, grid: jax.Array) -> jax.Array:
  """`F.grid_sample(image, grid, 'bilinear', 'zeros', align_corners=False)` for one map.

  image [H, W, C]; grid [..., 2] of (x, y) in [-1, 1] (-1 and 1 are the outer edges of the border pixels);
  returns [..., C]. Corners outside the map contribute zero.
  """
  h, w, c = image.shape
  x = ((grid[..., 0] + 1) * w - 1) / 2  # Pixel coordinates, pixel centres at integers.
  y = ((grid[..., 1] + 1) * h - 1) / 2
  x0, y0 = jnp.floor(x), jnp.floor(y)
  flat = image.reshape(h * w, c)
  out = 0.0
  for dy in (0, 1):
    for dx in (0, 1):
      xi, yi = x0 + dx, y0 + dy
      weight = (1 - jnp.abs(x - xi)) * (1 - jnp.abs(y - yi))
      inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
      index = jnp.clip(yi, 0, h - 1).astype(jnp.int32) * w + jnp.clip(xi, 0, w - 1).astype(jnp.int32)
      out = out + jnp.take(flat, index, axis=0) * jnp.where(inside, weight, 0.0)[..., None].astype(image.dtype)
  return out


def multi_scale_deformable_attention(value: jax.Array, spatial_shapes: Sequence[tuple[int, int]],
                                     sampling_locations: jax.Array, attention_weights: jax.Array) -> jax.Array:
  """The sampling core of MSDeformAttn.

  value [B, S, heads, d] (the levels' maps flattened row-major and concatenated, S = sum H_l * W_l);
  sampling_locations [B, Q, heads, L, P, 2] as (x, y) in [0, 1]; attention_weights [B, Q, heads, L, P].
  Returns [B, Q, heads * d].
  """
  b, _, heads, d = value.shape
  q = sampling_locations.shape[1]
  # Sample one (batch, head) pair at a time: image [H, W, d], points [Q, P, 2] -> [Q, P, d].
  per_head = jax.vmap(grid_sample_bilinear, in_axes=(2, 1), out_axes=1)
  sample = jax.vmap(per_head)
  out, start = 0.0, 0
  for level, (h, w) in enumerate(spatial_shapes):
    level_value = value[:, start:start + h * w].reshape(b, h, w, heads, d)
    start += h * w
    grid = 2 * sampling_locations[:, :, :, level] - 1  # [B, Q, heads, P, 2]
    sampled = sample(level_value, grid)  # [B, Q, heads, P, d]
    out = out + jnp.einsum("bqhpd,bqhp->bqhd", sampled, attention_weights[:, :, :, level].astype(sampled.dtype))
  return out.reshape(b, q, heads * d)


def _sampling_offsets_bias(num_heads: int, num_levels: int, num_points: int):
  """Deformable DETR's init: head k looks along direction 2*pi*k/heads, point i at distance i + 1."""
  def init(key, shape, dtype=jnp.float32):
    del key
    theta = jnp.arange(num_heads, dtype=jnp.float32) * (2 * math.pi / num_heads)
    direction = jnp.stack([jnp.cos(theta), jnp.sin(theta)], -1)
    direction = direction / jnp.max(jnp.abs(direction), axis=-1, keepdims=True)
    scale = jnp.arange(1, num_points + 1, dtype=jnp.float32)[None, None, :, None]
    grid = jnp.broadcast_to(direction[:, None, None, :], (num_heads, num_levels, num_points, 2)) * scale
    return grid.reshape(shape).astype(dtype)
  return init


class MSDeformAttn(nn.Module):
  """Multi-scale deformable attention: queries attend to `num_points` sampled locations on each level."""
  dim: int
  num_levels: int
  num_heads: int = 8
  num_points: int = 4
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, query: jax.Array, reference_points: jax.Array, value_input: jax.Array,
               spatial_shapes: Sequence[tuple[int, int]], padding_mask: jax.Array | None = None) -> jax.Array:
    """query [B, Q, C]; reference_points [B, Q, L, 2] as (x, y) in [0, 1]; value_input [B, S, C] with
    S = sum of H_l * W_l over `spatial_shapes` [(H_l, W_l)]; padding_mask [B, S] True where padded."""
    if self.dim % self.num_heads:
      raise ValueError(f"MSDeformAttn: dim={self.dim} is not divisible by num_heads={self.num_heads}.")
    if len(spatial_shapes) != self.num_levels or sum(h * w for h, w in spatial_shapes) != value_input.shape[1]:
      raise ValueError(f"MSDeformAttn: spatial_shapes {list(spatial_shapes)} do not match {self.num_levels} levels "
                       f"and a value sequence of length {value_input.shape[1]}.")
    b, q, _ = query.shape
    heads, levels, points = self.num_heads, self.num_levels, self.num_points
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    zeros = nn.initializers.zeros
    value = dense(self.dim, kernel_init=nn.initializers.xavier_uniform(), bias_init=zeros, name="value_proj")(
        value_input)
    if padding_mask is not None:
      value = jnp.where(padding_mask[..., None], 0.0, value)
    value = value.reshape(b, -1, heads, self.dim // heads)
    offsets = dense(heads * levels * points * 2, kernel_init=zeros,
                    bias_init=_sampling_offsets_bias(heads, levels, points), name="sampling_offsets")(query)
    offsets = offsets.reshape(b, q, heads, levels, points, 2).astype(jnp.float32)
    logits = dense(heads * levels * points, kernel_init=zeros, bias_init=zeros, name="attention_weights")(query)
    weights = jax.nn.softmax(logits.reshape(b, q, heads, levels * points).astype(jnp.float32), axis=-1)
    # Offsets are in pixels of each level: normalise by (W_l, H_l).
    normalizer = jnp.asarray([[w, h] for h, w in spatial_shapes], jnp.float32)
    locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
    out = multi_scale_deformable_attention(value, spatial_shapes, locations,
                                           weights.reshape(b, q, heads, levels, points))
    return dense(self.dim, kernel_init=nn.initializers.xavier_uniform(), bias_init=zeros, name="output_proj")(
        out.astype(self.dtype))
