"""CONCAT's losses (Chen et al. 2024, arXiv 2402.13697; supplement sec. 1 for the values).

CON (conditional token alignment, trained with the base model): each matched query's projected embedding is
pulled towards a CLIP target built from the CLS tokens of the complete image (F) and of the image masked to the
query's segment (F_m), with the segment enhanced: normalize(F + gamma * F_m), gamma = 2 (the supplement's
"multiply" enhancement, read here as the masked token scaled by gamma; the exact formula is chosen); negatives are
a bank of 32 CLS tokens of other images. InfoNCE with tau = 0.07.

CAT (cycle transition, trains the generator; the base model and projector frozen):
- semantic -> vision, embedding contrast (tau_r = 0.07): each pseudo query generated from a segment's class text
  is pulled to that segment's real query and pushed from the real queries of other classes and from the queries
  with no segment (V^0, the unmatched queries);
- vision -> semantic (weight lambda_r = 0.1): the pseudo query, through the frozen projector, is classified
  against the seen classes' text embeddings (cross-entropy of cos / tau);
- the VAE's own terms (weight lambda_f = 0.01): reconstruction of the real query (mean squared error) + KL of the
  latent to N(0, I). Which term each lambda weights is chosen here as named above.

Union fine-tuning: the projector alone is trained by cross-entropy over seen + unseen classes (+ no object) on the
real queries of the training images (matched: their class; unmatched: no object) and generated unseen ones
(supplement Tables 4-5: no pseudo seen queries, 150 noise samples per unseen class).

The main paper's abstract gives CON's targets (CLS tokens of the complete and the masked image) and CAT's two
directions (pseudo queries pulled to the targets with segments and pushed from those without; mapped back to
semantics and supervised by the real text embeddings); the exact formulas above (the enhancement, the InfoNCE
forms, the VAE terms) are this implementation's reading of them and of the supplement's ablations.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ovseg_jax.ops.normalize import l2_normalize

_HIGHEST = jax.lax.Precision.HIGHEST


def _cos(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.einsum("nc,mc->nm", l2_normalize(a.astype(jnp.float32)), l2_normalize(b.astype(jnp.float32)),
                    precision=_HIGHEST)


def _masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  weights = weights.astype(jnp.float32)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def enhanced_targets(complete: jax.Array, masked: jax.Array, gamma: float) -> jax.Array:
  """CLS tokens of the complete image [N, C] and of the segment's masked image [N, C] -> the segment-enhanced
  target normalize(F + gamma * F_m)."""
  return l2_normalize(complete.astype(jnp.float32) + gamma * masked.astype(jnp.float32))


def con_loss(projected: jax.Array, targets: jax.Array, bank: jax.Array, bank_valid: jax.Array, valid: jax.Array,
             tau: float) -> jax.Array:
  """InfoNCE of projected queries [N, C] against their targets [N, C] (positives) and the bank [N, B, C] of
  negatives (`bank_valid` [N, B]); mean over the `valid` [N] rows."""
  p = l2_normalize(projected.astype(jnp.float32))
  positive = jnp.sum(p * l2_normalize(targets.astype(jnp.float32)), -1) / tau
  negative = jnp.einsum("nc,nbc->nb", p, l2_normalize(bank.astype(jnp.float32)), precision=_HIGHEST) / tau
  negative = jnp.where(bank_valid, negative, -jnp.inf)
  logits = jnp.concatenate([positive[:, None], negative], -1)
  return _masked_mean(jax.nn.logsumexp(logits, -1) - positive, valid)


def embedding_contrast(generated: jax.Array, real: jax.Array, real_classes: jax.Array, empty: jax.Array,
                       empty_valid: jax.Array, valid: jax.Array, tau_r: float) -> jax.Array:
  """Pseudo queries [N, D] generated from the classes of the real queries [N, D] (`real_classes` [N]): positive =
  the same row's real query; negatives = real queries of other classes and the queries with no segment [E, D]
  (`empty_valid` [E]); mean over the `valid` [N] rows (which also says which real queries exist)."""
  to_real = _cos(generated, real) / tau_r
  others = (real_classes[None, :] != real_classes[:, None]) & valid[None, :]
  positive = jnp.diagonal(to_real)
  negative = jnp.concatenate([jnp.where(others, to_real, -jnp.inf),
                              jnp.where(empty_valid[None, :], _cos(generated, empty) / tau_r, -jnp.inf)], -1)
  logits = jnp.concatenate([positive[:, None], negative], -1)
  return _masked_mean(jax.nn.logsumexp(logits, -1) - positive, valid)


def classification_loss(logits: jax.Array, classes: jax.Array, valid: jax.Array) -> jax.Array:
  """Cross-entropy of [N, K] logits against class indices [N], mean over the `valid` rows."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  picked = jnp.take_along_axis(log_probs, jnp.maximum(classes, 0)[:, None], -1)[:, 0]
  return _masked_mean(-picked, valid)


def vae_terms(real: jax.Array, reconstruction: jax.Array, mean: jax.Array, log_var: jax.Array,
              valid: jax.Array) -> jax.Array:
  """Mean squared reconstruction error of the real queries + KL(N(mean, exp(log_var)) || N(0, I)) summed over
  the latent, both averaged over the `valid` rows."""
  squared = jnp.mean((reconstruction.astype(jnp.float32) - real.astype(jnp.float32)) ** 2, -1)
  kl = 0.5 * jnp.sum(jnp.exp(log_var) + mean ** 2 - 1.0 - log_var, -1)
  return _masked_mean(squared + kl, valid)


def cat_loss(contrast: jax.Array, semantic: jax.Array, vae: jax.Array, lambda_r: float,
             lambda_f: float) -> jax.Array:
  """The generator's objective: contrast + lambda_r * vision->semantic + lambda_f * VAE terms."""
  return contrast + lambda_r * semantic + lambda_f * vae
