"""MAFT's training objective as the released `MAFT.forward` (jiaosiyu1999/MAFT, `freeseg/MAFT.py`) computes it.

Class logits are 100 x the cosine between an image embedding and the text embeddings, with a "no object"
embedding appended whose column is dropped before the softmax (`clip_cls[..., :-1]`), so it never changes a
probability; it is kept to mirror the released logits.

- Mask-aware loss: for every ground-truth class segment of an image, IP-CLIP's probabilities of that class over
  the image's proposals are pulled (SmoothL1, beta 1, mean over segments x proposals) towards the proposals' soft
  IoU with the segment, min-max normalised over the proposals (`get_iou`, `mynorm`).
- Self-distillation: SmoothL1 between the class probabilities of IP-CLIP without proposals (its plain class
  embedding) and of the frozen original CLIP on the same image, weight `distillation_weight` (0.1 as released).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ovseg_jax.models.clip import ClipArchitecture
from ovseg_jax.models.ipclip import ipclip_embeddings
from ovseg_jax.models.resize import resize_bilinear
from ovseg_jax.ops.normalize import IMAGENET_MEAN, IMAGENET_STD, l2_normalize, normalize_images

TEMPERATURE = 100.0  # ClipAdapter.get_sim_logits.
IOU_EPS = 1e-7  # get_iou's union term.
NORM_EPS = 1e-8  # mynorm's range term.


def class_logits(image_emb: jax.Array, text_emb: jax.Array, no_object_emb: jax.Array) -> jax.Array:
  """[..., D] image embeddings, [K, D] unit text embeddings, [D] no-object embedding -> logits [..., K + 1]."""
  classes = jnp.concatenate([text_emb, l2_normalize(no_object_emb)[None]], axis=0)
  return TEMPERATURE * l2_normalize(image_emb.astype(jnp.float32)) @ classes.T


def class_probs(logits: jax.Array) -> jax.Array:
  """Softmax over the K classes, the no-object column dropped first."""
  return jax.nn.softmax(logits[..., :-1], axis=-1)


def smooth_l1(x: jax.Array, y: jax.Array, beta: float = 1.0) -> jax.Array:
  """Elementwise SmoothL1 (torch.nn.SmoothL1Loss with reduction='none')."""
  d = jnp.abs(x - y)
  return jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)


def soft_iou(proposals: jax.Array, targets: jax.Array) -> jax.Array:
  """Soft IoU of proposal probabilities [B, N, H, W] with binary targets [B, M, H, W] -> [B, M, N]."""
  p = proposals.reshape(*proposals.shape[:2], -1).astype(jnp.float32)
  t = targets.reshape(*targets.shape[:2], -1).astype(jnp.float32)
  inter = jnp.einsum("bmx,bnx->bmn", t, p)
  union = jnp.sum(t, -1)[..., None] + jnp.sum(p, -1)[:, None, :] - inter + IOU_EPS
  return inter / union


def min_max_normalise(x: jax.Array) -> jax.Array:
  """(x - min) / (max - min + 1e-8) along the last axis."""
  low, high = jnp.min(x, -1, keepdims=True), jnp.max(x, -1, keepdims=True)
  return (x - low) / (high - low + NORM_EPS)


def segment_masks(segments: jax.Array, num_targets: int) -> jax.Array:
  """Segment-index maps [B, H, W] (-1 ignored) -> binary masks [B, M, H, W] of targets 0..M-1."""
  return segments[:, None] == jnp.arange(num_targets)[None, :, None, None]


def mask_aware_loss(probs: jax.Array, proposals: jax.Array, segments: jax.Array,
                    target_classes: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(loss, normalised IoU targets [B, M, N]). probs [B, N, K] IP-CLIP's class probabilities per proposal;
  proposals [B, N, H, W] in [0, 1]; segments [B, H, W]; target_classes [B, M] (-1 pads)."""
  valid = target_classes >= 0
  ious = jax.lax.stop_gradient(min_max_normalise(soft_iou(proposals, segment_masks(segments,
                                                                                   target_classes.shape[1]))))
  # probs of each target's class over the proposals: [B, M, N].
  picked = jnp.take_along_axis(jnp.swapaxes(probs, 1, 2), jnp.maximum(target_classes, 0)[..., None], axis=1)
  per_target = jnp.mean(smooth_l1(picked, ious), axis=-1)
  return jnp.sum(jnp.where(valid, per_target, 0.0)) / jnp.maximum(jnp.sum(valid), 1), ious


def distillation_loss(student_probs: jax.Array, teacher_probs: jax.Array) -> jax.Array:
  return jnp.mean(smooth_l1(student_probs, jax.lax.stop_gradient(teacher_probs)))


@dataclasses.dataclass(frozen=True)
class MaftSettings:
  architecture: ClipArchitecture
  start_layers: int  # START_LAYERS.
  input_size: int  # IP-CLIP's image size (480 as released).
  distillation_weight: float  # dis_weight.


def proposal_masks(mask2former: Any, m2f_params: Any, images_uint8: jax.Array) -> jax.Array:
  """The frozen Mask2Former's proposals [B, Q, H, W] in [0, 1]: mask logits upsampled to the image
  (bilinear, align_corners=True, as `MAFT.forward`), then sigmoid."""
  outputs = mask2former.apply({"params": m2f_params}, normalize_images(images_uint8, IMAGENET_MEAN, IMAGENET_STD))
  logits = resize_bilinear(outputs["pred_masks"].astype(jnp.float32), images_uint8.shape[1:3], axes=(2, 3),
                           align_corners=True)
  return jax.nn.sigmoid(jax.lax.stop_gradient(logits))


def clip_input(images_uint8: jax.Array, size: int) -> jax.Array:
  """CLIP-normalised images resized bilinearly (align_corners=False) to `size` x `size`."""
  return resize_bilinear(normalize_images(images_uint8), (size, size))


def maft_loss(visual_params: Any, batch: dict[str, jax.Array], frozen: dict[str, Any], mask2former: Any,
              s: MaftSettings) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(loss, metrics) of a batch {'image' uint8 [B, S, S, 3], 'segments' [B, S, S], 'target_classes' [B, M]}.
  `frozen`: 'mask2former' params, 'teacher' (the original image tower), 'text' [K, D], 'no_object' [D]."""
  proposals = proposal_masks(mask2former, frozen["mask2former"], batch["image"])
  images = clip_input(batch["image"], s.input_size)
  logits = lambda emb: class_logits(emb, frozen["text"], frozen["no_object"])
  probs = class_probs(logits(ipclip_embeddings(s.architecture, visual_params, images, proposals, s.start_layers)))
  mask_aware, _ = mask_aware_loss(probs, proposals, batch["segments"], batch["target_classes"])
  student = class_probs(logits(ipclip_embeddings(s.architecture, visual_params, images, None, s.start_layers)))
  teacher = class_probs(logits(ipclip_embeddings(s.architecture, frozen["teacher"], images, None, s.start_layers)))
  distillation = distillation_loss(student, teacher)
  loss = mask_aware + s.distillation_weight * distillation
  return loss, {"loss": loss, "mask_aware_loss": mask_aware, "distillation_loss": distillation}
