"""Image normalisation shared by training, evaluation and prediction."""
import jax.numpy as jnp

# CLIP's pixel statistics; the models see images normalised with them.
PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize_images(images_uint8: jnp.ndarray) -> jnp.ndarray:
  """uint8 NHWC -> float32 NHWC normalised with CLIP's mean and std."""
  x = images_uint8.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(PIXEL_MEAN)) / jnp.asarray(PIXEL_STD)
