"""Panoptic training targets of Mask2Former and the zero-shot image filter, on COCO-panoptic segment lists.

An image's annotation is `(segment_id_map, segments)`: int [H, W] segment ids (0 = VOID) and one dict per
segment {'id', 'category_id', 'iscrowd'} (the format of `ovseg_jax.eval.metrics.panoptic_quality`). As
Mask2Former's panoptic dataset mapper, every non-crowd segment becomes one target (its binary mask and class);
crowd segments, VOID and segments of categories outside training are no target, so their pixels count as "no
object" for every target mask. Targets are returned as the criterion reads them: a segment-index map (the target
index of each pixel, -1 for none) and the targets' training classes padded with -1.

The zero-shot panoptic setting trains only on images without unseen objects: `keep_image` drops an image with
any segment (crowd or not) of an unseen category, rather than ignoring those pixels as the semantic split does.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

Segment = Mapping[str, Any]


def _check(segment_id_map: np.ndarray, segments: Sequence[Segment]) -> None:
  ids = [s["id"] for s in segments]
  if len(set(ids)) != len(ids) or 0 in ids:
    raise ValueError(f"segment ids {sorted(ids)} must be unique and non-zero (0 is VOID).")
  if segment_id_map.ndim != 2:
    raise ValueError(f"segment_id_map has shape {segment_id_map.shape}; expected [H, W] segment ids (RGB panoptic "
                     "PNGs decode to id = R + 256 G + 256^2 B).")


def panoptic_targets(segment_id_map: np.ndarray, segments: Sequence[Segment], class_of_category: Mapping[int, int],
                     max_targets: int) -> tuple[np.ndarray, np.ndarray]:
  """(segments int32 [H, W], classes int32 [max_targets]) of one image.

  `class_of_category` maps a category id to its training class index (categories absent from it, e.g. unseen
  ones, make no target). Segments absent from the map (cropped away) make no target; with more than
  `max_targets` the largest are kept, in segment-list order, and the others' pixels become "no object".
  """
  _check(segment_id_map, segments)
  ids, counts = np.unique(segment_id_map, return_counts=True)
  area = dict(zip(ids.tolist(), counts.tolist()))
  candidates = [s for s in segments if not s.get("iscrowd", 0) and s["category_id"] in class_of_category
                and area.get(s["id"], 0) > 0]
  largest = sorted(range(len(candidates)), key=lambda i: -area[candidates[i]["id"]])[:max_targets]
  kept = [candidates[i] for i in sorted(largest)]
  index = np.full(segment_id_map.shape, -1, np.int32)
  classes = np.full(max_targets, -1, np.int32)
  for target, segment in enumerate(kept):
    index[segment_id_map == segment["id"]] = target
    classes[target] = class_of_category[segment["category_id"]]
  return index, classes


def keep_image(segments: Sequence[Segment], unseen_categories: Collection[int]) -> bool:
  """False when any segment of the image (crowd included) has an unseen category."""
  unseen = set(unseen_categories)
  return not any(s["category_id"] in unseen for s in segments)
