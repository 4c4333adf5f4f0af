"""COCO-Stuff-171 and COCO-Object (the 80 COCO thing classes plus background, derived from COCO-Stuff maps).

Class names: the COCO 2017 and COCO-Stuff categories (annotations under CC BY 4.0). The zero-shot split of
COCO-Stuff (156 seen / 15 unseen, SPNet / ZegFormer, as MAFT evaluates) is in `UNSEEN`.

Layout (what MaskFormer's `datasets/prepare_coco_stuff_164k_sem_seg.py` writes): ROOT/val2017/ID.jpg and
ROOT/stuffthingmaps_detectron2/val2017/ID.png with the 171 COCO-Stuff ids (0-79 things in COCO order, 80-170
stuff, 255 unlabelled).

COCO-Object follows GroupViT's conversion (NVlabs/GroupViT, `convert_dataset/convert_coco_object.py`): each of
the 80 thing classes becomes its id + 1, and every other pixel becomes background (0), stuff and unlabelled
(255) alike; nothing is ignored. S-Seg evaluates COCO-Object as GroupViT does (paper appendix A.1).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipelines.eval_datasets.base import DatasetInfo
from data_pipelines.eval_datasets.files import FileDataset, missing_files_error

THINGS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush")
STUFF = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower",
    "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement",
    "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock",
    "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs",
    "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood")
UNSEEN = ("frisbee", "skateboard", "cardboard", "carrot", "scissors", "suitcase", "giraffe", "cow", "road",
          "wall-concrete", "tree", "grass", "river", "clouds", "playingfield")
# COCO category ids that the 2017 annotations never use; COCO-Stuff's raw maps store category id - 1.
UNUSED_THING_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
LAYOUT = ("ROOT/val2017/ID.jpg and ROOT/stuffthingmaps_detectron2/val2017/ID.png (171 COCO-Stuff ids, 255 "
          "unlabelled; ROOT = the coco directory after MaskFormer's datasets/prepare_coco_stuff_164k_sem_seg.py)")


def raw_to_171() -> np.ndarray:
  """Lookup table [256]: a raw COCO-Stuff map value (category id - 1) -> its 171-class index (255: unused)."""
  ids = [i for i in range(1, 91) if i not in UNUSED_THING_IDS] + list(range(92, 183))
  table = np.full(256, 255, np.uint8)
  table[np.asarray(ids) - 1] = np.arange(len(ids))
  return table


def _items(info: DatasetInfo, root: Path, split: str):
  labels = root / "stuffthingmaps_detectron2" / f"{split}2017"
  if not labels.is_dir():
    raise missing_files_error(info, root, labels.relative_to(root))
  return [(p.stem, root / f"{split}2017" / f"{p.stem}.jpg", p) for p in sorted(labels.glob("*.png"))]


def coco_stuff(root: str | Path, split: str = "val") -> FileDataset:
  root = Path(root).expanduser()
  info = DatasetInfo("coco_stuff", (*THINGS, *STUFF), 255, None, UNSEEN, LAYOUT)
  return FileDataset(info, root, _items(info, root, split))


def coco_object(root: str | Path, split: str = "val") -> FileDataset:
  root = Path(root).expanduser()
  info = DatasetInfo("coco_object", ("background", *THINGS), 255, "background", (), LAYOUT)

  def to_object(x: np.ndarray) -> np.ndarray:
    return np.where(x < len(THINGS), x + 1, 0)  # Stuff and unlabelled pixels alike are background.
  return FileDataset(info, root, _items(info, root, split), to_object)
