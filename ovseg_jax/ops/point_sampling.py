"""Point sampling of mask logits (PointRend, Kirillov et al. 2020), as Mask2Former's criterion uses it.

`point_sample` is detectron2's `point_sample`: `F.grid_sample(..., 'bilinear', padding 'zeros',
align_corners=False)` at points given as (x, y) in [0, 1] over the whole map. It reuses the deformable
attention's sampler (`models.deformable_attention.grid_sample_bilinear`, the same PyTorch semantics, proven
against `grid_sample`), so the project has one bilinear sampler. Target masks are never materialised per
target at full resolution by the caller: `sample_segment_masks` samples the binary masks `segments == m` of a
segment-index map directly (bilinearly, as the reference samples its float 0/1 masks).

`uncertain_point_coords` is `get_uncertain_point_coords_with_randomness`: draw `oversample_ratio * num_points`
uniform points, keep the `importance_sample_ratio` share where the logit is closest to 0, fill up with fresh
uniform points. Everything is static-shaped and runs inside the jitted step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ovseg_jax.models.deformable_attention import grid_sample_bilinear


def point_sample(maps: jax.Array, points: jax.Array) -> jax.Array:
  """maps [N, H, W]; points [N, P, 2] as (x, y) in [0, 1] -> [N, P], bilinear with zeros outside."""
  if maps.ndim != 3 or points.ndim != 3 or points.shape[0] != maps.shape[0] or points.shape[-1] != 2:
    raise ValueError(f"point_sample takes maps [N, H, W] and points [N, P, 2]; got {maps.shape} and {points.shape}.")
  sample_one = lambda m, p: grid_sample_bilinear(m[..., None], 2.0 * p - 1.0)[..., 0]
  return jax.vmap(sample_one)(maps, points)


def sample_segment_masks(segments: jax.Array, points: jax.Array, num_targets: int) -> jax.Array:
  """The binary masks (segments == m), m < num_targets, of one segment-index map sampled bilinearly.

  segments int [H, W] (negative: no target); points [P, 2] shared by all masks -> [num_targets, P], or
  points [num_targets, P, 2], one set per mask -> [num_targets, P].
  """
  one_hot = jax.nn.one_hot(segments, num_targets, dtype=jnp.float32)  # Negative ids give all-zero rows.
  grid = 2.0 * points - 1.0
  if points.ndim == 2:
    return grid_sample_bilinear(one_hot, grid).T
  return jax.vmap(lambda m, g: grid_sample_bilinear(m[..., None], g)[..., 0], in_axes=(2, 0))(one_hot, grid)


def uncertain_point_coords(key: jax.Array, mask_logits: jax.Array, num_points: int, oversample_ratio: float,
                           importance_sample_ratio: float) -> jax.Array:
  """[N, num_points, 2] points per mask: the most uncertain (|logit| smallest) of the oversampled uniform points,
  then uniform ones. mask_logits [N, H, W]; no gradient flows through the choice."""
  n = mask_logits.shape[0]
  num_sampled = int(num_points * oversample_ratio)
  num_uncertain = int(importance_sample_ratio * num_points)
  draw_key, fill_key = jax.random.split(key)
  candidates = jax.random.uniform(draw_key, (n, num_sampled, 2), jnp.float32)
  uncertainty = -jnp.abs(point_sample(jax.lax.stop_gradient(mask_logits).astype(jnp.float32), candidates))
  _, chosen = jax.lax.top_k(uncertainty, num_uncertain)
  points = jnp.take_along_axis(candidates, chosen[..., None], axis=1)
  fill = jax.random.uniform(fill_key, (n, num_points - num_uncertain, 2), jnp.float32)
  return jnp.concatenate([points, fill], axis=1)
