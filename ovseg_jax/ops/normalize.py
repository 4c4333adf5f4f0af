"""Normalisation of images (pixel statistics) and of embeddings (unit length), shared by every method."""
import jax
import jax.numpy as jnp

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


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) along `axis` (rsqrt form: finite gradients at zero vectors)."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))
