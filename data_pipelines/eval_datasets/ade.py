"""ADE20K-150 (SceneParsing benchmark) in mmseg's layout.

Layout: ROOT/images/{training,validation}/ID.jpg, ROOT/annotations/{training,validation}/ID.png with 0 =
"other" (ignored) and 1..150 the classes, reduced to 0..149 (mmseg's `reduce_zero_label`).
Class names: the SceneParsing benchmark's (BSD-3-Clause), as mmseg lists them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipelines.eval_datasets.base import DatasetInfo
from data_pipelines.eval_datasets.files import FileDataset, missing_files_error

CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag")
LAYOUT = ("ROOT/images/validation/ID.jpg, ROOT/annotations/validation/ID.png (ROOT = ADEChallengeData2016 of the "
          "SceneParsing release)")
_SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}


def ade150(root: str | Path, split: str = "val") -> FileDataset:
  root = Path(root).expanduser()
  info = DatasetInfo("ade150", CLASSES, 255, None, (), LAYOUT)
  labels = root / "annotations" / _SPLITS.get(split, split)
  if not labels.is_dir():
    raise missing_files_error(info, root, labels.relative_to(root))
  items = [(p.stem, root / "images" / labels.name / f"{p.stem}.jpg", p) for p in sorted(labels.glob("*.png"))]
  return FileDataset(info, root, items, lambda x: np.where(x == 0, 255, x - 1))
