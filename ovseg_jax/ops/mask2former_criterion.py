"""Mask2Former's training criterion (Cheng et al. 2022, `SetCriterion` + `HungarianMatcher` of the released code).

Targets are a segment-index map per image (`segments` int [B, H, W]: the index of the target each pixel belongs
to, negative for none, e.g. ignored pixels) and the targets' classes (`target_classes` int [B, M], negative for
padding). The binary mask of target m is `segments == m`; this holds semantic (one target per class) and panoptic
(one per segment) targets at H x W ints instead of M x H x W masks.

For each prediction (the last layer's and every `aux_outputs` entry: deep supervision):
- matching: cost = class_weight * (-softmax probability of the target class) + mask_weight * sigmoid BCE + dice_weight
  * dice, both mask terms on `num_points` uniform points shared by all masks of an image; an exact assignment
  on device (`ops.matching`) over the valid targets only;
- losses: cross-entropy over K+1 classes (unmatched queries -> "no object", weighted `no_object_weight`; the
  weighted mean, as PyTorch's `cross_entropy(weight=...)`), and BCE + dice of each matched (prediction, target)
  pair on `num_points` importance-sampled points (`ops.point_sampling`), summed and divided by the number of
  target masks in the global batch (at least 1).
All math is float32 with HIGHEST-precision matmuls (costs the matching ranks must not be perturbed by bf16 passes).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ovseg_jax.ops.losses import dice_loss
from ovseg_jax.ops.matching import masked_hungarian_matching
from ovseg_jax.ops.point_sampling import point_sample, sample_segment_masks, uncertain_point_coords

_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class CriterionConfig:
  """Weights and sampling of the criterion; the defaults are Mask2Former's ADE20K / COCO configs."""
  class_weight: float = 2.0
  mask_weight: float = 5.0
  dice_weight: float = 5.0
  no_object_weight: float = 0.1
  num_points: int = 12544
  oversample_ratio: float = 3.0
  importance_sample_ratio: float = 0.75

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any]) -> CriterionConfig:
    unknown = sorted(set(cfg) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ValueError(f"config.loss: unknown keys {unknown}; expected some of "
                       f"{[f.name for f in dataclasses.fields(cls)]}.")
    return cls(**dict(cfg))


def pairwise_mask_costs(pred_logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean sigmoid BCE, dice) of every prediction against every target: [Q, P] x [M, P] -> two [Q, M].

  BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x) is linear in t, so all pairs take two matmuls."""
  x, t = pred_logits.astype(jnp.float32), targets.astype(jnp.float32)
  num_points = x.shape[-1]
  bce = (jnp.einsum("qp,mp->qm", jax.nn.softplus(-x), t, precision=_HIGHEST)
         + jnp.einsum("qp,mp->qm", jax.nn.softplus(x), 1.0 - t, precision=_HIGHEST)) / num_points
  probs = jax.nn.sigmoid(x)
  intersection = jnp.einsum("qp,mp->qm", probs, t, precision=_HIGHEST)
  dice = 1.0 - (2.0 * intersection + 1.0) / (jnp.sum(probs, -1)[:, None] + jnp.sum(t, -1)[None, :] + 1.0)
  return bce, dice


def matching_cost(class_logits: jax.Array, mask_logits: jax.Array, segments: jax.Array, target_classes: jax.Array,
                  points: jax.Array, cfg: CriterionConfig) -> jax.Array:
  """[B, Q, M] cost of one prediction layer: class_logits [B, Q, K+1], mask_logits [B, Q, h, w], segments
  [B, H, W], target_classes [B, M], points [B, P, 2] (x, y in [0, 1], shared by the masks of an image)."""
  num_targets = target_classes.shape[1]

  def one_image(logits, masks, seg, classes, pts):
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    cost_class = -jnp.take(probs, jnp.maximum(classes, 0), axis=1)
    pred = point_sample(masks.astype(jnp.float32), jnp.broadcast_to(pts, (masks.shape[0], *pts.shape)))
    bce, dice = pairwise_mask_costs(pred, sample_segment_masks(seg, pts, num_targets))
    return cfg.class_weight * cost_class + cfg.mask_weight * bce + cfg.dice_weight * dice
  return jax.vmap(one_image)(class_logits, mask_logits, segments, target_classes, points)


def match(class_logits: jax.Array, mask_logits: jax.Array, segments: jax.Array, target_classes: jax.Array,
          points: jax.Array, cfg: CriterionConfig) -> tuple[jax.Array, jax.Array]:
  """(int32 [B, M] the prediction matched to each target, bool [B, M] the target is valid and matched: all valid
  targets unless an image has more than Q)."""
  cost = jax.lax.stop_gradient(matching_cost(class_logits, mask_logits, segments, target_classes, points, cfg))
  indices, pair_valid = masked_hungarian_matching(cost, target_classes >= 0)
  rows, cols = indices[:, 0], indices[:, 1]
  batch = jnp.arange(cost.shape[0])[:, None]
  pred_for_target = jnp.zeros(target_classes.shape, jnp.int32).at[batch, cols].set(rows)
  return pred_for_target, jnp.zeros(target_classes.shape, bool).at[batch, cols].set(pair_valid)


def class_loss(class_logits: jax.Array, target_classes: jax.Array, pred_for_target: jax.Array, matched: jax.Array,
               no_object_weight: float) -> jax.Array:
  """Weighted-mean cross-entropy over K+1 classes: matched queries their target's class, the others the last
  ("no object", weight `no_object_weight`)."""
  b, q, k1 = class_logits.shape
  batch = jnp.arange(b)[:, None]
  labels = jnp.full((b, q), k1 - 1, jnp.int32).at[batch, jnp.where(matched, pred_for_target, q)].set(
      target_classes, mode="drop")
  nll = optax.softmax_cross_entropy_with_integer_labels(class_logits.astype(jnp.float32), labels)
  weights = jnp.where(labels == k1 - 1, no_object_weight, 1.0)
  return jnp.sum(weights * nll) / jnp.sum(weights)


def matched_mask_logits(mask_logits: jax.Array, pred_for_target: jax.Array) -> jax.Array:
  """[B, M, h, w]: each target's matched prediction."""
  return jnp.take_along_axis(mask_logits, pred_for_target[:, :, None, None], axis=1)


