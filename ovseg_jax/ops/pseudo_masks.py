"""Pseudo masks on device: K-means over per-patch features, one-hot on the token grid (paper sec. 3.3.1).

The paper clusters frozen DINO ViT tokens; any feature function returning [B, h*w, C] tokens plugs in, and
`pixel_patch_features` (cell colour statistics) is the cheap source for the demo. Everything has static
shapes and fixed iteration counts so it runs inside the jitted train step, batched over images.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST
_INITS = ("kmeans++", "farthest")
# Keeps near-black pixels (r + g + b ~ 0) from getting an arbitrary chromaticity.
_CHROMATICITY_EPS = 1e-2


def _squared_distances(x: jax.Array, centroids: jax.Array) -> jax.Array:
  """[T, C] x [K, C] -> [T, K] as |x|^2 - 2 x.c + |c|^2: one matmul, no [T, K, C] temporary."""
  cross = jnp.matmul(x, centroids.T, precision=_HIGHEST)
  d2 = jnp.sum(x * x, -1)[:, None] - 2.0 * cross + jnp.sum(centroids * centroids, -1)[None, :]
  return jnp.maximum(d2, 0.0)  # Rounding can make the expansion slightly negative.


def _seed_centroids(x: jax.Array, num_clusters: int, first: jax.Array,
                    choose: Callable[[int, jax.Array], jax.Array]) -> jax.Array:
  """Greedy seeding: starts at token `first`, then `choose(i, min_d2)` picks each next token."""
  centroids = jnp.zeros((num_clusters, x.shape[1]), x.dtype).at[0].set(x[first])
  min_d2 = jnp.sum((x - x[first]) ** 2, -1)

  def add_centroid(i, carry):
    centroids, min_d2 = carry
    chosen = x[choose(i, min_d2)]
    return centroids.at[i].set(chosen), jnp.minimum(min_d2, jnp.sum((x - chosen) ** 2, -1))

  centroids, _ = jax.lax.fori_loop(1, num_clusters, add_centroid, (centroids, min_d2))
  return centroids


def _kmeans_plus_plus(x: jax.Array, num_clusters: int, key: jax.Array) -> jax.Array:
  first_key, key = jax.random.split(key)
  first = jax.random.randint(first_key, (), 0, x.shape[0])

  def sample_d2(i, min_d2):
    # D^2 weighting; if every token already coincides with a centroid, any token will do.
    logits = jnp.where(jnp.sum(min_d2) > 0, jnp.log(min_d2), 0.0)
    return jax.random.categorical(jax.random.fold_in(key, i), logits)

  return _seed_centroids(x, num_clusters, first, sample_d2)


def _farthest_point(x: jax.Array, num_clusters: int) -> jax.Array:
  # The largest-norm token starts; with L2-normalised tokens all norms tie and token 0 starts.
  first = jnp.argmax(jnp.sum(x * x, -1))
  return _seed_centroids(x, num_clusters, first, lambda i, min_d2: jnp.argmax(min_d2))


def _check_features(features: jax.Array, num_clusters: int) -> None:
  if features.ndim != 3:
    raise ValueError(f"K-means features must be [B, T, C] tokens; got shape {features.shape}.")
  if not 1 <= num_clusters <= features.shape[1]:
    raise ValueError(f"num_clusters={num_clusters} must be between 1 and the number of tokens per image "
                     f"({features.shape[1]}): lower pseudo_masks.num_clusters or use a finer token grid.")


def initial_centroids(features: jax.Array, num_clusters: int, key: jax.Array | None = None,
                      init: str = "kmeans++") -> jax.Array:
  """Starting centroids [B, K, C] chosen among each image's tokens [B, T, C].

  'kmeans++' samples with D^2 weighting (needs `key`); 'farthest' is deterministic: the largest-norm token,
  then repeatedly the token farthest from all chosen ones.
  """
  _check_features(features, num_clusters)
  features = features.astype(jnp.float32)
  if init == "kmeans++":
    if key is None:
      raise ValueError("init='kmeans++' samples its seeds: pass a PRNG key (or use init='farthest').")
    keys = jax.random.split(key, features.shape[0])
    return jax.vmap(lambda x, k: _kmeans_plus_plus(x, num_clusters, k))(features, keys)
  if init == "farthest":
    return jax.vmap(lambda x: _farthest_point(x, num_clusters))(features)
  raise ValueError(f"K-means init={init!r}: use one of {_INITS}.")


def _lloyd(x: jax.Array, centroids: jax.Array, num_iters: int) -> tuple[jax.Array, jax.Array]:
  num_clusters = centroids.shape[0]

  def assign(centroids):
    return jnp.argmin(_squared_distances(x, centroids), -1).astype(jnp.int32)

  def update(_, centroids):
    one_hot = jax.nn.one_hot(assign(centroids), num_clusters, dtype=x.dtype)
    counts = jnp.sum(one_hot, 0)[:, None]
    sums = jnp.matmul(one_hot.T, x, precision=_HIGHEST)
    return jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), centroids)  # Empty: keep the old one.

  centroids = jax.lax.fori_loop(0, num_iters, update, centroids)
  return assign(centroids), centroids


def kmeans(features: jax.Array, num_clusters: int, num_iters: int, key: jax.Array | None = None,
           init: str = "kmeans++", init_centroids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Batched Lloyd K-means: [B, T, C] -> (assignments int32 [B, T], centroids [B, K, C]).

  Runs exactly `num_iters` (assign, update) rounds, then assigns every token to its nearest final
  centroid. A cluster that loses all its tokens keeps its previous centroid. `init_centroids` [B, K, C]
  replaces the `init` seeding.
  """
  _check_features(features, num_clusters)
  features = features.astype(jnp.float32)
  if init_centroids is None:
    init_centroids = initial_centroids(features, num_clusters, key, init)
  expected = (features.shape[0], num_clusters, features.shape[2])
  if init_centroids.shape != expected:
    raise ValueError(f"init_centroids has shape {init_centroids.shape}; K-means here needs [B, K, C] = "
                     f"{expected}.")
  return jax.vmap(lambda x, c: _lloyd(x, c, num_iters))(features, init_centroids.astype(jnp.float32))


