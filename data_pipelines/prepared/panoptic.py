"""The TFDS builder of COCO panoptic 2017: each record holds the image and panoptic PNG as their files' bytes and
the segments of the annotation JSON; the categories (id, name, isthing) and the licence are in the metadata."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import coco_panoptic
from data_pipelines.prepared.semantic import VERSION


class CocoPanoptic(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Examples {key, image, panoptic (the RGB-coded PNG), segments {id, category_id, iscrowd, area}}."""
  name = "coco_panoptic"
  VERSION = VERSION
  RELEASE_NOTES = {"1.0.0": "Panoptic PNGs and segments as the release has them."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"The directory data_pipelines.coco_panoptic takes: {coco_panoptic.LAYOUT}"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description="COCO panoptic 2017, 133 categories (80 things, 53 stuff).",
        license=coco_panoptic.LICENSE, metadata=tfds.core.MetadataDict(),
        features=tfds.features.FeaturesDict({
            "key": tfds.features.Text(),
            "image": tfds.features.Image(shape=(None, None, 3)),
            "panoptic": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "segments": tfds.features.Sequence({field: np.int64 for field in coco_panoptic.SEGMENT_FIELDS})}))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    root, opened, missing = Path(os.fspath(dl_manager.manual_dir)), {}, []
    for split in ("train", "val"):
      try:
        opened[split] = coco_panoptic.CocoPanoptic(root, split)
      except FileNotFoundError as e:
        missing.append(e)
    if not opened:
      raise FileNotFoundError(f"coco_panoptic: no split found under {root}: {missing[0]}")
    categories = next(iter(opened.values())).categories
    self.info.metadata.update({"name": "coco_panoptic", "license": coco_panoptic.LICENSE,
                               "categories": [{"id": i, **c} for i, c in sorted(categories.items())]})
    return {split: self._generate_examples(dataset) for split, dataset in opened.items()}

  def _generate_examples(self, dataset: coco_panoptic.CocoPanoptic):
    for index in range(len(dataset)):
      key, image_path, png_path, segments = dataset.files(index)
      yield key, {"key": key, "image": image_path, "panoptic": png_path,
                  "segments": {field: [s[field] for s in segments] for field in coco_panoptic.SEGMENT_FIELDS}}
