"""Pseudo-mask sources wired into the objective: DINO tokens (ImageNet-normalised, L2-normalised) -> K-means."""
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from ovseg_jax.methods.sseg import objective
from ovseg_jax.ops import pseudo_masks
from ovseg_jax.weights import load_dino

FIXTURE = Path(__file__).parent / "fixtures" / "dino" / "dino_vit.pth"


def _cfg(features):
  return ml_collections.ConfigDict(dict(features=features, num_clusters=3, num_iters=4, init="kmeans++", cell=4,
                                        position_weight=0.1))


def test_dino_pseudo_masks_cluster_imagenet_normalised_tokens():
  module, params = load_dino(FIXTURE, num_heads=4)
  images = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
  key = jax.random.key(5)
  masks, valid = jax.jit(objective.make_pseudo_mask_fn(_cfg("dino"), 48, module))(images, key, params)
  assert masks.shape == (2, 3, 6, 6) and valid.shape == (2, 3)
  np.testing.assert_array_equal(np.sum(masks, axis=1), 1.0)
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  reference, _ = jax.jit(lambda images, key: pseudo_masks.generate_pseudo_masks(
      images, num_clusters=3, num_iters=4, key=key, init="kmeans++", grid_hw=(6, 6), normalize=True,
      feature_fn=lambda x: module.apply({"params": params}, ((x / 255.0 - mean) / std).astype(np.float32))))(
          images, key)
  np.testing.assert_array_equal(masks, reference)


def test_dino_source_without_checkpoint_names_the_config_key():
  with pytest.raises(ValueError, match="dino_checkpoint"):
    objective.make_pseudo_mask_fn(_cfg("dino"), 48)
  with pytest.raises(ValueError, match="'pixels' or 'dino'"):
    objective.make_pseudo_mask_fn(_cfg("sift"), 48)
