"""Mask classification geometry (masked crops against PIL) and the CLIP mask classifiers."""
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from ovseg_jax import classify


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
  out = np.asarray(classify.binary_masks(logits, (2, 2), 0.5))
  np.testing.assert_array_equal(out, [[[False, True], [True, False]]])


def test_class_probs_is_softmax_of_scaled_cosine():
  rng = np.random.default_rng(0)
  emb, text = rng.normal(size=(3, 4, 8)), rng.normal(size=(5, 8))
  cos = (emb / np.linalg.norm(emb, axis=-1, keepdims=True)) @ (text / np.linalg.norm(text, axis=-1, keepdims=True)).T
  e = np.exp(100 * cos - (100 * cos).max(-1, keepdims=True))
  np.testing.assert_allclose(classify.class_probs(jnp.asarray(emb, jnp.float32), jnp.asarray(text, jnp.float32)),
                             e / e.sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)
