"""COCO-Object: the 80 COCO thing classes plus background, derived from COCO-Stuff label maps.

Class names: the COCO 2017 categories (CC BY 4.0 annotations).

Layout (what MaskFormer's `datasets/prepare_coco_stuff_164k_sem_seg.py` writes): ROOT/val2017/ID.jpg and
ROOT/stuffthingmaps_detectron2/val2017/ID.png with the 171 COCO-Stuff ids (0-79 things in COCO order, 80-170 stuff, 255 unlabelled). Things keep their class, stuff
becomes background (GroupViT's COCO-Object protocol).
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
NUM_STUFF_THING = 171
LAYOUT = ("ROOT/val2017/ID.jpg and ROOT/stuffthingmaps_detectron2/val2017/ID.png (171 COCO-Stuff ids, 255 "
          "unlabelled; ROOT = the coco directory after MaskFormer's datasets/prepare_coco_stuff_164k_sem_seg.py)")


def coco_object(root: str | Path, split: str = "val") -> FileDataset:
  root = Path(root).expanduser()
  info = DatasetInfo("coco_object", ("background", *THINGS), 255, "background", (), LAYOUT)
  labels = root / "stuffthingmaps_detectron2" / f"{split}2017"
  if not labels.is_dir():
    raise missing_files_error(info, root, labels.relative_to(root))
  items = [(p.stem, root / f"{split}2017" / f"{p.stem}.jpg", p) for p in sorted(labels.glob("*.png"))]

  def to_object(x: np.ndarray) -> np.ndarray:
    return np.where(x == 255, 255, np.where(x < len(THINGS), x + 1, 0))
  return FileDataset(info, root, items, to_object)
