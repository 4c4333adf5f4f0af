"""Open-vocabulary inference: class names -> text embeddings; image -> per-pixel class scores -> labels.

Per-pixel scores come from the final decoder layer's masks and the mask embeddings classified against the
class-name embeddings (softmax over classes of the scaled cosine similarity), combined either as
MaskFormer's semantic inference normalised per pixel (`sum`, see `pixel_scores`) or by the winning query
per pixel (`winner`: the query with the highest class confidence x mask probability decides).

Both give every pixel a score in [0, 1] per class, so a background threshold reads a probability, as GroupViT's
thresholds (VOC 0.95, Pascal Context 0.35, COCO-Object 0.95) do.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.tokenizer import tokenize
from ovseg_jax.ops.normalize import l2_normalize, normalize_images

DECODE_METHODS = ("sum", "winner")


def class_text_embeddings(model: Any, params: Any, class_names: Sequence[str], templates: Sequence[str],
                          context_length: int) -> jax.Array:
  """[C, D] unit-norm embeddings: every template filled with the name, normalised, averaged, renormalised."""
  if not class_names:
    raise ValueError("the class list is empty: give at least one class name.")
  prompts = [t.format(name) for name in class_names for t in templates]
  tokens = jnp.asarray(tokenize(prompts, context_length=context_length))
  emb = _text_encoder(model)(params, tokens)
  emb = l2_normalize(emb).reshape(len(class_names), len(templates), -1)
  return l2_normalize(jnp.mean(emb, axis=1))


@functools.lru_cache(maxsize=16)
def _text_encoder(model: Any) -> Callable:
  """One jitted text tower per model (modules compare by value), so a new vocabulary compiles only for a new
  number of prompts."""
  return jax.jit(lambda p, t: model.apply({"params": p}, t, method="encode_text"))


def expand_synonyms(class_names: Sequence[str],
                    synonyms: Mapping[str, Sequence[str]]) -> tuple[list[str], np.ndarray]:
  """Every class becomes one or more names to embed (its synonyms, else itself).

  Returns the flat name list and `groups` [num_names, C] (1 where a name belongs to a class): the
  probability of a class is the sum of its names' probabilities under one softmax over all names.
  """
  names, owner = [], []
  for c, name in enumerate(class_names):
    alternatives = list(synonyms.get(name, [name]))
    if not alternatives:
      raise ValueError(f"class {name!r} has an empty synonym list; give at least one name or drop the entry.")
    names += alternatives
    owner += [c] * len(alternatives)
  groups = np.zeros((len(names), len(class_names)), np.float32)
  groups[np.arange(len(names)), owner] = 1.0
  return names, groups


def mask_class_probs(mask_embeddings: jax.Array, text_embeddings: jax.Array, logit_scale: jax.Array,
                     name_groups: jax.Array | None = None) -> jax.Array:
  """[B, N, C]: softmax over names of the scaled cosine similarity, synonym probabilities summed per class."""
  class_prob = jax.nn.softmax(logit_scale * l2_normalize(mask_embeddings) @ text_embeddings.T, axis=-1)
  return class_prob if name_groups is None else class_prob @ name_groups


def pixel_scores(mask_logits: jax.Array, class_prob: jax.Array, out_hw: tuple[int, int], decode: str) -> jax.Array:
  """[B, C, H, W] from mask logits [B, N, h, w] and per-mask class scores [B, N, C] ('sum' or 'winner').

  `sum`: MaskFormer's sum over queries of class prob x mask prob, divided per pixel by the pixel's total mask
  probability: score_c(x) = sum_q m_q(x) p_q(c) / sum_q m_q(x). Each pixel is thus assigned to the queries in
  proportion to their mask probabilities (weights summing to one over queries), and its score is a convex
  combination of per-query class distributions: in [0, 1], and summing to at most one over classes. This is the
  quantity GroupViT thresholds ("we threshold the maximum probability"): the class probability of the group a
  pixel is assigned to, the assignment being one over groups per pixel. Unnormalised, the sum over 64 queries
  grows with how many masks overlap a pixel (up to 64), so a fixed threshold would mean different things on
  different images. With a no-object column (class scores summing to less than one) the divisor equals the sum
  of the class scores plus the queries' no-object mass, so that mass stays out of every class. The division is
  one positive number per pixel: the argmax over classes is MaskFormer's. The per-query weights are computed as
  a softmax of log-sigmoid logits, which is the same ratio without dividing by a vanishing sum.
  """
  if decode not in DECODE_METHODS:
    raise ValueError(f"eval.decode={decode!r}: use one of {DECODE_METHODS}.")
  b, n = mask_logits.shape[:2]
  mask_logits = jax.image.resize(mask_logits.astype(jnp.float32), (b, n, *out_hw), method="bilinear")
  if decode == "sum":
    weights = jax.nn.softmax(jax.nn.log_sigmoid(mask_logits), axis=1)  # m_q / sum_q m_q, per pixel
    return jnp.einsum("bnc,bnhw->bchw", class_prob, weights)
  mask_prob = jax.nn.sigmoid(mask_logits)
  confidence = jnp.max(class_prob, axis=-1)  # [B, N]
  winner = jnp.argmax(confidence[:, :, None, None] * mask_prob, axis=1)  # [B, H, W]
  win_mask = jnp.take_along_axis(mask_prob, winner[:, None], axis=1)[:, 0]  # [B, H, W]
  win_class = jnp.take_along_axis(class_prob[:, :, None, None, :], winner[:, None, :, :, None], axis=1)[:, 0]
  return jnp.moveaxis(win_class, -1, 1) * win_mask[:, None]


def pixel_class_scores(mask_logits: jax.Array, mask_embeddings: jax.Array, text_embeddings: jax.Array,
                       logit_scale: jax.Array, out_hw: tuple[int, int], decode: str,
                       name_groups: jax.Array | None = None) -> jax.Array:
  """[B, C, H, W] scores in [0, 1] from per-query softmax class probs and sigmoid mask probs (`pixel_scores`).

  `text_embeddings` [num_names, D]; `name_groups` [num_names, C] sums synonym probabilities per class
  (None: one name per class).
  """
  class_prob = mask_class_probs(mask_embeddings, text_embeddings, logit_scale, name_groups)
  return pixel_scores(mask_logits, class_prob, out_hw, decode)


def make_segmenter(model: Any, decode: str, reclassify: Callable | None = None):
  """Jitted `fn(params, images_uint8 [B,H,W,3], text_embeddings [names,D], name_groups [names,C])
  -> scores [B,C,H,W]`. `reclassify(class_prob, images, mask_logits) -> class scores` replaces the learned
  per-mask class probabilities (e.g. by a CLIP classifier or an ensemble, `ovseg_jax.eval.classify`). Without
  one, the function is shared by every call for the same model and decode: a new vocabulary (text embeddings are
  arguments) or checkpoint of the model compiles again only for a new number of names or classes."""
  if reclassify is None:
    return _learned_segmenter(model, decode)
  return _segmenter(model, decode, reclassify)


@functools.lru_cache(maxsize=16)
def _learned_segmenter(model: Any, decode: str):
  return _segmenter(model, decode, None)


def _segmenter(model: Any, decode: str, reclassify: Callable | None):
  def fn(params, images, text_embeddings, name_groups):
    normalized = normalize_images(images)
    out = model.apply({"params": params}, normalized, method="encode_image")
    scale = model.apply({"params": params}, method="logit_scale")
    mask_logits = out["pred_masks"][-1]
    class_prob = mask_class_probs(out["mask_embeddings"], text_embeddings, scale, name_groups)
    if reclassify is not None:
      class_prob = reclassify(class_prob, normalized, mask_logits)
    return pixel_scores(mask_logits, class_prob, images.shape[1:3], decode)
  return jax.jit(fn)
