"""ADE20K-150 (SceneParsing benchmark) in mmseg's layout, and the full ADE20K-847.

ade150: ROOT/images/{training,validation}/ID.jpg, ROOT/annotations/{training,validation}/ID.png with 0 =
"other" (ignored) and 1..150 the classes, reduced to 0..149 (mmseg's `reduce_zero_label`). Class names: the
SceneParsing benchmark's (BSD-3-Clause), as mmseg lists them.
ade847: ROOT = ADE20K_2021_17_01 after MaskFormer's datasets/prepare_ade20k_full_sem_seg.py:
ROOT/images_detectron2/{training,validation}/ID.jpg, ROOT/annotations_detectron2/{training,validation}/ID.tif
(uint16: 0..846 the classes, 65535 unlabelled). Class names (classes/ade20k_847.txt): the 847 ADE20K
categories in the order of Mask2Former's register_ade20k_full.py (MIT licence); each comma-separated synonym
is a prompt name of its class. Its zero-shot split (572 seen / 275 unseen, which MAFT's supplement takes from
ZegFormer): the 275 categories ZegFormer's `mask_former/data/datasets/register_ade20k_full_zero_freq.py` marks
as "rare" are unseen (classes/ade20k_847_unseen.txt), the "frequent" and "common" ones seen.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipelines.eval_datasets.base import DatasetInfo
from data_pipelines.eval_datasets.files import FileDataset, comma_synonyms, label_dir_items, read_class_names

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
CLASSES_847 = read_class_names("ade20k_847.txt")
UNSEEN_847 = read_class_names("ade20k_847_unseen.txt")
LAYOUT_847 = ("ROOT/images_detectron2/validation/ID.jpg, ROOT/annotations_detectron2/validation/ID.tif (ROOT = "
              "ADE20K_2021_17_01 after MaskFormer's datasets/prepare_ade20k_full_sem_seg.py)")
_SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}


def ade150(root: str | Path, split: str = "val") -> FileDataset:
  root = Path(root).expanduser()
  info = DatasetInfo("ade150", CLASSES, 255, None, (), LAYOUT)
  folder = _SPLITS.get(split, split)
  return FileDataset(info, root, label_dir_items(info, root, f"images/{folder}", f"annotations/{folder}"),
                     lambda x: np.where(x == 0, 255, x - 1))


def ade847(root: str | Path, split: str = "val") -> FileDataset:
  root = Path(root).expanduser()
  info = DatasetInfo("ade847", CLASSES_847, 65535, None, UNSEEN_847, LAYOUT_847, comma_synonyms(CLASSES_847))
  folder = _SPLITS.get(split, split)
  return FileDataset(info, root, label_dir_items(info, root, f"images_detectron2/{folder}",
                                                 f"annotations_detectron2/{folder}", ".tif"))
