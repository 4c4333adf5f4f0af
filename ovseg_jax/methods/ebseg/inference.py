"""EBSeg's semantic inference as released (`EBSeg.py`, inference branch of `forward`, and `semantic_inference`).

Per query: A, B and D class probabilities (softmax over the K classes of their logits, the background column
dropped) combined by `eval.ensembles.ebseg` (seen classes A^(1-a-g) D^a B^g, unseen A^(1-b-g) D^b B^g, softmax of
log(1e-8 + .), times 1 - A's no-object probability); the released code then appends that no-object probability,
takes log(. + 1e-8) and a softmax again, drops the last column, and sums the class scores over queries weighted by
the sigmoid of the masks (bilinearly resized to the image).

Classifiers: 'learned' (the combination with the weights the config's `inference.ensemble` names),
'ensemble:ebseg_vitb' / 'ensemble:ebseg_vitl' (the released weights named), and one embedding alone: 'embedding_a',
'embedding_b', 'embedding_d' (softmax over the K classes without the no-object factor).
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from ovseg_jax.eval import ensembles

SINGLE = {"embedding_a": "pred_logits", "embedding_b": "logits_b", "embedding_d": "logits_d"}


def classifier_names() -> list[str]:
  return ["learned", "ensemble:ebseg_vitb", "ensemble:ebseg_vitl", *SINGLE]


def check_classifier(name: str) -> None:
  if name not in classifier_names():
    raise ValueError(f"EBSeg classifier {name!r}: use one of {classifier_names()}.")


def mask_class_scores(outputs: Mapping[str, jax.Array], seen: jax.Array, classifier: str,
                      spec: ensembles.EnsembleSpec) -> jax.Array:
  """Per-query class scores [B, Q, K] before the final renormalisation (see the module docstring); `spec` gives
  the weights of 'learned'."""
  check_classifier(classifier)
  probs = lambda key: jax.nn.softmax(outputs[key][..., :-1].astype(jnp.float32), axis=-1)
  if classifier in SINGLE:
    return probs(SINGLE[classifier])
  if classifier != "learned":
    spec = ensembles.PUBLISHED[classifier.removeprefix("ensemble:")]
  no_object = jax.nn.softmax(outputs["pred_logits"].astype(jnp.float32), axis=-1)[..., -1]
  return ensembles.ebseg(probs("pred_logits"), probs("logits_b"), probs("logits_d"), seen, spec.a, spec.b, spec.g,
                         no_object)


def semantic_scores(outputs: Mapping[str, jax.Array], seen: jax.Array, classifier: str, spec: ensembles.EnsembleSpec,
                    out_hw: tuple[int, int]) -> jax.Array:
  """Per-pixel class scores [B, K, H, W]."""
  scores = mask_class_scores(outputs, seen, classifier, spec)
  if classifier not in SINGLE:
    no_object = jax.nn.softmax(outputs["pred_logits"].astype(jnp.float32), axis=-1)[..., -1:]
    full = jnp.concatenate([scores, no_object], axis=-1) + 1e-8  # softmax(log(x + 1e-8)) = (x + 1e-8) / sum.
    scores = (full / jnp.sum(full, axis=-1, keepdims=True))[..., :-1]
  masks = outputs["pred_masks"].astype(jnp.float32)
  masks = jax.nn.sigmoid(jax.image.resize(masks, (*masks.shape[:2], *out_hw), "bilinear"))
  return jnp.einsum("bqk,bqhw->bkhw", scores, masks)
