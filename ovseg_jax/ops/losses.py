"""S-Seg losses: sigmoid focal + dice for masks (paper eq. 1) and symmetric InfoNCE (eq. 2-3).

The mask losses follow MaskFormer/DETR: the same focal and dice terms serve as the matching cost (all
prediction-target pairs at once, via matmuls) and as the loss on the matched pairs. All math is float32 and
matmuls run at HIGHEST precision: on TPU the default bf16 passes would perturb costs the matching ranks.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ovseg_jax.ops.normalize import l2_normalize

_HIGHEST = jax.lax.Precision.HIGHEST


def _bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
  # max(x, 0) - x t + log(1 + e^-|x|): never exponentiates a large positive number.
  return jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, alpha: float = 0.25,
                       gamma: float = 2.0) -> jax.Array:
  """Elementwise focal loss (RetinaNet/DETR): alpha_t * BCE(logits, targets) * (1 - p_t)^gamma."""
  logits = jnp.asarray(logits, jnp.float32)
  targets = jnp.asarray(targets, jnp.float32)
  ce = _bce_with_logits(logits, targets)
  # 1 - p_t = t (1 - p) + (1 - t) p, with 1 - p = sigmoid(-x): exact even where sigmoid(x) rounds to 1.
  one_minus_pt = targets * jax.nn.sigmoid(-logits) + (1.0 - targets) * jax.nn.sigmoid(logits)
  # An integer power keeps the gradient finite where 1 - p_t is exactly 0 (a float power gives 0 * inf).
  power = int(gamma) if float(gamma).is_integer() else gamma
  alpha_t = alpha * targets + (1.0 - alpha) * (1.0 - targets)
  return alpha_t * ce * one_minus_pt ** power


def _dice_from_sums(intersection: jax.Array, pred_sum: jax.Array, target_sum: jax.Array,
                    smooth: float) -> jax.Array:
  return 1.0 - (2.0 * intersection + smooth) / (pred_sum + target_sum + smooth)


def dice_loss(logits: jax.Array, targets: jax.Array, smooth: float = 1.0) -> jax.Array:
  """Dice loss per mask over the last (flattened pixel) axis: [..., P] -> [...]."""
  probs = jax.nn.sigmoid(jnp.asarray(logits, jnp.float32))
  targets = jnp.asarray(targets, jnp.float32)
  return _dice_from_sums(jnp.sum(probs * targets, -1), jnp.sum(probs, -1), jnp.sum(targets, -1), smooth)


def _check_masks(pred_logits: jax.Array, target: jax.Array) -> None:
  if pred_logits.ndim != 3 or target.ndim != 3:
    raise ValueError(f"mask losses take pred_logits [B, N, P] and target [B, K, P] (pixels flattened); got "
                     f"{pred_logits.shape} and {target.shape}: reshape masks to [B, N, h*w] first.")
  if pred_logits.shape[0] != target.shape[0] or pred_logits.shape[2] != target.shape[2]:
    raise ValueError(f"pred_logits {pred_logits.shape} and target {target.shape} must share batch and pixel "
                     "axes: resize the targets to the prediction resolution (pseudo_masks.resize_masks).")


def pairwise_mask_cost(pred_logits: jax.Array, target: jax.Array, weight_focal: float = 20.0,
                       weight_dice: float = 1.0) -> jax.Array:
  """Matching cost of every prediction against every target: [B, N, P] x [B, K, P] -> [B, N, K].

  cost = weight_focal * mean-over-pixels focal loss + weight_dice * dice loss. Targets must be binary:
  the focal term splits into a positive and a negative part contracted with t and 1 - t (MaskFormer).
  """
  _check_masks(pred_logits, target)
  pred_logits = pred_logits.astype(jnp.float32)
  target = target.astype(jnp.float32)
  num_pixels = pred_logits.shape[-1]
  focal_pos = sigmoid_focal_loss(pred_logits, jnp.ones_like(pred_logits))
  focal_neg = sigmoid_focal_loss(pred_logits, jnp.zeros_like(pred_logits))
  focal = (jnp.einsum("bnp,bkp->bnk", focal_pos, target, precision=_HIGHEST)
           + jnp.einsum("bnp,bkp->bnk", focal_neg, 1.0 - target, precision=_HIGHEST)) / num_pixels
  probs = jax.nn.sigmoid(pred_logits)
  intersection = jnp.einsum("bnp,bkp->bnk", probs, target, precision=_HIGHEST)
  dice = _dice_from_sums(intersection, jnp.sum(probs, -1)[:, :, None], jnp.sum(target, -1)[:, None, :],
                         smooth=1.0)
  return weight_focal * focal + weight_dice * dice


def matched_mask_loss(pred_logits: jax.Array, target: jax.Array, target_valid: jax.Array,
                      matched_pred_idx: jax.Array, num_masks: jax.Array | float, weight_focal: float = 20.0,
                      weight_dice: float = 1.0, empty_unmatched_weight: float = 0.0) -> dict[str, jax.Array]:
  """Focal + dice between each valid target and the prediction matched to it (paper eq. 1).

  pred_logits [B, N, P], target [B, K, P], target_valid [B, K] bool, matched_pred_idx [B, K] int32 (the
  prediction assigned to each target). focal and dice are summed over valid pairs and divided by num_masks
  (MaskFormer: valid targets in the global batch, at least 1). Unmatched predictions are not penalised
  unless empty_unmatched_weight > 0, which adds that weight times 'empty': the mean focal loss of the
  unmatched predictions against an all-zero mask. Entries focal, dice, empty are unweighted; loss is the
  weighted sum.
  """
  _check_masks(pred_logits, target)
  if target_valid.shape != target.shape[:2] or matched_pred_idx.shape != target.shape[:2]:
    raise ValueError(f"target_valid {target_valid.shape} and matched_pred_idx {matched_pred_idx.shape} must "
                     f"both be [B, K] = {target.shape[:2]}.")
  pred_logits = pred_logits.astype(jnp.float32)
  target = target.astype(jnp.float32)
  # 'clip': an index that belongs to an invalid target must not gather NaN (then masked out anyway).
  matched = jnp.take_along_axis(pred_logits, matched_pred_idx[:, :, None], axis=1, mode="clip")
  focal_per_pair = jnp.mean(sigmoid_focal_loss(matched, target), -1)
  dice_per_pair = dice_loss(matched, target)
  focal = jnp.sum(jnp.where(target_valid, focal_per_pair, 0.0)) / num_masks
  dice = jnp.sum(jnp.where(target_valid, dice_per_pair, 0.0)) / num_masks
  out = {"focal": focal, "dice": dice}
  loss = weight_focal * focal + weight_dice * dice
  if empty_unmatched_weight:
    batch, num_preds = pred_logits.shape[:2]
    is_matched = jnp.zeros((batch, num_preds), bool).at[
        jnp.arange(batch)[:, None], matched_pred_idx].max(target_valid, mode="drop")
    focal_empty = jnp.mean(sigmoid_focal_loss(pred_logits, jnp.zeros_like(pred_logits)), -1)
    num_unmatched = jnp.maximum(jnp.sum(~is_matched), 1)
    out["empty"] = jnp.sum(jnp.where(is_matched, 0.0, focal_empty)) / num_unmatched
    loss = loss + empty_unmatched_weight * out["empty"]
  out["loss"] = loss
  return out


def contrastive_loss(image_emb: jax.Array, text_emb: jax.Array,
                     logit_scale: jax.Array | float) -> dict[str, jax.Array]:
  """Symmetric InfoNCE over the (global) batch: loss = L_I->T + L_T->I (paper eq. 2-3, their sum).

  image_emb, text_emb: [B, D], pair i is the positive of row i; logit_scale multiplies the cosine
  similarities (1 / sigma in the paper). accuracy is the mean top-1 retrieval of both directions.
  """
  if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
    raise ValueError(f"contrastive_loss takes image_emb and text_emb of the same shape [B, D]; got "
                     f"{image_emb.shape} and {text_emb.shape}.")
  x = l2_normalize(image_emb.astype(jnp.float32), eps=1e-6)
  y = l2_normalize(text_emb.astype(jnp.float32), eps=1e-6)
  logits = logit_scale * jnp.einsum("id,jd->ij", x, y, precision=_HIGHEST)
  positives = jnp.diagonal(logits)
  i2t = jnp.mean(jax.nn.logsumexp(logits, axis=1) - positives)
  t2i = jnp.mean(jax.nn.logsumexp(logits, axis=0) - positives)
  labels = jnp.arange(logits.shape[0])
  accuracy = 0.5 * (jnp.mean(jnp.argmax(logits, 1) == labels) + jnp.mean(jnp.argmax(logits, 0) == labels))
  return {"loss": i2t + t2i, "i2t": i2t, "t2i": t2i, "accuracy": accuracy}


def multi_label_contrastive_loss(image_emb: jax.Array, prompt_emb: jax.Array, prompt_valid: jax.Array,
                                 logit_scale: jax.Array | float) -> dict[str, jax.Array]:
  """GroupViT's multi-label contrastive loss (GroupViT eqs. 4-5): every prompt of an image is its positive.

  image_emb [B, D]; prompt_emb [B, K, D]; prompt_valid bool [B, K] (False for missing nouns).
  L_I->T = -log(sum_k exp(s_i,ik) / sum_j sum_k exp(s_i,jk)), over images with a valid prompt;
  L_T->I = -log(exp(s_ik,i) / sum_j exp(s_ik,j)), over valid prompts; loss = their sum.
  """
  b, k, d = prompt_emb.shape
  x = l2_normalize(image_emb.astype(jnp.float32), eps=1e-6)
  y = l2_normalize(prompt_emb.astype(jnp.float32), eps=1e-6).reshape(b * k, d)
  valid = prompt_valid.reshape(b * k)
  logits = logit_scale * jnp.einsum("id,jd->ij", x, y, precision=_HIGHEST)  # [B, B*K]
  own = jnp.repeat(jnp.eye(b, dtype=bool), k, axis=1) & valid[None]
  never = jnp.float32(-1e9)  # Finite, so rows without positives give no NaN gradients.
  has_prompt = jnp.any(own, axis=1)
  i2t_rows = (jax.nn.logsumexp(jnp.where(valid[None], logits, never), axis=1)
              - jax.nn.logsumexp(jnp.where(own, logits, never), axis=1))
  i2t = jnp.sum(jnp.where(has_prompt, i2t_rows, 0.0)) / jnp.maximum(jnp.sum(has_prompt), 1)
  t2i_rows = jax.nn.logsumexp(logits, axis=0) - jnp.sum(jnp.where(own, logits, 0.0), axis=0)
  t2i = jnp.sum(jnp.where(valid, t2i_rows, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
  return {"loss": i2t + t2i, "i2t": i2t, "t2i": t2i}
