"""Normalisation of images (pixel statistics) and of embeddings (unit length), shared by every method."""
import jax.numpy as jnp

from ovseg_jax.models.layers import l2_normalize  # Re-exported: models need it too.

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PIXEL_MEAN", "PIXEL_STD", "l2_normalize", "normalize_images"]

# CLIP's pixel statistics; the models see images normalised with them.
PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)
# ImageNet's, which DINO was trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_images(images_uint8: jnp.ndarray, mean: tuple[float, ...] = PIXEL_MEAN,
                     std: tuple[float, ...] = PIXEL_STD) -> jnp.ndarray:
  """uint8 NHWC -> float32 NHWC normalised with `mean` and `std` (CLIP's by default)."""
  x = images_uint8.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean)) / jnp.asarray(std)
