"""K-means pseudo masks against float64 numpy references and constructed images with known clusters."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovseg_jax.ops import pseudo_masks


def _np_lloyd(x, centroids, num_iters):
  """Textbook Lloyd in float64 with explicit differences; empty clusters keep their centroid."""
  x, c = np.asarray(x, np.float64), np.array(centroids, np.float64)
  assign = lambda: np.argmin(((x[:, None] - c[None]) ** 2).sum(-1), 1)
  for _ in range(num_iters):
    a = assign()
    for k in range(len(c)):
      if np.any(a == k):
        c[k] = x[a == k].mean(0)
  return assign(), c


def _np_farthest(x, num_clusters):
  x = np.asarray(x, np.float64)
  chosen = [int(np.argmax((x ** 2).sum(-1)))]
  while len(chosen) < num_clusters:
    d2 = ((x[:, None] - x[chosen][None]) ** 2).sum(-1).min(1)
    chosen.append(int(np.argmax(d2)))
  return x[chosen]


def _blobs(rng, batch, num_blobs, per_blob, dim, spread):
  """Tokens [B, T, C] around random blob centres, shuffled, with their blob labels [B, T]."""
  feats, labels = [], []
  for _ in range(batch):
    centres = rng.normal(0, 4, (num_blobs, dim))
    label = rng.permutation(np.repeat(np.arange(num_blobs), per_blob))
    feats.append(centres[label] + rng.normal(0, spread, (len(label), dim)))
    labels.append(label)
  return np.stack(feats).astype(np.float32), np.stack(labels)


def _same_partition(a, b):
  """True when label arrays a and b describe the same partition (equal up to renaming labels)."""
  pairs = set(zip(a.tolist(), b.tolist()))
  return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_lloyd_matches_numpy_from_the_same_start_and_keeps_empty_clusters():
  rng = np.random.default_rng(0)
  x, _ = _blobs(rng, batch=3, num_blobs=4, per_blob=12, dim=6, spread=1.5)
  init = np.stack([xi[rng.choice(len(xi), 4, replace=False)] for xi in x])
  init[2, 3] = 1e3  # Far from every token: this cluster stays empty and keeps its centroid.
  assign, centroids = jax.jit(functools.partial(pseudo_masks.kmeans, num_clusters=4, num_iters=5))(
      x, init_centroids=init)
  assert assign.dtype == jnp.int32 and assign.shape == (3, 48) and centroids.shape == (3, 4, 6)
  for b in range(3):
    ref_assign, ref_centroids = _np_lloyd(x[b], init[b], 5)
    np.testing.assert_array_equal(assign[b], ref_assign)
    np.testing.assert_allclose(centroids[b], ref_centroids, rtol=1e-5, atol=1e-5)
  assert not np.any(np.asarray(assign[2]) == 3)
  np.testing.assert_array_equal(centroids[2, 3], init[2, 3])


def test_farthest_init_matches_numpy():
  x, _ = _blobs(np.random.default_rng(1), batch=2, num_blobs=3, per_blob=8, dim=4, spread=1.0)
  got = jax.jit(functools.partial(pseudo_masks.initial_centroids, num_clusters=5, init="farthest"))(x)
  for b in range(2):
    np.testing.assert_allclose(got[b], _np_farthest(x[b], 5), rtol=1e-6)


@pytest.mark.parametrize("init", ["kmeans++", "farthest"])
def test_kmeans_recovers_well_separated_blobs(init):
  x, labels = _blobs(np.random.default_rng(2), batch=4, num_blobs=4, per_blob=10, dim=5, spread=0.05)
  fn = jax.jit(functools.partial(pseudo_masks.kmeans, num_clusters=4, num_iters=3, init=init))
  assign, _ = fn(x, key=jax.random.PRNGKey(0))
  for b in range(4):
    assert _same_partition(np.asarray(assign[b]), labels[b]), (b, assign[b], labels[b])


def test_kmeans_plus_plus_seeds_are_distinct_tokens_drawn_with_the_key():
  x, _ = _blobs(np.random.default_rng(3), batch=2, num_blobs=3, per_blob=10, dim=4, spread=1.0)
  seed = jax.jit(functools.partial(pseudo_masks.initial_centroids, num_clusters=6, init="kmeans++"))
  a, b = seed(x, key=jax.random.PRNGKey(0)), seed(x, key=jax.random.PRNGKey(1))
  for image in range(2):
    token_index = [int(np.argmin(((x[image] - c) ** 2).sum(-1))) for c in np.asarray(a[image])]
    np.testing.assert_array_equal(a[image], x[image][token_index])
    assert len(set(token_index)) == 6
  assert not np.array_equal(a, b)


def _grid_partition_checks(masks, valid, num_clusters):
  np.testing.assert_array_equal(np.sum(masks, 1), 1.0)  # Every token in exactly one mask.
  assert set(np.unique(masks).tolist()) <= {0.0, 1.0}
  np.testing.assert_array_equal(valid, np.any(masks > 0, axis=(2, 3)))
  assert masks.shape[1] == valid.shape[1] == num_clusters


@pytest.mark.parametrize("init", ["kmeans++", "farthest"])
def test_more_clusters_than_distinct_tokens_leaves_empty_invalid_masks(init):
  two_values = np.where(np.arange(16) % 3 == 0, 1.0, -1.0).astype(np.float32)
  tokens = np.stack([np.stack([two_values, 2 * two_values], -1)] * 2)  # [2, 16, 2], two distinct tokens.
  gen = jax.jit(functools.partial(pseudo_masks.generate_pseudo_masks, num_clusters=4, num_iters=3,
                                  feature_fn=lambda _: jnp.asarray(tokens), grid_hw=(4, 4), init=init))
  masks, valid = gen(jnp.zeros((2, 8, 8, 3)), key=jax.random.PRNGKey(0))
  masks, valid = np.asarray(masks), np.asarray(valid)
  _grid_partition_checks(masks, valid, 4)
  np.testing.assert_array_equal(valid.sum(1), [2, 2])
  for b in range(2):
    label = np.argmax(masks[b], 0).reshape(-1)
    assert _same_partition(label, two_values > 0)


def test_pixel_patch_features_match_numpy_cell_statistics():
  rng = np.random.default_rng(4)
  images = rng.random((2, 8, 12, 3)).astype(np.float32)
  cell, weight = 4, 0.3
  got = np.asarray(jax.jit(functools.partial(pseudo_masks.pixel_patch_features, cell=cell,
                                             position_weight=weight))(images))
  h, w = 2, 3
  assert got.shape == (2, h * w, 10)
  for b in range(2):
    for i in range(h):
      for j in range(w):
        px = images[b, i * cell:(i + 1) * cell, j * cell:(j + 1) * cell].reshape(-1, 3).astype(np.float64)
        chroma = px[:, :2] / (px.sum(1, keepdims=True) + 1e-2)
        ref = np.concatenate([px.mean(0), px.std(0), chroma.mean(0), weight * np.array([(i + .5) / h,
                                                                                          (j + .5) / w])])
        np.testing.assert_allclose(got[b, i * w + j], ref, rtol=1e-5, atol=1e-6)
  plain = pseudo_masks.pixel_patch_features(images, cell, weight, chromaticity=False)
  np.testing.assert_allclose(plain, np.delete(got, [6, 7], axis=-1), rtol=1e-6)


def test_two_colour_images_give_the_constructed_masks():
  rng = np.random.default_rng(5)
  images, truth = [], []
  for top, left, size in [(8, 4, 16), (0, 20, 12)]:
    inside = np.zeros((32, 32), bool)
    inside[top:top + size, left:left + size] = True
    image = np.where(inside[..., None], [0.9, 0.1, 0.1], [0.2, 0.5, 0.3]) + rng.normal(0, 0.02, (32, 32, 3))
    images.append(np.clip(image, 0, 1))
    truth.append(inside[::4, ::4])  # The square is aligned to the 4x4 cells.
  feature_fn = functools.partial(pseudo_masks.pixel_patch_features, cell=4, position_weight=0.05)
  gen = jax.jit(functools.partial(pseudo_masks.generate_pseudo_masks, num_clusters=2, num_iters=5,
                                  feature_fn=feature_fn, grid_hw=(8, 8)))
  masks, valid = gen(jnp.asarray(np.stack(images), jnp.float32), key=jax.random.PRNGKey(1))
  assert masks.shape == (2, 2, 8, 8) and masks.dtype == jnp.float32 and valid.dtype == jnp.bool_
  _grid_partition_checks(np.asarray(masks), np.asarray(valid), 2)
  for b in range(2):
    assert any(np.array_equal(np.asarray(masks[b, k]) > 0, truth[b]) for k in range(2))


def test_normalize_clusters_by_direction_not_length():
  # Two directions at two very different lengths: with L2 normalisation, K=2 must split by direction.
  rng = np.random.default_rng(6)
  direction = rng.random(16) < 0.5
  length = np.where(rng.random(16) < 0.5, 1.0, 50.0)
  tokens = np.where(direction[:, None], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]) * length[:, None]
  tokens = (tokens + rng.normal(0, 0.01, tokens.shape))[None].astype(np.float32)
  masks, _ = pseudo_masks.generate_pseudo_masks(
      jnp.zeros((1, 4, 4, 3)), num_clusters=2, num_iters=4, key=None, init="farthest",
      feature_fn=lambda _: jnp.asarray(tokens), grid_hw=(4, 4), normalize=True)
  assert _same_partition(np.argmax(np.asarray(masks[0]), 0).reshape(-1), direction)


def test_resize_masks_nearest_and_bilinear():
  rng = np.random.default_rng(7)
  labels = rng.integers(0, 3, (2, 5, 6))
  masks = np.moveaxis(np.eye(3, dtype=np.float32)[labels], -1, 1)  # [2, 3, 5, 6] partition.
  up = pseudo_masks.resize_masks(jnp.asarray(masks), (20, 24))
  np.testing.assert_array_equal(up, masks.repeat(4, 2).repeat(4, 3))
  down = pseudo_masks.resize_masks(jnp.asarray(masks), (3, 4))
  rows = np.floor((np.arange(3) + 0.5) * 5 / 3).astype(int)
  cols = np.floor((np.arange(4) + 0.5) * 6 / 4).astype(int)
  np.testing.assert_array_equal(down, masks[:, :, rows][:, :, :, cols])

  smooth = np.asarray(jax.jit(functools.partial(pseudo_masks.resize_masks, out_hw=(20, 24),
                                                method="bilinear"))(masks))
  np.testing.assert_array_equal(smooth.sum(1), 1.0)  # Still a partition.
  halves = np.zeros((1, 2, 4, 4), np.float32)
  halves[0, 0, :, :2] = halves[0, 1, :, 2:] = 1.0
  np.testing.assert_array_equal(pseudo_masks.resize_masks(halves, (16, 16), "bilinear"),
                                pseudo_masks.resize_masks(halves, (16, 16)))


def test_bad_input_names_the_fix():
  x = jnp.zeros((1, 6, 2))
  with pytest.raises(ValueError, match="init="):
    pseudo_masks.kmeans(x, 2, 1, key=jax.random.PRNGKey(0), init="random")
  with pytest.raises(ValueError, match="pass a PRNG key"):
    pseudo_masks.kmeans(x, 2, 1)
  with pytest.raises(ValueError, match="num_clusters=7"):
    pseudo_masks.kmeans(x, 7, 1, init="farthest")
  with pytest.raises(ValueError, match="init_centroids"):
    pseudo_masks.kmeans(x, 2, 1, init_centroids=jnp.zeros((1, 3, 2)))
  with pytest.raises(ValueError, match="cell=5"):
    pseudo_masks.pixel_patch_features(jnp.zeros((1, 16, 16, 3)), 5, 0.1)
  with pytest.raises(ValueError, match="grid_hw"):
    pseudo_masks.generate_pseudo_masks(jnp.zeros((1, 16, 16, 3)), num_clusters=2, num_iters=1, key=None,
                                       init="farthest", feature_fn=lambda im: jnp.zeros((1, 16, 5)),
                                       grid_hw=(8, 8))
  with pytest.raises(ValueError, match="method="):
    pseudo_masks.resize_masks(jnp.zeros((1, 2, 4, 4)), (8, 8), method="cubic")
