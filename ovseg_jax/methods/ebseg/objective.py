"""EBSeg's training loss as released (slonetime/EBSeg, `EBSeg.py` `from_config` and `get_ssc_loss`, `criterion.py`).

On every prediction (the queries' own and each decoder layer's: deep supervision), matched anew by Mask2Former's
matcher on the class logits of embedding A (`ops.mask2former_criterion`, class cost weight 2):
- cross-entropy on A's logits and on B's, K + 1 classes (the background embedding is "no object", weight 0.1), each
  weighted CLASS_WEIGHT x 0.75 = 1.5 in the released code; the supplement's eq. 6 gives lambda_3 = 2 (Mask2Former's
  default) for the class term;
- sigmoid BCE (weight 5) and dice (weight 5) of the matched masks on importance-sampled points;
and on the last prediction only, the SSC loss (weight 10): for each image, the mean squared difference between the
Gram matrix of its matched A embeddings (A carries its scale min(s, 10), so the Gram matrix is s^2 times their
cosines) and the cosine matrix of their classes' text embeddings, summed over images and divided by the batch size.
The released code sets the term of a batch to 0 when it is NaN (its MSE over an image without targets is 0 / 0);
here images without targets add nothing, and a non-finite term is still replaced by 0.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ovseg_jax.ops.mask2former_criterion import CriterionConfig, class_loss, layer_loss


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """The released weight_dict: 'loss_ce' and '1_loss_ce' 2 x 0.75, 'mse_ssc_loss_1' 10 (mask and dice weights and
  the no-object weight are the criterion's)."""
  class_a: float = 1.5
  class_b: float = 1.5
  ssc: float = 10.0


def ssc_loss(embeddings: jax.Array, target_classes: jax.Array, pred_for_target: jax.Array, matched: jax.Array,
             text_similarity: jax.Array) -> jax.Array:
  """embeddings [B, Q, D] (A), target_classes [B, M], pred_for_target int [B, M] and matched bool [B, M] (the
  matching), text_similarity [K, K] (cosines of the training classes' text embeddings) -> scalar."""
  matched_embeddings = jnp.take_along_axis(embeddings.astype(jnp.float32), pred_for_target[..., None], axis=1)
  gram = jnp.einsum("bmd,bnd->bmn", matched_embeddings, matched_embeddings, precision=jax.lax.Precision.HIGHEST)
  classes = jnp.maximum(target_classes, 0)
  text = text_similarity.astype(jnp.float32)[classes[:, :, None], classes[:, None, :]]
  pairs = matched[:, :, None] & matched[:, None, :]
  count = jnp.sum(pairs, axis=(1, 2))
  per_image = jnp.sum(jnp.where(pairs, (gram - text) ** 2, 0.0), axis=(1, 2)) / jnp.maximum(count, 1)
  loss = jnp.sum(per_image) / embeddings.shape[0]
  return jnp.where(jnp.isfinite(loss), loss, 0.0)


def ebseg_loss(outputs: Mapping[str, Any], segments: jax.Array, target_classes: jax.Array, text_similarity: jax.Array,
               key: jax.Array, criterion: CriterionConfig, weights: LossWeights) -> tuple[jax.Array, dict]:
  """(total loss, metrics) over the last prediction and every `aux_outputs` entry (`models.ebseg.EBSeg`'s training
  outputs); targets as `ops.mask2former_criterion` reads them."""
  num_masks = jnp.maximum(jnp.sum(target_classes >= 0), 1).astype(jnp.float32)
  predictions = list(outputs["aux_outputs"]) + [outputs]
  total, metrics = 0.0, {}
  for i, prediction in enumerate(predictions):
    terms, (pred_for_target, matched) = layer_loss(prediction, segments, target_classes, num_masks,
                                                   jax.random.fold_in(key, i), criterion)
    class_b = class_loss(prediction["logits_b"], target_classes, pred_for_target, matched, criterion.no_object_weight)
    total = total + (weights.class_a * terms["ce"] + weights.class_b * class_b + criterion.mask_weight * terms["mask"]
                     + criterion.dice_weight * terms["dice"])
    metrics = {"loss_ce_a": terms["ce"], "loss_ce_b": class_b, "loss_mask": terms["mask"], "loss_dice": terms["dice"]}
  ssc = ssc_loss(outputs["embeddings_a"], target_classes, pred_for_target, matched, text_similarity)
  total = total + weights.ssc * ssc
  return total, {**metrics, "loss_ssc": ssc, "loss": total, "masks_per_image": num_masks / target_classes.shape[0]}
