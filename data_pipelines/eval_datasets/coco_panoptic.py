"""COCO panoptic segmentation (2017) in detectron2's layout: images, panoptic PNGs and their segments.

Layout: ROOT/annotations/panoptic_{train,val}2017.json, ROOT/panoptic_{train,val}2017/ID.png (the release's
panoptic_annotations_trainval2017.zip, its inner PNG archives unpacked under ROOT) and ROOT/{train,val}2017/ID.jpg.
A PNG's segment id per pixel is R + 256 G + 256^2 B (0 = VOID); the JSON's `segments_info` lists each id's
category and crowd flag, its `categories` the 133 classes (80 things, 53 stuff). Annotations: CC BY 4.0.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data_pipelines.eval_datasets.files import read_image

LAYOUT = ("ROOT/annotations/panoptic_SPLIT2017.json, ROOT/panoptic_SPLIT2017/ID.png, ROOT/SPLIT2017/ID.jpg "
          "(ROOT = the coco directory as detectron2 lays out COCO panoptic)")
LICENSE = "COCO panoptic annotations: CC BY 4.0; images: the Flickr terms of use of each image (COCO terms of use)."
SEGMENT_FIELDS = ("id", "category_id", "iscrowd", "area")


@dataclasses.dataclass(frozen=True)
class PanopticExample:
  key: str
  image: np.ndarray  # uint8 [H, W, 3]
  segment_ids: np.ndarray  # int32 [H, W]; 0 = VOID.
  segments: list[dict[str, int]]  # {"id", "category_id", "iscrowd", "area"} of each segment.


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
  """Segment ids of a COCO panoptic PNG's RGB values (panopticapi's rgb2id)."""
  rgb = rgb.astype(np.int32)
  return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


class CocoPanoptic:
  """A split's examples sorted by file name; `categories`: id -> {"name", "isthing"}."""

  def __init__(self, root: str | Path, split: str = "val"):
    self.root = Path(root).expanduser()
    annotations = self.root / "annotations" / f"panoptic_{split}2017.json"
    self._pngs, self._images = self.root / f"panoptic_{split}2017", self.root / f"{split}2017"
    for path in (annotations, self._pngs):
      if not path.exists():
        raise FileNotFoundError(f"coco_panoptic: {path} is missing. Expected layout: {LAYOUT}")
    try:
      data = json.loads(annotations.read_text())
      self.categories = {int(c["id"]): {"name": c["name"], "isthing": int(c["isthing"])} for c in data["categories"]}
      self._annotations = sorted(data["annotations"], key=lambda a: a["file_name"])
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{annotations} is not a COCO panoptic annotation file ({e!r}); unpack "
                       "panoptic_annotations_trainval2017.zip again.") from e
    if not self._annotations:
      raise FileNotFoundError(f"coco_panoptic: {annotations} lists no annotations. Expected layout: {LAYOUT}")

  def __len__(self) -> int:
    return len(self._annotations)

  def files(self, index: int) -> tuple[str, Path, Path, list[dict[str, Any]]]:
    """(key, image path, panoptic PNG path, segments) of example `index`."""
    a = self._annotations[index]
    key = Path(a["file_name"]).stem
    segments = [{field: int(s.get(field, 0)) for field in SEGMENT_FIELDS} for s in a["segments_info"]]
    return key, self._images / f"{key}.jpg", self._pngs / a["file_name"], segments

  def example(self, index: int) -> PanopticExample:
    key, image_path, png_path, segments = self.files(index)
    for path in (image_path, png_path):
      if not path.is_file():
        raise FileNotFoundError(f"coco_panoptic: {path} is missing. Expected layout: {LAYOUT}")
    with Image.open(png_path) as png:
      segment_ids = rgb_to_id(np.asarray(png.convert("RGB")))
    return PanopticExample(key, read_image(image_path), segment_ids, segments)

  def __iter__(self) -> Iterator[PanopticExample]:
    for index in range(len(self)):
      yield self.example(index)
