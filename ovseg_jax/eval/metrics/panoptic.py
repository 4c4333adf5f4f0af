"""Panoptic quality (PQ, SQ, RQ) with the values of panopticapi's `pq_compute`, streamed image by image.

A panoptic map is `(segment_id_map int [H, W], segments)` in the COCO panoptic format: `segments` lists dicts
`{"id", "category_id"}` (ground truth may add `"iscrowd"`, default 0); pixels with id 0 are VOID. `categories`
maps category id -> `{"isthing": 0 or 1}`.

The rules, per image, as panopticapi applies them:
- a prediction matches a non-crowd ground truth segment of its category when IoU > 0.5, the union leaving out
  the prediction's VOID pixels (segments do not overlap, so matches are unique);
- unmatched non-crowd ground truth segments are false negatives;
- an unmatched prediction is a false positive unless more than half of it lies on VOID plus the crowd region
  of its category (when a category has several crowd segments, panopticapi keeps the last one listed);
- ground truth pixels with an id missing from `segments` are neither VOID nor matched; ground truth segments
  of categories missing from `categories` never count.
Areas come from the maps (panopticapi reads the ground truth's JSON "area", which equals the pixel count).
Means run over the classes with at least one TP, FP or FN; where none has, the mean is NaN with n = 0
(panopticapi divides by zero there).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ovseg_jax.eval.metrics.semantic import harmonic_mean

PanopticMap = tuple[np.ndarray, Sequence[Mapping[str, Any]]]
# Per-category sums, one row per category: [sum of matched IoUs, TP, FP, FN].
_IOU, _TP, _FP, _FN = range(4)


def _segment_table(segments: Sequence[Mapping[str, Any]], what: str) -> tuple[np.ndarray, np.ndarray]:
  """Segment ids (list order) and the order that sorts them, refusing VOID and duplicate ids."""
  ids = np.array([int(s["id"]) for s in segments], np.int64)
  if (ids <= 0).any():
    raise ValueError(f"{what}: segment ids must be > 0 (0 is VOID), got {ids[ids <= 0].tolist()}.")
  if len(np.unique(ids)) != len(ids):
    raise ValueError(f"{what}: segment ids must be unique, got {ids.tolist()}.")
  return ids, np.argsort(ids, kind="stable")


def _slots(ids: np.ndarray, segment_ids: np.ndarray, order: np.ndarray) -> np.ndarray:
  """Position in the segment list (+1) of each id; 0 for VOID, -1 for ids no segment has."""
  slots = np.full(len(ids), -1)
  if len(order):
    sorted_ids = segment_ids[order]
    at = np.minimum(np.searchsorted(sorted_ids, ids), len(order) - 1)
    slots = np.where(sorted_ids[at] == ids, order[at] + 1, -1)
  return np.where(ids == 0, 0, slots)


def _as_id_map(segment_id_map: Any, what: str) -> np.ndarray:
  id_map = np.asarray(segment_id_map)
  if id_map.ndim != 2 or not np.issubdtype(id_map.dtype, np.integer):
    raise ValueError(f"{what}: expected an integer segment id map [H, W], got {id_map.dtype} {id_map.shape}; "
                     "convert RGB panoptic PNGs with id = R + 256 G + 256^2 B first.")
  if id_map.size and id_map.min() < 0:
    raise ValueError(f"{what}: segment ids must be >= 0, found {id_map.min()}.")
  return id_map.astype(np.int64)


class PanopticQualityAccumulator:
  """Sums per-category PQ statistics over images: `add(prediction, ground_truth)` per image, then `result()`.

  `stats` is float64 [C, 4], one row per category in `categories` order: summed IoU of matches, TP, FP, FN.
  Accumulators of disjoint image sets (e.g. one per host) combine by adding their `stats`.
  """

  def __init__(self, categories: Mapping[int, Mapping[str, Any]]):
    self.categories = {int(c): info for c, info in categories.items()}
    self._row = {c: i for i, c in enumerate(self.categories)}
    self.stats = np.zeros((len(self.categories), 4), np.float64)

  def _rows(self, segments: Sequence[Mapping[str, Any]]) -> np.ndarray:
    return np.array([self._row.get(int(s["category_id"]), -1) for s in segments], np.int64)

  def add(self, prediction: PanopticMap, ground_truth: PanopticMap) -> None:
    """Counts one image's TP (with their IoUs), FP and FN per category."""
    pred_map, pred_segments = _as_id_map(prediction[0], "prediction"), prediction[1]
    gt_map, gt_segments = _as_id_map(ground_truth[0], "ground truth"), ground_truth[1]
    if pred_map.shape != gt_map.shape:
      raise ValueError(f"prediction map {pred_map.shape} and ground truth map {gt_map.shape} differ in shape; "
                       "resize the prediction (nearest) to the ground truth first.")
    pred_ids, pred_order = _segment_table(pred_segments, "prediction")
    gt_ids, gt_order = _segment_table(gt_segments, "ground truth")
    pred_rows, gt_rows = self._rows(pred_segments), self._rows(gt_segments)
    if (pred_rows < 0).any():
      unknown = sorted({int(s["category_id"]) for s, r in zip(pred_segments, pred_rows) if r < 0})
      raise ValueError(f"prediction: category ids {unknown} are not in the categories {list(self.categories)}.")
    crowd = np.array([int(s.get("iscrowd", 0)) == 1 for s in gt_segments], bool)

    # One pass over the pixels: count every (ground truth id, prediction id) pair.
    offset = int(pred_map.max(initial=0)) + 1
    pairs, pair_counts = np.unique(gt_map * offset + pred_map, return_counts=True)
    pred_slot = _slots(pairs % offset, pred_ids, pred_order)
    gt_slot = _slots(pairs // offset, gt_ids, gt_order)
    if (pred_slot < 0).any():
      raise ValueError(f"prediction: segment ids {sorted(set((pairs % offset)[pred_slot < 0].tolist()))} are in "
                       "the map but not in the segment list.")
    num_pred, num_gt = len(pred_ids), len(gt_ids)
    gt_slot = np.where(gt_slot < 0, num_gt + 1, gt_slot)  # Unlisted ground truth ids: a row of their own.
    counts = np.zeros((num_gt + 2, num_pred + 1), np.int64)
    np.add.at(counts, (gt_slot, pred_slot), pair_counts)
    pred_area = counts[:, 1:].sum(0)
    if (pred_area == 0).any():
      raise ValueError(f"prediction: segments {pred_ids[pred_area == 0].tolist()} are listed but have no pixels.")
    gt_area = counts[1:num_gt + 1].sum(1)
    pred_void = counts[0, 1:]
    inter = counts[1:num_gt + 1, 1:]  # [G, P]

    with np.errstate(divide="ignore", invalid="ignore"):
      iou = inter / (pred_area[None] + gt_area[:, None] - inter - pred_void[None])
    same_class = (gt_rows[:, None] == pred_rows[None]) & ~crowd[:, None]
    matched = same_class & (inter > 0) & (iou > 0.5)
    gt_matched, pred_matched = matched.any(1), matched.any(0)
    np.add.at(self.stats[:, _IOU], gt_rows[gt_matched], iou[matched])  # At most one match per row.
    np.add.at(self.stats[:, _TP], gt_rows[gt_matched], 1)
    counted_gt = ~gt_matched & ~crowd & (gt_rows >= 0)
    np.add.at(self.stats[:, _FN], gt_rows[counted_gt], 1)

    # Predictions mostly on VOID plus their class's crowd region are ignored, not false positives.
    crowd_of_row = np.full(len(self.categories), -1)
    for g in np.flatnonzero(crowd & (gt_rows >= 0)):
      crowd_of_row[gt_rows[g]] = g  # The last crowd segment of a class wins, as in panopticapi.
    crowd_gt = crowd_of_row[pred_rows]
    crowd_inter = np.where(crowd_gt >= 0, counts[crowd_gt + 1, np.arange(1, num_pred + 1)], 0)
    ignored = (pred_void + crowd_inter) / pred_area > 0.5
    np.add.at(self.stats[:, _FP], pred_rows[~pred_matched & ~ignored], 1)

  def result(self) -> dict[str, Any]:
    """`{"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "per_class": {category_id: {"pq", "sq", "rq"}}}`."""
    things = np.array([int(info["isthing"]) == 1 for info in self.categories.values()], bool)
    result = {"All": _average(self.stats, np.ones_like(things)), "Things": _average(self.stats, things),
              "Stuff": _average(self.stats, ~things)}
    result["per_class"] = {c: _class_quality(self.stats[i]) for i, c in enumerate(self.categories)}
    return result

  def average_over(self, category_ids: Iterable[int]) -> dict[str, Any]:
    """`{"pq", "sq", "rq", "n"}` over a subset of classes, counting those with a TP, FP or FN."""
    ids = [int(c) for c in category_ids]
    unknown = [c for c in ids if c not in self._row]
    if unknown:
      raise ValueError(f"category ids {unknown} are not among the categories {list(self.categories)}.")
    selected = np.zeros(len(self.categories), bool)
    selected[[self._row[c] for c in ids]] = True
    return _average(self.stats, selected)


def _class_quality(row: np.ndarray) -> dict[str, float]:
  iou, tp, fp, fn = row
  if tp + fp + fn == 0:
    return {"pq": 0.0, "sq": 0.0, "rq": 0.0}
  denominator = tp + 0.5 * fp + 0.5 * fn
  return {"pq": float(iou / denominator), "sq": float(iou / tp) if tp else 0.0, "rq": float(tp / denominator)}


def _average(stats: np.ndarray, selected: np.ndarray) -> dict[str, Any]:
  """panopticapi's `pq_average`: means over the selected classes that have a TP, FP or FN."""
  present = [_class_quality(row) for row in stats[selected] if row[_TP:].sum() > 0]
  if not present:
    return {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "n": 0}
  # Summed in category order like panopticapi, so the means agree to the last bit given equal class values.
  return {k: sum(q[k] for q in present) / len(present) for k in ("pq", "sq", "rq")} | {"n": len(present)}


def panoptic_quality(predictions: Iterable[PanopticMap], ground_truths: Iterable[PanopticMap],
                     categories: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
  """PQ, SQ, RQ over all images, for all classes, things, stuff and each class, as panopticapi's `pq_compute`."""
  accumulator = PanopticQualityAccumulator(categories)
  predictions, ground_truths = list(predictions), list(ground_truths)
  if len(predictions) != len(ground_truths):
    raise ValueError(f"panoptic_quality: {len(predictions)} predictions for {len(ground_truths)} ground truths.")
  for prediction, ground_truth in zip(predictions, ground_truths):
    accumulator.add(prediction, ground_truth)
  return accumulator.result()


def pq_over(result_or_stats: PanopticQualityAccumulator | Mapping[str, Any],
            category_ids: Iterable[int]) -> float:
  """Mean PQ over a subset of classes (e.g. seen or unseen ones).

  From an accumulator, the mean runs over the subset's classes with a TP, FP or FN, as panopticapi's means do.
  From a `result()` dict it averages the classes' `per_class` PQ, where a class without any segment counts 0
  (the result does not tell it apart), as the zero-shot panoptic evaluators that average `per_class` do.
  """
  if isinstance(result_or_stats, PanopticQualityAccumulator):
    return result_or_stats.average_over(category_ids)["pq"]
  ids = [int(c) for c in category_ids]
  per_class = result_or_stats["per_class"]
  unknown = [c for c in ids if c not in per_class]
  if unknown or not ids:
    raise ValueError(f"pq_over: category ids {unknown or ids} are not a non-empty subset of per_class.")
  return float(np.mean([per_class[c]["pq"] for c in ids]))


def seen_unseen_pq(result_or_stats: PanopticQualityAccumulator | Mapping[str, Any],
                   seen_ids: Iterable[int], unseen_ids: Iterable[int]) -> dict[str, float]:
  """Zero-shot panoptic summary: sPQ, uPQ and their harmonic mean hPQ."""
  seen, unseen = pq_over(result_or_stats, seen_ids), pq_over(result_or_stats, unseen_ids)
  return {"sPQ": seen, "uPQ": unseen, "hPQ": harmonic_mean(seen, unseen)}
