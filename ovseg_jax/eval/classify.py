"""CLIP classification of mask proposals: masked crops (OVSeg) and mask-pooled dense features (MaskCLIP).

Both return per-mask class probabilities [B, N, K] (softmax over the K class embeddings of the scaled cosine
similarity) that the ensembles in `ovseg_jax.eval.ensembles` combine with the segmenter's own. Images are CLIP-
normalised, so filling outside a mask with 0 is filling with CLIP's mean colour, as OVSeg does.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from ovseg_jax.eval import ensembles
from ovseg_jax.models.ipclip import ipclip_embeddings
from ovseg_jax.models.resize import resize_bilinear
from ovseg_jax.ops.normalize import l2_normalize

# CLIP's trained temperature: OpenAI's models end training at the clip bound, exp(logit_scale) = 100.
CLIP_LOGIT_SCALE = 100.0


def class_probs(embeddings: Array, text_embeddings: Array, logit_scale: float = CLIP_LOGIT_SCALE,
                no_object_logit: float | None = None) -> Array:
  """[..., D] x [K, D] -> [..., K]: softmax over classes of the scaled cosine similarity.

  `no_object_logit` adds a fixed "no object" class with that logit (a constant embedding's score) to the
  softmax and drops its column, so a mask that resembles no class keeps little probability for any.
  """
  logits = logit_scale * l2_normalize(embeddings.astype(jnp.float32)) @ l2_normalize(text_embeddings).T
  if no_object_logit is None:
    return jax.nn.softmax(logits, axis=-1)
  extra = jnp.full((*logits.shape[:-1], 1), no_object_logit, logits.dtype)
  return jax.nn.softmax(jnp.concatenate([logits, extra], axis=-1), axis=-1)[..., :-1]


def binary_masks(mask_logits: Array, out_hw: tuple[int, int], threshold: float) -> Array:
  """[..., h, w] logits -> bool [..., H, W]: sigmoid of the bilinearly upsampled logits above `threshold`."""
  resized = jax.image.resize(mask_logits.astype(jnp.float32), (*mask_logits.shape[:-2], *out_hw), "bilinear")
  return jax.nn.sigmoid(resized) > threshold


def _box(mask: Array) -> tuple[Array, Array, Array, Array]:
  """[y0, y1) x [x0, x1) of the True pixels of a [H, W] mask; the whole image if it is empty."""
  def extent(any_along: Array):
    n = any_along.shape[0]
    idx = jnp.arange(n)
    lo = jnp.min(jnp.where(any_along, idx, n))
    hi = jnp.max(jnp.where(any_along, idx + 1, 0))
    return jnp.where(hi > lo, lo, 0), jnp.where(hi > lo, hi, n)
  y0, y1 = extent(jnp.any(mask, axis=1))
  x0, x1 = extent(jnp.any(mask, axis=0))
  return y0, y1, x0, x1


def masked_crop(image: Array, mask: Array, size: int) -> Array:
  """OVSeg's "mask & crop": pixels outside `mask` set to 0 (the mean colour), the mask's bounding box
  resized (antialiased bilinear, aspect not kept) to `size` x `size`. image [H, W, C], mask bool [H, W]."""
  y0, y1, x0, x1 = (v.astype(jnp.float32) for v in _box(mask))
  scale = jnp.stack([size / (y1 - y0), size / (x1 - x0)])
  translation = -jnp.stack([y0, x0]) * scale
  filled = jnp.where(mask[..., None], image, 0.0)
  return jax.image.scale_and_translate(filled, (size, size, image.shape[-1]), (0, 1), scale, translation,
                                       "linear", antialias=True)


def crop_with_mask(image: Array, mask: Array, size: int) -> tuple[Array, Array]:
  """`masked_crop` and the mask cropped and resized the same way (bool, > 0.5: nearly nearest-neighbour, as
  OVSeg resizes the masks that travel with its crops to the mask prompts)."""
  crop_mask = masked_crop(mask[..., None].astype(jnp.float32), mask, size)[..., 0] > 0.5
  return masked_crop(image, mask, size), crop_mask


def crop_class_probs(clip: Any, clip_params: Any, images: Array, mask_logits: Array, text_embeddings: Array,
                     crop_size: int, threshold: float = 0.5, crops_per_call: int = 32,
                     no_object_logit: float | None = None) -> Array:
  """Masked-crop classification. images [B, H, W, 3] CLIP-normalised, mask_logits [B, N, h, w] ->
  [B, N, K]. Empty masks get the uniform distribution (no evidence for any class). A CLIP with mask prompts
  also gets each crop's mask."""
  b, n = mask_logits.shape[:2]
  masks = binary_masks(mask_logits, images.shape[1:3], threshold)  # [B, N, H, W]
  crops, crop_masks = jax.vmap(jax.vmap(crop_with_mask, in_axes=(None, 0, None)), in_axes=(0, 0, None))(
      images, masks, crop_size)
  crops = crops.reshape(b * n, crop_size, crop_size, images.shape[-1])
  crop_masks = crop_masks.reshape(b * n, crop_size, crop_size)
  prompted = getattr(getattr(clip, "architecture", None), "mask_prompt_depth", 0) > 0  # Masks travel with crops.
  encode = lambda x: clip.apply({"params": clip_params}, x[0][None], x[1][None] if prompted else None,
                                method="encode_image")[0]
  embeddings = jax.lax.map(encode, (crops, crop_masks), batch_size=crops_per_call).reshape(b, n, -1)
  probs = class_probs(embeddings, text_embeddings, no_object_logit=no_object_logit)
  empty = ~jnp.any(masks, axis=(-2, -1))  # [B, N]
  return jnp.where(empty[..., None], 1.0 / text_embeddings.shape[0], probs)


def dense_class_probs(clip: Any, clip_params: Any, images: Array, mask_logits: Array,
                      text_embeddings: Array, no_object_logit: float | None = None) -> Array:
  """Mask-pooled classification in one CLIP pass: the dense patch features [B, h', w', D] averaged under each
  mask's probability map (resized to the patch grid). -> [B, N, K]."""
  dense = clip.apply({"params": clip_params}, images, method="encode_dense").astype(jnp.float32)
  b, n = mask_logits.shape[:2]
  grid = dense.shape[1:3]
  weights = jax.nn.sigmoid(jax.image.resize(mask_logits.astype(jnp.float32), (b, n, *grid), "bilinear"))
  pooled = jnp.einsum("bnhw,bhwd->bnd", weights, dense) / (jnp.sum(weights, axis=(-2, -1))[..., None] + 1e-6)
  return class_probs(pooled, text_embeddings, no_object_logit=no_object_logit)


def ipclip_class_probs(clip: Any, clip_params: Any, images: Array, mask_logits: Array, text_embeddings: Array,
                       start_layers: int, input_size: int) -> Array:
  """MAFT's IP-CLIP classification of all masks of an image in one pass (`models.ipclip`): masks = sigmoid of the
  logits upsampled to the image (bilinear, align_corners=True), images resized to `input_size`, probabilities
  = softmax of 100 x cosine (MAFT's no-object column is dropped before its softmax). -> [B, N, K]."""
  masks = jax.nn.sigmoid(resize_bilinear(mask_logits.astype(jnp.float32), images.shape[1:3], axes=(2, 3),
                                         align_corners=True))
  resized = resize_bilinear(images.astype(jnp.float32), (input_size, input_size))
  embeddings = ipclip_embeddings(clip.architecture, clip_params["visual"], resized, masks, start_layers)
  return class_probs(embeddings, text_embeddings)


def classifier_names() -> list[str]:
  return ["learned", "clip_crop", "clip_dense"] + [f"ensemble:{name}" for name in sorted(ensembles.PUBLISHED)]


def make_reclassifier(name: str, clip: Any, clip_params: Any, clip_text: Array, name_groups: Array, seen: Array,
                      crop_size: int, threshold: float = 0.5, crops_per_call: int = 32,
                      no_object_logit: float | None = None, ipclip: tuple[int, int] | None = None):
  """`fn(p_seg [B,N,C], images [B,H,W,3] CLIP-normalised, mask_logits [B,N,h,w]) -> scores [B,N,C]` for a
  classifier named in `classifier_names()`, or None for 'learned' (the segmenter's own probabilities).

  CLIP scores cover the same names as the segmenter's (`clip_text` [names, D]), summed per class with
  `name_groups` [names, C]; `seen` [C] marks the classes the MAFT and EBSeg ensembles treat as seen. Ensembles
  (`ovseg_jax.eval.ensembles.PUBLISHED`): OVSeg and MAFT combine the segmenter with masked-crop CLIP; EBSeg's
  three sources are the segmenter (A), masked crops (standing in for its CLIP head, B) and mask-pooled dense
  features (D). The segmenter has no no-object class, so EBSeg's final factor (1 - A's no-object) is 1. With
  `ipclip` (start_layers, input_size) the CLIP is a MAFT IP-CLIP and MAFT's ensembles read its scores.
  """
  if name == "learned":
    return None
  if name not in classifier_names():
    raise ValueError(f"classifier {name!r}: use one of {classifier_names()}.")

  def crop(images, mask_logits):
    return crop_class_probs(clip, clip_params, images, mask_logits, clip_text, crop_size, threshold,
                            crops_per_call, no_object_logit) @ name_groups

  def dense(images, mask_logits):
    return dense_class_probs(clip, clip_params, images, mask_logits, clip_text, no_object_logit) @ name_groups

  def valid(images, mask_logits):  # Masks with a pixel to crop; the others keep CLIP's factor at 1.
    return jnp.any(binary_masks(mask_logits, images.shape[1:3], threshold), axis=(-2, -1))

  if name == "clip_crop":
    return lambda p_seg, images, mask_logits: crop(images, mask_logits)
  if name == "clip_dense":
    return lambda p_seg, images, mask_logits: dense(images, mask_logits)
  spec = ensembles.PUBLISHED[name.removeprefix("ensemble:")]
  if spec.ipclip and ipclip is not None:
    crop = lambda images, mask_logits: ipclip_class_probs(clip, clip_params, images, mask_logits, clip_text,
                                                          *ipclip) @ name_groups
  if spec.method == "clip_only":
    return lambda p_seg, images, mask_logits: crop(images, mask_logits)
  if spec.method == "ovseg":
    return lambda p_seg, images, mask_logits: ensembles.ovseg(p_seg, crop(images, mask_logits), spec.weight,
                                                              valid(images, mask_logits))
  if spec.method == "maft_frozen_clip":
    return lambda p_seg, images, mask_logits: ensembles.maft_frozen_clip(
        p_seg, crop(images, mask_logits), seen, spec.weight, valid(images, mask_logits))
  return lambda p_seg, images, mask_logits: ensembles.ebseg(p_seg, crop(images, mask_logits),
                                                            dense(images, mask_logits), seen, spec.a, spec.b, spec.g)


def uses_seen_classes(name: str) -> bool:
  """Whether a classifier treats seen and unseen classes differently (MAFT eq. 1, EBSeg)."""
  spec = ensembles.PUBLISHED.get(name.removeprefix("ensemble:")) if name.startswith("ensemble:") else None
  return spec is not None and spec.method in ("maft_frozen_clip", "ebseg")


def classifier_note(name: str) -> str:
  """What a classifier's results row stands for (the ensembles' sources and stand-ins); '' for the others."""
  spec = ensembles.PUBLISHED.get(name.removeprefix("ensemble:")) if name.startswith("ensemble:") else None
  return spec.note if spec else ""
