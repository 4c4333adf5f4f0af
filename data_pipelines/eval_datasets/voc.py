"""Pascal VOC 2012 semantic segmentation: `voc` (21 classes with background) and `voc20` (background ignored).

Layout (the VOCdevkit release, as mmseg reads it): ROOT/JPEGImages/ID.jpg, ROOT/SegmentationClass/ID.png
(palette PNGs, 255 = object borders, ignored), ROOT/ImageSets/Segmentation/{train,val}.txt.
The zero-shot split (SPNet/ZS3Net, used by MAFT): the last five classes are unseen.
`voc_aug` reads the augmented training set (SBD's labels as grey PNGs, as DeepLab and mmseg distribute them):
ROOT/SegmentationClassAug/ID.png with the ids of ROOT/ImageSets/Segmentation/train_aug.txt (10,582 images).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipelines.eval_datasets.base import DatasetInfo
from data_pipelines.eval_datasets.files import FileDataset, listed_items

CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
           "tvmonitor")
# Names the text tower reads (the dataset's ids kept): "a photo of a dining table." rather than "diningtable".
SYNONYMS = {"aeroplane": ("aeroplane",), "diningtable": ("dining table",), "motorbike": ("motorbike",),
            "pottedplant": ("potted plant",), "tvmonitor": ("tv monitor",)}
UNSEEN = ("pottedplant", "sheep", "sofa", "train", "tvmonitor")
LAYOUT = ("ROOT/JPEGImages/ID.jpg, ROOT/SegmentationClass/ID.png, ROOT/ImageSets/Segmentation/SPLIT.txt "
          "(ROOT = VOCdevkit/VOC2012 of the VOC 2012 release)")
LAYOUT_AUG = ("ROOT/JPEGImages/ID.jpg, ROOT/SegmentationClassAug/ID.png, ROOT/ImageSets/Segmentation/train_aug.txt "
              "(ROOT = VOCdevkit/VOC2012 with SBD's augmented labels added)")


def _items(info: DatasetInfo, root: Path, split: str):
  return listed_items(info, root, f"ImageSets/Segmentation/{split}.txt", "JPEGImages", "SegmentationClass")


def voc(root: str | Path, split: str = "val") -> FileDataset:
  root = Path(root).expanduser()
  info = DatasetInfo("voc", CLASSES, 255, "background", UNSEEN, LAYOUT, SYNONYMS)
  return FileDataset(info, root, _items(info, root, split))


def voc_aug(root: str | Path, split: str = "train_aug") -> FileDataset:
  """The 21 classes on the SBD-augmented training set (`split`: the list file's name)."""
  root = Path(root).expanduser()
  info = DatasetInfo("voc", CLASSES, 255, "background", UNSEEN, LAYOUT_AUG, SYNONYMS)
  return FileDataset(info, root, listed_items(info, root, f"ImageSets/Segmentation/{split}.txt", "JPEGImages",
                                              "SegmentationClassAug"))


def voc20(root: str | Path, split: str = "val") -> FileDataset:
  """The 20 object classes; background pixels are ignored (the "without background" VOC-20 benchmark)."""
  root = Path(root).expanduser()
  info = DatasetInfo("voc20", CLASSES[1:], 255, None, UNSEEN, LAYOUT, SYNONYMS)
  return FileDataset(info, root, _items(info, root, split),
                     lambda x: np.where(x == 0, 255, np.where(x == 255, 255, x - 1)))