def mask_losses(matched_logits: jax.Array, segments: jax.Array, matched: jax.Array, points: jax.Array,
                num_masks: jax.Array | float) -> tuple[jax.Array, jax.Array]:
  """(BCE, dice) summed over the matched targets (`matched` [B, M]) and divided by `num_masks`. matched_logits
  [B, M, h, w]: each target's prediction; points [B, M, P, 2], one set per target (its importance-sampled
  points)."""
  num_targets = matched.shape[1]
  logits = jax.vmap(point_sample)(matched_logits.astype(jnp.float32), points)
  labels = jax.vmap(lambda seg, pts: sample_segment_masks(seg, pts, num_targets))(segments, points)
  bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels), axis=-1)
  dice = dice_loss(logits, labels)
  return jnp.sum(jnp.where(matched, bce, 0.0)) / num_masks, jnp.sum(jnp.where(matched, dice, 0.0)) / num_masks


def layer_loss(prediction: Mapping[str, jax.Array], segments: jax.Array, target_classes: jax.Array,
               num_masks: jax.Array, key: jax.Array, cfg: CriterionConfig
               ) -> tuple[dict[str, jax.Array], tuple[jax.Array, jax.Array]]:
  """(the unweighted terms {'ce', 'mask', 'dice'} of one prediction layer, its points drawn from `key`; its
  matching (pred_for_target, matched) as `match` gives it, for losses on other per-query outputs)."""
  class_logits, mask_logits = prediction["pred_logits"], prediction["pred_masks"]
  b, m = target_classes.shape
  match_key, loss_key = jax.random.split(key)
  match_points = jax.random.uniform(match_key, (b, cfg.num_points, 2), jnp.float32)
  pred_for_target, matched = match(class_logits, mask_logits, segments, target_classes, match_points, cfg)
  logits = matched_mask_logits(mask_logits, pred_for_target)
  points = uncertain_point_coords(loss_key, logits.reshape(b * m, *logits.shape[2:]), cfg.num_points,
                                  cfg.oversample_ratio, cfg.importance_sample_ratio).reshape(b, m, cfg.num_points, 2)
  bce, dice = mask_losses(logits, segments, matched, points, num_masks)
  terms = {"ce": class_loss(class_logits, target_classes, pred_for_target, matched, cfg.no_object_weight),
           "mask": bce, "dice": dice}
  return terms, (pred_for_target, matched)


def mask2former_loss(outputs: Mapping[str, Any], segments: jax.Array, target_classes: jax.Array, key: jax.Array,
                     cfg: CriterionConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(total loss, metrics) over the last prediction and every `aux_outputs` entry (each matched anew).

  `segments` [B, H, W] and `target_classes` [B, M] are the global batch's targets (see the module docstring);
  the masks are divided by their count over the whole batch, so the loss is the reference's per-GPU loss
  averaged over GPUs. Metrics: the last layer's terms, the total, and the number of masks per image."""
  num_masks = jnp.maximum(jnp.sum(target_classes >= 0), 1).astype(jnp.float32)
  predictions = [outputs] + list(outputs.get("aux_outputs", ()))
  total, terms = 0.0, None
  for i, prediction in enumerate(predictions):
    layer_terms, _ = layer_loss(prediction, segments, target_classes, num_masks, jax.random.fold_in(key, i), cfg)
    total = total + (cfg.class_weight * layer_terms["ce"] + cfg.mask_weight * layer_terms["mask"]
                     + cfg.dice_weight * layer_terms["dice"])
    terms = terms or layer_terms
  return total, {"loss": total, "loss_ce": terms["ce"], "loss_mask": terms["mask"], "loss_dice": terms["dice"],
                 "masks_per_image": num_masks / target_classes.shape[0]}