def pixel_patch_features(images: jax.Array, cell: int, position_weight: float,
                         chromaticity: bool = True) -> jax.Array:
  """Colour statistics of non-overlapping cell x cell patches: [B, H, W, 3] -> [B, h*w, C].

  Per cell: mean RGB, std RGB, mean chromaticity (r, g) / (r + g + b) (only meaningful for images in
  [0, 1]; pass chromaticity=False for mean/std-normalised images), and the cell centre (y, x) in [0, 1]
  times position_weight, which nudges clusters towards spatially compact regions.
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"pixel_patch_features takes RGB images [B, H, W, 3]; got shape {images.shape}.")
  batch, height, width, _ = images.shape
  if height % cell or width % cell:
    raise ValueError(f"Image size {height}x{width} is not divisible by pseudo_masks.cell={cell}: pick a cell "
                     "size that divides the image size.")
  h, w = height // cell, width // cell
  cells = images.astype(jnp.float32).reshape(batch, h, cell, w, cell, 3)
  mean = jnp.mean(cells, (2, 4))
  std = jnp.sqrt(jnp.mean((cells - mean[:, :, None, :, None]) ** 2, (2, 4)))
  parts = [mean, std]
  if chromaticity:
    chroma = cells[..., :2] / (jnp.sum(cells, -1, keepdims=True) + _CHROMATICITY_EPS)
    parts.append(jnp.mean(chroma, (2, 4)))
  ys, xs = jnp.meshgrid((jnp.arange(h) + 0.5) / h, (jnp.arange(w) + 0.5) / w, indexing="ij")
  position = position_weight * jnp.stack([ys, xs], -1)
  parts.append(jnp.broadcast_to(position, (batch, h, w, 2)))
  return jnp.concatenate(parts, -1).reshape(batch, h * w, -1)


def generate_pseudo_masks(images: jax.Array, *, num_clusters: int, num_iters: int, key: jax.Array | None,
                          feature_fn: Callable[[jax.Array], jax.Array], grid_hw: tuple[int, int],
                          init: str = "kmeans++", normalize: bool = False) -> tuple[jax.Array, jax.Array]:
  """K-means pseudo masks: images -> (masks float {0,1} [B, K, h, w], valid bool [B, K]).

  feature_fn maps images to tokens [B, h*w, C] on the grid_hw = (h, w) token grid; no gradient flows
  through it. normalize=True L2-normalises tokens first (the DINO path, where cosine geometry matters).
  The masks partition the grid; valid marks the non-empty clusters.
  """
  tokens = jax.lax.stop_gradient(feature_fn(images)).astype(jnp.float32)
  h, w = grid_hw
  if tokens.ndim != 3 or tokens.shape[:2] != (images.shape[0], h * w):
    raise ValueError(f"feature_fn returned shape {tokens.shape}; pseudo masks need [B, h*w, C] tokens with "
                     f"B={images.shape[0]} and grid_hw={grid_hw}: make grid_hw match the feature grid.")
  if normalize:
    tokens = tokens * jax.lax.rsqrt(jnp.maximum(jnp.sum(tokens * tokens, -1, keepdims=True), 1e-12))
  assignments, _ = kmeans(tokens, num_clusters, num_iters, key=key, init=init)
  masks = jax.nn.one_hot(assignments, num_clusters, dtype=jnp.float32)  # [B, T, K]
  masks = jnp.moveaxis(masks, -1, 1).reshape(images.shape[0], num_clusters, h, w)
  return masks, jnp.any(masks > 0, axis=(2, 3))


def masks_from_labels(labels: jax.Array, num_clusters: int) -> tuple[jax.Array, jax.Array]:
  """Stored cluster maps uint8 [B, h, w] (255: no cluster) -> (masks float {0,1} [B, K, h, w], valid [B, K]),
  the form `generate_pseudo_masks` returns."""
  masks = (labels[:, None].astype(jnp.int32) == jnp.arange(num_clusters)[None, :, None, None]).astype(jnp.float32)
  return masks, jnp.any(masks > 0, axis=(2, 3))


def resize_masks(masks: jax.Array, out_hw: tuple[int, int], method: str = "nearest") -> jax.Array:
  """Resizes pseudo masks [B, K, h, w] -> [B, K, H', W'] (to the prediction resolution).

  'nearest' copies the source cell whose area holds each output pixel centre (a pure repeat for integer
  upsampling). 'bilinear' interpolates and gives each pixel to its largest mask: smooth boundaries that
  still partition the image, where a 0.5 threshold could leave pixels where three masks meet unassigned.
  """
  if masks.ndim != 4:
    raise ValueError(f"resize_masks takes masks [B, K, h, w]; got shape {masks.shape}.")
  out_h, out_w = out_hw
  if method == "nearest":
    in_h, in_w = masks.shape[2:]
    rows = ((2 * jnp.arange(out_h) + 1) * in_h) // (2 * out_h)  # floor((i + 0.5) * in / out), exactly.
    cols = ((2 * jnp.arange(out_w) + 1) * in_w) // (2 * out_w)
    return masks[:, :, rows][:, :, :, cols]
  if method == "bilinear":
    smooth = jax.image.resize(masks.astype(jnp.float32), masks.shape[:2] + (out_h, out_w), "bilinear")
    return jax.nn.one_hot(jnp.argmax(smooth, 1), masks.shape[1], axis=1, dtype=masks.dtype)
  raise ValueError(f"resize_masks method={method!r}: use 'nearest' or 'bilinear'.")
