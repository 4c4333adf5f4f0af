"""The 2x upsampling of the ViT pyramid and UperNet: flax's strided ConvTranspose as one matmul."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ovseg_jax.models.layers import Upsample2x

CONV_TRANSPOSE = nn.ConvTranspose(5, (2, 2), strides=(2, 2), padding="VALID")


def _numpy_reference(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
  """float64 transcription of a transposed convolution with stride = kernel = 2: input pixel (h, w) adds
  x[h, w] @ k[1 - i, 1 - j] at output (2h + i, 2w + j) (the flipped kernel of ConvTranspose)."""
  b, h, w, _ = x.shape
  out = np.zeros((b, 2 * h, 2 * w, kernel.shape[-1]))
  for i in range(2):
    for j in range(2):
      out[:, i::2, j::2] = x.astype(np.float64) @ kernel[1 - i, 1 - j].astype(np.float64)
  return out + bias


def test_equals_conv_transpose_and_a_float64_transcription():
  x = jax.random.normal(jax.random.key(0), (2, 3, 5, 7))
  params = CONV_TRANSPOSE.init(jax.random.key(1), x)
  params = jax.tree.map(lambda p: jax.random.normal(jax.random.key(2), p.shape), params)  # A nonzero bias too.
  ours = jax.jit(Upsample2x(5).apply)(params, x)
  reference = _numpy_reference(np.asarray(x), np.asarray(params["params"]["kernel"]), np.asarray(params["params"]["bias"]))
  np.testing.assert_allclose(np.asarray(ours), reference, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(CONV_TRANSPOSE.apply(params, x)), rtol=1e-5, atol=1e-5)


def test_same_parameters_at_initialisation_and_same_gradients():
  x = jax.random.normal(jax.random.key(3), (2, 4, 3, 6))
  ours, theirs = Upsample2x(5), CONV_TRANSPOSE
  params = ours.init(jax.random.key(4), x)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, theirs.init(jax.random.key(4), x)))
  weights = jax.random.normal(jax.random.key(5), (2, 8, 6, 5))

  def gradients(module):
    return jax.jit(jax.grad(lambda p, x: jnp.sum(weights * module.apply(p, x)), argnums=(0, 1)))(params, x)
  for a, b in zip(jax.tree.leaves(gradients(ours)), jax.tree.leaves(gradients(theirs))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
