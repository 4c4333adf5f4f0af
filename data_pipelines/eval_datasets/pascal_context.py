"""Pascal Context: `context59` (59 classes, background ignored) and `context60` (with background).

Layout (what mmseg's `tools/convert_datasets/pascal_context.py` writes into VOC2010): ROOT/JPEGImages/ID.jpg,
ROOT/SegmentationClassContext/ID.png (0 = background, 1..59 the classes), ROOT/ImageSets/SegmentationContext/
{train,val}.txt. Class names: mmseg's PascalContextDataset59 (Apache-2.0).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipelines.eval_datasets.base import DatasetInfo
from data_pipelines.eval_datasets.files import FileDataset, split_ids

CLASSES_59 = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building", "bus",
    "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog", "door", "fence",
    "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
    "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky",
    "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood")
SYNONYMS = {"pottedplant": ("potted plant",), "tvmonitor": ("tv monitor",), "bedclothes": ("bedclothes",)}
LAYOUT = ("ROOT/JPEGImages/ID.jpg, ROOT/SegmentationClassContext/ID.png, ROOT/ImageSets/SegmentationContext/SPLIT.txt "
          "(ROOT = VOCdevkit/VOC2010 after mmseg's tools/convert_datasets/pascal_context.py)")


def _items(info: DatasetInfo, root: Path, split: str):
  ids = split_ids(info, root, root / "ImageSets" / "SegmentationContext" / f"{split}.txt")
  return [(i, root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClassContext" / f"{i}.png") for i in ids]


def context59(root: str | Path, split: str = "val") -> FileDataset:
  root = Path(root).expanduser()
  info = DatasetInfo("context59", CLASSES_59, 255, None, (), LAYOUT, SYNONYMS)
  return FileDataset(info, root, _items(info, root, split), lambda x: np.where(x == 0, 255, x - 1))


def context60(root: str | Path, split: str = "val") -> FileDataset:
  root = Path(root).expanduser()
  info = DatasetInfo("context60", ("background", *CLASSES_59), 255, "background", (), LAYOUT, SYNONYMS)
  return FileDataset(info, root, _items(info, root, split))
