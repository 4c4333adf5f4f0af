"""Pascal Context: `context59` (59 classes, background ignored), `context60` (with background) and `context459`
(the full 459 classes).

Layout (VOCdevkit/VOC2010 after `python -m data_pipelines.prepare pascal_context`, or mmseg's
`tools/convert_datasets/pascal_context.py` for the 59/60-class labels): ROOT/JPEGImages/ID.jpg,
ROOT/SegmentationClassContext/ID.png (0 = background, 1..59 the classes), ROOT/ImageSets/SegmentationContext/
{train,val}.txt; for 459 classes, as detectron2-based open-vocabulary codebases lay them out,
ROOT/annotations_detectron2/pc459_{train,val}/ID.tif (uint16: 0..458 the classes, 65535 unlabelled).
Class names: mmseg's PascalContextDataset59 (Apache-2.0) and the release's labels.txt order for 459
(classes/pascal_context_459.txt, as detectron2-based codebases list it); the 59 are the 459's ids in
`CLASSES_59_IDS`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipelines.eval_datasets.base import DatasetInfo
from data_pipelines.eval_datasets.files import FileDataset, label_dir_items, listed_items, read_class_names

CLASSES_59 = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building", "bus",
    "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog", "door", "fence",
    "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
    "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky",
    "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood")
CLASSES_459 = read_class_names("pascal_context_459.txt")
# Each of the 59 classes' id among the 459 (0-based).
CLASSES_59_IDS = tuple(CLASSES_459.index(name) for name in CLASSES_59)
IGNORE_459 = 65535
SYNONYMS = {"pottedplant": ("potted plant",), "tvmonitor": ("tv monitor",), "bedclothes": ("bedclothes",)}
LAYOUT = ("ROOT/JPEGImages/ID.jpg, ROOT/SegmentationClassContext/ID.png, ROOT/ImageSets/SegmentationContext/SPLIT.txt "
          "(ROOT = VOCdevkit/VOC2010 after `python -m data_pipelines.prepare pascal_context --root=ROOT`)")
LAYOUT_459 = ("ROOT/JPEGImages/ID.jpg, ROOT/annotations_detectron2/pc459_SPLIT/ID.tif (ROOT = VOCdevkit/VOC2010 after "
              "`python -m data_pipelines.prepare pascal_context --root=ROOT`)")


def _items(info: DatasetInfo, root: Path, split: str):
  return listed_items(info, root, f"ImageSets/SegmentationContext/{split}.txt", "JPEGImages",
                      "SegmentationClassContext")


def context59(root: str | Path, split: str = "val") -> FileDataset:
  root = Path(root).expanduser()
  info = DatasetInfo("context59", CLASSES_59, 255, None, (), LAYOUT, SYNONYMS)
  return FileDataset(info, root, _items(info, root, split), lambda x: np.where(x == 0, 255, x - 1))


def context60(root: str | Path, split: str = "val") -> FileDataset:
  root = Path(root).expanduser()
  info = DatasetInfo("context60", ("background", *CLASSES_59), 255, "background", (), LAYOUT, SYNONYMS)
  return FileDataset(info, root, _items(info, root, split))


def context459(root: str | Path, split: str = "val") -> FileDataset:
  root = Path(root).expanduser()
  info = DatasetInfo("context459", CLASSES_459, IGNORE_459, None, (), LAYOUT_459, SYNONYMS)
  return FileDataset(info, root, label_dir_items(info, root, "JPEGImages", f"annotations_detectron2/pc459_{split}",
                                                 ".tif"))


def label_459_to_60() -> np.ndarray:
  """uint8 [460]: the release's LabelMap values (1..459 = labels.txt line, 0 = unlabelled) -> context60 ids
  (1..59 the 59 classes, 0 = background: unlabelled and the other 400 classes), as mmseg converts them."""
  table = np.zeros(len(CLASSES_459) + 1, np.uint8)
  table[np.asarray(CLASSES_59_IDS) + 1] = np.arange(1, len(CLASSES_59) + 1)
  return table
