"""CONCAT's trained pieces beside the Mask2Former (Chen et al. 2024, arXiv 2402.13697, and its supplement): the class
projector that maps query embeddings into CLIP's text space, and the VAE generator of pseudo query embeddings.

Class scores are cosine similarities to the classes' CLIP text embeddings divided by tau (0.07), and a learned
"no object" embedding scores the (K+1)-th column the same way (the text classifier of ZegFormer / PADing's
Mask2Former heads; the papers do not say how "no object" is scored: chosen here).

The generator is a conditional VAE (supplement sec. 1: "four layers of MLP-Batchnorm1d-leakyReLU for the encoder
and decoder"): the encoder reads a query embedding and its class's text embedding and gives the mean and log
variance of the latent; the decoder reads a latent and a text embedding and gives a pseudo query embedding. Each
side is four Linear-BatchNorm1d-LeakyReLU blocks, then a Linear head (the latent's mean and log variance, or the
embedding; choice: the embedding can then take any sign, as decoder queries do). BatchNorm normalises by the
statistics of the batch it is given (PyTorch's training mode), also when generating: the generator is only ever
applied to batches, and keeps no running averages. A batch's statistics carry its classes, so pseudo queries of
unseen classes are decoded inside a batch of the seen conditions CAT trained on (`stages.generate_in_context`).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ovseg_jax.ops.normalize import l2_normalize

LEAKY_SLOPE = 0.2  # The papers do not give LeakyReLU's slope: the usual 0.2 of feature-generating VAEs (chosen).
BATCH_NORM_EPS = 1e-5  # PyTorch's BatchNorm1d default.


def text_class_logits(embeddings: jax.Array, text: jax.Array, no_object: jax.Array, tau: float) -> jax.Array:
  """[..., C] projected query embeddings, [K, C] text embeddings, [C] no-object embedding -> [..., K+1] logits
  cos / tau."""
  classes = l2_normalize(jnp.concatenate([text, no_object[None]], 0).astype(jnp.float32))
  return jnp.einsum("...c,kc->...k", l2_normalize(embeddings.astype(jnp.float32)), classes,
                    precision=jax.lax.Precision.HIGHEST) / tau


class ClassProjector(nn.Module):
  """Query embeddings [..., D] -> CLIP text space [..., C]: Linear-ReLU-Linear (the supplement's "simple MLP"; two
  layers chosen), and the learned no-object embedding."""
  hidden_dim: int
  text_dim: int

  @nn.compact
  def __call__(self, queries: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = nn.relu(nn.Dense(self.hidden_dim, name="fc1")(queries))
    no_object = self.param("no_object", nn.initializers.normal(0.02), (self.text_dim,))
    return nn.Dense(self.text_dim, name="fc2")(x), no_object


class BatchNorm1d(nn.Module):
  """BatchNorm over the batch axis of [N, F] with the batch's own mean and biased variance (training mode)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
    mean = x.mean(0)
    var = ((x - mean) ** 2).mean(0)
    return (x - mean) * jax.lax.rsqrt(var + BATCH_NORM_EPS) * scale + bias


class MlpStack(nn.Module):
  """`len(widths)` Linear-BatchNorm1d-LeakyReLU blocks."""
  widths: tuple[int, ...]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, width in enumerate(self.widths):
      x = nn.leaky_relu(BatchNorm1d(name=f"bn{i}")(nn.Dense(width, name=f"fc{i}")(x)), LEAKY_SLOPE)
    return x


class Generator(nn.Module):
  """Conditional VAE over query embeddings [N, D] given text embeddings [N, C]."""
  query_dim: int
  hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
  latent_dim: int = 64

  def setup(self):
    self.encoder = MlpStack(self.hidden_dims)
    self.mean_head = nn.Dense(self.latent_dim)
    self.log_var_head = nn.Dense(self.latent_dim)
    self.decoder = MlpStack(self.hidden_dims)
    self.out_head = nn.Dense(self.query_dim)

  def encode(self, queries: jax.Array, text: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = self.encoder(jnp.concatenate([queries, text], -1))
    return self.mean_head(h), self.log_var_head(h)

  def decode(self, latent: jax.Array, text: jax.Array) -> jax.Array:
    return self.out_head(self.decoder(jnp.concatenate([latent, text], -1)))

  def __call__(self, queries: jax.Array, text: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
    """Reconstruction through the latent (reparameterised) and a pseudo embedding from the prior, for one batch."""
    mean, log_var = self.encode(queries, text)
    noise_key, prior_key = jax.random.split(key)
    latent = mean + jnp.exp(0.5 * log_var) * jax.random.normal(noise_key, mean.shape)
    return {"mean": mean, "log_var": log_var, "reconstruction": self.decode(latent, text),
            "generated": self.decode(jax.random.normal(prior_key, mean.shape), text)}

  def generate(self, text: jax.Array, key: jax.Array) -> jax.Array:
    """Pseudo query embeddings [N, D] for text embeddings [N, C], latents from the prior N(0, I)."""
    return self.decode(jax.random.normal(key, (text.shape[0], self.latent_dim)), text)
