"""Classifiers of mask queries: the slot of Mask2Former's class head that open-vocabulary methods fill.

A query classifier is a Flax module called as `classifier(query_embeddings [B, Q, D], class_embeddings [K, E])`
returning logits [B, Q, K+1], the last column "no object"; `class_embeddings` name the vocabulary (e.g. text
embeddings of class names), so one trained classifier scores any vocabulary. `Mask2Former(classifier=...)`
applies it to every prediction (the last layer's and the deep-supervision ones), so the criterion, matching and
semantic inference read its logits as they read the K+1 head's.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from ovseg_jax.models.layers import DType, l2_normalize


class TextClassifier(nn.Module):
  """logit_scale * cos(projected query, [class embeddings; learned no-object embedding]).

  Queries are projected linearly to the class embeddings' width (ZegFormer's and MaskCLIP-style heads); the
  no-object class is a learned embedding beside the given ones (as FC-CLIP's void embedding). The logit scale
  is 1 / temperature, learned in log space from that start (capped at `max_logit_scale`, as CLIP caps its own)
  or fixed with `learn_temperature=False`.
  """
  embed_dim: int
  temperature: float = 0.07
  learn_temperature: bool = True
  max_logit_scale: float = 100.0
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, query_embeddings: jax.Array, class_embeddings: jax.Array) -> jax.Array:
    if class_embeddings is None or class_embeddings.ndim != 2 or class_embeddings.shape[-1] != self.embed_dim:
      found = None if class_embeddings is None else tuple(class_embeddings.shape)
      raise ValueError(f"TextClassifier needs class_embeddings [K, {self.embed_dim}]; got {found}.")
    queries = nn.Dense(self.embed_dim, name="projection", dtype=self.dtype, param_dtype=self.param_dtype)(
        query_embeddings).astype(jnp.float32)
    no_object = self.param("no_object_embedding", nn.initializers.normal(1.0), (1, self.embed_dim), self.param_dtype)
    classes = jnp.concatenate([class_embeddings.astype(jnp.float32), no_object.astype(jnp.float32)])
    start = math.log(1.0 / self.temperature)
    if self.learn_temperature:
      log_scale = self.param("logit_scale", nn.initializers.constant(start), (), jnp.float32)
      scale = jnp.minimum(jnp.exp(log_scale), self.max_logit_scale)
    else:
      scale = 1.0 / self.temperature
    return scale * jnp.einsum("bqe,ke->bqk", l2_normalize(queries), l2_normalize(classes))
