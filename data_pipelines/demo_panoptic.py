"""Panoptic demo scenes: several instances of a category per image, each object a thing segment and the textured
background a stuff segment, with ground truth in the COCO panoptic format.

Categories (COCO-style ids): the 12 shapes of `demo_scenes` are things 1-12, the 6 backgrounds stuff 13-18. A scene
draws 1 or 2 shape categories and 1-3 instances of each (at most 4 objects, so each keeps >= 40% of its pixels
visible as in `demo_scenes`), in random order on one background. Segment ids are 1..n in drawing order, the
background last; an object hidden entirely by later ones has no segment. Every split draws from the same
distribution: the zero-shot rule (training images with an unseen segment are dropped) makes the split.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from data_pipelines import demo_scenes

_DISTINCT_PROBS = (0.5, 0.5)  # 1 or 2 shape categories.
_INSTANCE_PROBS = (0.35, 0.4, 0.25)  # 1, 2 or 3 instances of each.
_MAX_OBJECTS = 4
STUFF_ID_OFFSET = len(demo_scenes.CATEGORIES) + 1


@dataclasses.dataclass(frozen=True)
class PanopticScene:
  image: np.ndarray  # uint8 [S, S, 3]
  segment_ids: np.ndarray  # int32 [S, S]; every pixel belongs to a segment (no VOID).
  segments: list[dict[str, Any]]  # COCO segments_info: {id, category_id, iscrowd, area, bbox}


def categories() -> list[dict[str, Any]]:
  """COCO panoptic categories: the shapes (things) then the backgrounds (stuff)."""
  things = [{"id": i + 1, "name": c.name, "isthing": 1, "supercategory": "shape"}
            for i, c in enumerate(demo_scenes.CATEGORIES)]
  stuff = [{"id": STUFF_ID_OFFSET + i, "name": name, "isthing": 0, "supercategory": "background"}
           for i, name in enumerate(demo_scenes.BACKGROUND_NAMES)]
  return things + stuff


def _sample_objects(rng: np.random.Generator) -> list[int]:
  distinct = 1 + int(rng.choice(len(_DISTINCT_PROBS), p=_DISTINCT_PROBS))
  chosen = rng.choice(len(demo_scenes.CATEGORIES), size=distinct, replace=False)
  objects = [int(c) for c in chosen for _ in range(1 + int(rng.choice(len(_INSTANCE_PROBS), p=_INSTANCE_PROBS)))]
  return [int(c) for c in rng.permutation(objects)[:_MAX_OBJECTS]]


def _segment_info(segment_id: int, category_id: int, mask: np.ndarray) -> dict[str, Any]:
  ys, xs = np.nonzero(mask)
  bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
  return {"id": segment_id, "category_id": category_id, "iscrowd": 0, "area": int(mask.sum()), "bbox": bbox}


def make_panoptic_scene(rng: np.random.Generator, size: int) -> PanopticScene:
  """One random panoptic scene of `size` x `size` pixels."""
  if size < 16:
    raise ValueError(f"Demo scenes need an image size of at least 16 pixels, got {size}.")
  background = int(rng.integers(len(demo_scenes.BACKGROUNDS)))
  objects = _sample_objects(rng)
  image, _, instances = demo_scenes.render(rng, objects, background, size)
  segment_ids = np.zeros((size, size), np.int32)
  segments = []
  for j, category in enumerate(objects):
    mask = instances == j + 1
    if mask.any():
      segments.append(_segment_info(len(segments) + 1, category + 1, mask))
      segment_ids[mask] = len(segments)
  stuff = instances == 0
  if stuff.any():
    segments.append(_segment_info(len(segments) + 1, STUFF_ID_OFFSET + background, stuff))
    segment_ids[stuff] = len(segments)
  return PanopticScene(image=image, segment_ids=segment_ids, segments=segments)
