"""Cityscapes, 19 evaluation classes, from the official release's fine annotations.

Layout: ROOT/leftImg8bit/{train,val}/CITY/NAME_leftImg8bit.png and ROOT/gtFine/{train,val}/CITY/
NAME_gtFine_labelIds.png; label ids are mapped to the 19 train ids on the fly (others ignored), so no
conversion is needed (`python -m data_pipelines.prepare cityscapes` writes the trainId maps if wanted).
Class names and the mapping: the cityscapesScripts label table (MIT licence).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipelines.eval_datasets.base import DatasetInfo
from data_pipelines.eval_datasets.files import FileDataset, missing_files_error

CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
           "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
# labelId of each train id 0..18.
LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
LAYOUT = ("ROOT/leftImg8bit/SPLIT/CITY/NAME_leftImg8bit.png and ROOT/gtFine/SPLIT/CITY/NAME_gtFine_labelIds.png "
          "(ROOT = the Cityscapes release with leftImg8bit_trainvaltest and gtFine_trainvaltest unpacked)")


def label_id_to_train_id() -> np.ndarray:
  """Lookup table [256]: Cityscapes labelId -> train id (255 for the classes not evaluated)."""
  table = np.full(256, 255, np.uint8)
  table[list(LABEL_IDS)] = np.arange(len(LABEL_IDS))
  return table


def cityscapes(root: str | Path, split: str = "val") -> FileDataset:
  root = Path(root).expanduser()
  info = DatasetInfo("cityscapes", CLASSES, 255, None, (), LAYOUT)
  images = root / "leftImg8bit" / split
  if not images.is_dir():
    raise missing_files_error(info, root, images.relative_to(root))
  items = []
  for image in sorted(images.glob("*/*_leftImg8bit.png")):
    name = image.name.removesuffix("_leftImg8bit.png")
    items.append((name, image, root / "gtFine" / split / image.parent.name / f"{name}_gtFine_labelIds.png"))
  table = label_id_to_train_id()
  return FileDataset(info, root, items, lambda x: table[np.clip(x, 0, 255)])
