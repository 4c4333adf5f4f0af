"""Mask classification geometry (masked crops against PIL) and the CLIP mask classifiers."""
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from ovseg_jax.eval import classify


def _pil_crop(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
  """Reference: PIL's antialiased bilinear resize of the box (x0, y0, x1, y1), one float channel at a time."""
  return np.stack([np.asarray(Image.fromarray(image[..., c], "F").resize((size, size), Image.BILINEAR, box=box))
                   for c in range(image.shape[-1])], axis=-1)


@pytest.mark.parametrize("box,size", [((3, 5, 19, 21), 16), ((2, 4, 34, 20), 8), ((0, 0, 40, 40), 10),
                                      ((10, 1, 17, 29), 14)])
def test_masked_crop_equals_pil_resize_of_the_masked_box(box, size):
  rng = np.random.default_rng(sum(box))
  image = rng.normal(size=(40, 40, 3)).astype(np.float32)
  x0, y0, x1, y1 = box
  mask = np.zeros((40, 40), bool)
  mask[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.7
  mask[y0, x0] = mask[y1 - 1, x1 - 1] = True  # The box is exactly the mask's extent.
  expected = _pil_crop(np.where(mask[..., None], image, 0.0).astype(np.float32), box, size)
  actual = jax.jit(classify.masked_crop, static_argnums=2)(jnp.asarray(image), jnp.asarray(mask), size)
  np.testing.assert_allclose(np.asarray(actual), expected, atol=1e-4)


def test_binary_masks_threshold_upsampled_probabilities():
  logits = jnp.asarray([[[-2.0, 3.0], [0.5, -0.1]]])
  out = np.asarray(jax.jit(classify.binary_masks, static_argnums=(1, 2))(logits, (2, 2), 0.5))
  np.testing.assert_array_equal(out, [[[False, True], [True, False]]])


def test_class_probs_is_softmax_of_scaled_cosine():
  rng = np.random.default_rng(0)
  emb, text = rng.normal(size=(3, 4, 8)), rng.normal(size=(5, 8))
  cos = (emb / np.linalg.norm(emb, axis=-1, keepdims=True)) @ (text / np.linalg.norm(text, axis=-1, keepdims=True)).T
  e = np.exp(100 * cos - (100 * cos).max(-1, keepdims=True))
  probs = jax.jit(classify.class_probs)(jnp.asarray(emb, jnp.float32), jnp.asarray(text, jnp.float32))
  np.testing.assert_allclose(probs, e / e.sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def small_clip():
  from ovseg_jax.models.clip import CLIP, ClipArchitecture
  arch = ClipArchitecture(embed_dim=16, image_size=16, patch_size=8, vision_width=32, vision_layers=1,
                          vision_heads=2, context_length=8, vocab_size=50, text_width=32, text_layers=1, text_heads=2)
  module = CLIP(arch)
  params = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 8), jnp.int32))["params"]
  return module, params


def test_batched_masked_crops_are_classified_like_crops_encoded_one_by_one(small_clip):
  module, params = small_clip
  rng = np.random.default_rng(5)
  images = jnp.asarray(rng.normal(size=(2, 24, 20, 3)), jnp.float32)
  mask_logits = jnp.asarray(rng.normal(size=(2, 3, 6, 5)) * 4, jnp.float32)
  mask_logits = mask_logits.at[1, 2].set(-10.0)  # An empty mask.
  text = jnp.asarray(rng.normal(size=(4, 16)), jnp.float32)
  batched = jax.jit(lambda p, x, m: classify.crop_class_probs(module, p, x, m, text, crop_size=16,
                                                             crops_per_call=4))(params, images, mask_logits)
  masks = classify.binary_masks(mask_logits, (24, 20), 0.5)
  one_by_one = jax.jit(lambda p, image, mask: classify.class_probs(
      module.apply({"params": p}, classify.masked_crop(image, mask, 16)[None], method="encode_image")[0], text))
  for b in range(2):
    for n in range(3):
      if not np.any(masks[b, n]):
        np.testing.assert_allclose(batched[b, n], 0.25)
        continue
      np.testing.assert_allclose(batched[b, n], one_by_one(params, images[b], masks[b, n]), rtol=1e-4, atol=1e-6)


def test_dense_classification_pools_patch_features_under_each_mask(small_clip):
  module, params = small_clip
  rng = np.random.default_rng(6)
  images = jnp.asarray(rng.normal(size=(1, 32, 32, 3)), jnp.float32)
  mask_logits = jnp.asarray(rng.normal(size=(1, 2, 4, 4)), jnp.float32)
  text = jnp.asarray(rng.normal(size=(3, 16)), jnp.float32)
  probs, dense = jax.jit(lambda p: (classify.dense_class_probs(module, p, images, mask_logits, text),
                                     module.apply({"params": p}, images, method="encode_dense")))(params)
  dense = np.asarray(dense, np.float64)[0]  # [4, 4, D]
  weights = 1 / (1 + np.exp(-np.asarray(mask_logits, np.float64)[0]))  # The patch grid is the mask grid here.
  pooled = np.einsum("nhw,hwd->nd", weights, dense) / weights.sum(axis=(1, 2))[:, None]
  np.testing.assert_allclose(probs[0], classify.class_probs(jnp.asarray(pooled, jnp.float32), text), rtol=1e-4,
                             atol=1e-6)


def test_unknown_classifier_is_named():
  with pytest.raises(ValueError, match="classifier 'clip_mean'.*ensemble:ovseg_voc"):
    classify.make_reclassifier("clip_mean", None, None, None, None, None, 16)


def test_fixed_no_object_class_takes_mass_from_unlike_masks():
  text = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])
  like, unlike = jnp.asarray([0.9, 0.1]), jnp.asarray([-1.0, -0.2])
  both = lambda x: (classify.class_probs(x, text), classify.class_probs(x, text, no_object_logit=20.0))
  plain, with_void = jax.jit(both)(jnp.stack([like, unlike]))
  logits = 100 * np.stack([np.asarray(v) / np.linalg.norm(v) for v in (like, unlike)]) @ np.eye(2)
  full = np.exp(np.concatenate([logits, np.full((2, 1), 20.0)], 1) - 100)
  np.testing.assert_allclose(with_void, (full / full.sum(1, keepdims=True))[:, :2], rtol=1e-4, atol=1e-12)
  assert float(jnp.sum(with_void[1])) < 0.01 and float(jnp.sum(plain[1])) == pytest.approx(1.0)
