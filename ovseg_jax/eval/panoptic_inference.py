"""MaskFormer / Mask2Former inference from class and mask query outputs: panoptic maps and semantic scores.

`panoptic_inference` follows `MaskFormer.panoptic_inference` of the released Mask2Former code: queries whose best
class is not "no object" and scores above `object_mask_threshold` compete per pixel through score * sigmoid(mask);
a query keeps the pixels it wins where its own mask is >= 0.5, and is dropped when it wins less than
`overlap_threshold` of its own mask (the ratio there counts all pixels it wins, as the reference does) or keeps
no pixel; stuff queries of one class merge into one segment. Runs on the host in numpy, float32 like the
reference.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def _softmax(logits: np.ndarray) -> np.ndarray:
  exp = np.exp(logits - logits.max(-1, keepdims=True))
  return exp / exp.sum(-1, keepdims=True)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
  return 1 / (1 + np.exp(-logits))


def _class_probabilities(class_scores: Any, scores_are_probabilities: bool) -> np.ndarray:
  scores = np.asarray(class_scores, np.float32)
  if scores.ndim != 2 or scores.shape[1] < 2:
    raise ValueError(f"expected class scores [Q, K+1] (last column: no object), got shape {scores.shape}.")
  return scores if scores_are_probabilities else _softmax(scores)


def _mask_logits(mask_logits: Any, num_queries: int) -> np.ndarray:
  masks = np.asarray(mask_logits, np.float32)
  if masks.ndim != 3 or masks.shape[0] != num_queries:
    raise ValueError(f"expected mask logits [Q={num_queries}, H, W], got shape {masks.shape}; upsample the "
                     "masks to the output size before inference.")
  return masks


def panoptic_inference(class_scores: Any, mask_logits: Any, thing_class_ids: Iterable[int], *,
                       object_mask_threshold: float = 0.8, overlap_threshold: float = 0.8,
                       scores_are_probabilities: bool = False) -> tuple[np.ndarray, list[dict[str, Any]]]:
  """Panoptic segmentation of one image from its query outputs.

  Args:
    class_scores: [Q, K+1] class logits (or probabilities with `scores_are_probabilities`), last = no object.
    mask_logits: [Q, H, W] mask logits at the output resolution.
    thing_class_ids: the class indices in [0, K) that are things; the others are stuff.
    object_mask_threshold: queries need a class probability above this.
    overlap_threshold: queries must win at least this share of their own mask (>= 0.5) pixels.
    scores_are_probabilities: `class_scores` already sum to 1 over K+1 (e.g. an ensemble's output).

  Returns:
    (segment id map int32 [H, W], 0 where no segment, ids from 1; segments `[{"id", "category_id",
    "isthing"}]` in id order, category_id being the class index).
  """
  probabilities = _class_probabilities(class_scores, scores_are_probabilities)
  masks = _sigmoid(_mask_logits(mask_logits, probabilities.shape[0]))
  num_classes = probabilities.shape[1] - 1
  scores, labels = probabilities.max(-1), probabilities.argmax(-1)
  keep = (labels != num_classes) & (scores > object_mask_threshold)
  scores, labels, masks = scores[keep], labels[keep], masks[keep]
  panoptic = np.zeros(masks.shape[1:], np.int32)
  if not len(labels):
    return panoptic, []

  winner = (scores[:, None, None] * masks).argmax(0)  # [H, W] index into the kept queries.
  own = masks >= 0.5
  winner_own = np.take_along_axis(own, winner[None], 0)[0]  # The winner's own mask covers the pixel.
  won_area = np.bincount(winner.ravel(), minlength=len(labels))
  own_area = own.sum((1, 2))
  kept_area = np.bincount(winner[winner_own], minlength=len(labels))

  things = {int(c) for c in thing_class_ids}
  segment_of_query = np.zeros(len(labels), np.int32)  # 0: the query gives no segment.
  segments, stuff_segment = [], {}
  for k, label in enumerate(labels.tolist()):
    if won_area[k] == 0 or own_area[k] == 0 or kept_area[k] == 0 or won_area[k] / own_area[k] < overlap_threshold:
      continue
    isthing = label in things
    if not isthing and label in stuff_segment:
      segment_of_query[k] = stuff_segment[label]
      continue
    segment_id = len(segments) + 1
    segments.append({"id": segment_id, "category_id": label, "isthing": isthing})
    segment_of_query[k] = segment_id
    if not isthing:
      stuff_segment[label] = segment_id
  panoptic[winner_own] = segment_of_query[winner[winner_own]]
  return panoptic, segments


def semantic_inference(class_scores: Any, mask_logits: Any, *, scores_are_probabilities: bool = False) -> np.ndarray:
  """Per-pixel class scores [K, H, W] = sum over queries of p(class) * sigmoid(mask), no-object left out."""
  probabilities = _class_probabilities(class_scores, scores_are_probabilities)
  masks = _sigmoid(_mask_logits(mask_logits, probabilities.shape[0]))
  return np.einsum("qc,qhw->chw", probabilities[:, :-1], masks)
