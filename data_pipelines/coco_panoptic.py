"""COCO panoptic segmentation (things and stuff) and its zero-shot split.

Layout (COCO 2017 panoptic release): ROOT/annotations/panoptic_{train,val}2017.json, ROOT/panoptic_{train,val}2017/
ID.png (segment ids as RGB: id = R + 256 G + 256^2 B, 0 = VOID) and ROOT/{train,val}2017/ID.jpg. Each JSON lists
`categories` ({id, name, isthing}), `images` and `annotations` ({file_name, image_id, segments_info: [{id,
category_id, iscrowd, area, bbox}]}).

Zero-shot panoptic split (PADing, He et al. 2023, as CONCAT uses it): 14 of the 133 categories are unseen,
`UNSEEN` as released in heshuting555/PADing `PADing/data/datasets/register_coco_panoptic_zsp.py` (`unseen_name`;
contiguous indices 19, 23, 28, 29, 36, 51, 76, 83, 97, 99, 100, 116, 119, 125). Training keeps only the images
with no segment of an unseen category (`seen_only`), as PADing's `panoptic_train2017_seen.json` does.

Training labels (`panoptic_label`) pack a segment's training class and its instance number into one int per
pixel, class * LABEL_DIVISOR + instance, so they can be resized and cropped like a semantic label; VOID, crowd
and unseen pixels are IGNORE, which Mask2Former's targets treat as belonging to no segment.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data_pipelines.eval_datasets.coco import THINGS

# The 133 categories of panoptic_{train,val}2017.json in id order (80 things, then 53 stuff): detectron2's COCO
# panoptic order, in which PADing's unseen indices are given.
STUFF = ("banner", "blanket", "bridge", "cardboard", "counter", "curtain", "door-stuff", "floor-wood", "flower",
         "fruit", "gravel", "house", "light", "mirror-stuff", "net", "pillow", "platform", "playingfield", "railroad",
         "river", "road", "roof", "sand", "sea", "shelf", "snow", "stairs", "tent", "towel", "wall-brick", "wall-stone",
         "wall-tile", "wall-wood", "water-other", "window-blind", "window-other", "tree-merged", "fence-merged",
         "ceiling-merged", "sky-other-merged", "cabinet-merged", "table-merged", "floor-other-merged",
         "pavement-merged", "mountain-merged", "grass-merged", "dirt-merged", "paper-merged", "food-other-merged",
         "building-other-merged", "rock-merged", "wall-other-merged", "rug-merged")
CLASS_NAMES = (*THINGS, *STUFF)
UNSEEN = ("cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors", "cardboard", "playingfield",
          "river", "road", "tree-merged", "sky-other-merged", "grass-merged")
LABEL_DIVISOR = 256  # Instances per class in a training label; 133 classes * 256 stays below IGNORE.
IGNORE = 2 ** 16 - 1
LAYOUT = ("ROOT/annotations/panoptic_{split}2017.json, ROOT/panoptic_{split}2017/ID.png and ROOT/{split}2017/ID.jpg "
          "(the COCO 2017 panoptic release)")
LICENSE = "COCO panoptic annotations: CC BY 4.0; images: the Flickr terms of use of each image (COCO terms of use)."
SEGMENT_FIELDS = ("id", "category_id", "iscrowd", "area")  # What a prepared dataset keeps of each segment.


def rgb2id(color: np.ndarray) -> np.ndarray:
  """Panoptic PNG colours uint8 [H, W, 3] -> segment ids int32 [H, W] (panopticapi's rgb2id)."""
  color = np.asarray(color)
  if color.ndim != 3 or color.shape[-1] != 3:
    raise ValueError(f"rgb2id: expected an RGB image [H, W, 3], got shape {color.shape}.")
  c = color.astype(np.int32)
  return c[..., 0] + 256 * c[..., 1] + 256 * 256 * c[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
  """Segment ids [H, W] -> uint8 colours [H, W, 3] (the inverse of `rgb2id`)."""
  ids = np.asarray(ids, np.int64)
  return np.stack([ids % 256, ids // 256 % 256, ids // 256 ** 2 % 256], -1).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class PanopticExample:
  key: str
  image: np.ndarray  # uint8 [H, W, 3]
  segment_ids: np.ndarray  # int32 [H, W], 0 = VOID
  segments: list[dict[str, Any]]  # COCO segments_info: {id, category_id, iscrowd, ...}


class CocoPanoptic:
  """A split of COCO panoptic (or any directory in its layout): categories and random access to examples."""

  def __init__(self, root: str | Path, split: str = "val"):
    self.root = Path(root).expanduser()
    self.split = split
    json_path = self.root / "annotations" / f"panoptic_{split}2017.json"
    if not json_path.is_file():
      raise FileNotFoundError(f"COCO panoptic: {json_path} is missing; expected {LAYOUT.format(split=split)}.")
    spec = json.loads(json_path.read_text())
    for key in ("categories", "annotations"):
      if key not in spec:
        raise ValueError(f"{json_path} has no {key!r}: is it a panoptic annotation file (panoptic_*.json)?")
    self.categories = {int(c["id"]): {"name": c["name"], "isthing": int(c["isthing"])} for c in spec["categories"]}
    self.annotations = sorted(spec["annotations"], key=lambda a: a["file_name"])

  @property
  def class_names(self) -> tuple[str, ...]:
    """Category names in category-id order (detectron2's contiguous order for COCO)."""
    return tuple(self.categories[i]["name"] for i in sorted(self.categories))

  def category_ids(self, names: Sequence[str]) -> list[int]:
    by_name = {c["name"]: i for i, c in self.categories.items()}
    missing = [n for n in names if n not in by_name]
    if missing:
      raise ValueError(f"{missing} are not categories of {self.root} ({len(by_name)} categories).")
    return [by_name[n] for n in names]

  def __len__(self) -> int:
    return len(self.annotations)

  def files(self, i: int) -> tuple[str, Path, Path, list[dict[str, int]]]:
    """(key, image path, panoptic PNG path, segments with `SEGMENT_FIELDS`) of example `i`, nothing read."""
    ann = self.annotations[i]
    stem = Path(ann["file_name"]).stem
    segments = [{field: int(s.get(field, 0)) for field in SEGMENT_FIELDS} for s in ann["segments_info"]]
    return (stem, self.root / f"{self.split}2017" / f"{stem}.jpg",
            self.root / f"panoptic_{self.split}2017" / ann["file_name"], segments)

  def example(self, i: int) -> PanopticExample:
    stem, jpg, png, _ = self.files(i)
    for path in (png, jpg):
      if not path.is_file():
        raise FileNotFoundError(f"COCO panoptic: {path} is missing; expected {LAYOUT.format(split=self.split)}.")
    return PanopticExample(key=stem, image=np.asarray(Image.open(jpg).convert("RGB")),
                           segment_ids=rgb2id(np.asarray(Image.open(png).convert("RGB"))),
                           segments=[dict(s) for s in self.annotations[i]["segments_info"]])

  def __iter__(self) -> Iterator[PanopticExample]:
    for i in range(len(self)):
      yield self.example(i)


def seen_only(annotations: Sequence[Mapping[str, Any]], unseen_category_ids: Sequence[int]) -> list[int]:
  """Positions of the annotations with no segment (crowd or not) of an unseen category."""
  unseen = set(int(c) for c in unseen_category_ids)
  return [i for i, ann in enumerate(annotations)
          if not any(int(s["category_id"]) in unseen for s in ann["segments_info"])]


def panoptic_label(segment_ids: np.ndarray, segments: Sequence[Mapping[str, Any]],
                   class_of_category: Mapping[int, int]) -> np.ndarray:
  """int32 [H, W]: training class * LABEL_DIVISOR + instance number for each non-crowd segment whose category is
  a training class (`class_of_category`), IGNORE elsewhere (VOID, crowd, unseen or unknown categories)."""
  label = np.full(segment_ids.shape, IGNORE, np.int32)
  instances: dict[int, int] = {}
  for s in segments:
    cls = class_of_category.get(int(s["category_id"]))
    if cls is None or s.get("iscrowd", 0):
      continue
    instance = instances.get(cls, 0)
    if instance >= LABEL_DIVISOR:
      raise ValueError(f"more than {LABEL_DIVISOR} segments of class {cls} in one image.")
    instances[cls] = instance + 1
    label[segment_ids == int(s["id"])] = cls * LABEL_DIVISOR + instance
  return label


def panoptic_targets(label: np.ndarray, max_targets: int) -> tuple[np.ndarray, np.ndarray]:
  """A (cropped) `panoptic_label` -> (segments int32 [H, W]: target index or -1, classes int32 [max_targets], -1
  padded): one target per segment present, the largest first when there are more than `max_targets`."""
  values, counts = np.unique(label[label != IGNORE], return_counts=True)
  keep = np.sort(values[np.argsort(-counts, kind="stable")[:max_targets]])
  segments = np.full(label.shape, -1, np.int32)
  if len(keep):
    at = np.minimum(np.searchsorted(keep, label), len(keep) - 1)
    hit = keep[at] == label
    segments[hit] = at[hit]
  classes = np.full(max_targets, -1, np.int32)
  classes[:len(keep)] = keep // LABEL_DIVISOR
  return segments, classes
