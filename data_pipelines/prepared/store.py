"""Preparing a dataset by name into a data dir, and opening what was prepared: the builder read from its files
(no builder code needed), its metadata, decoders of its images and labels, and an evaluation-dataset view."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from data_pipelines.eval_datasets.base import DatasetInfo, Example

PREPARE_COMMAND = "python -m data_pipelines.prepare {name} --manual_dir=DATASET_ROOT --data_dir={data_dir}"


def builders() -> dict[str, type]:
  from data_pipelines.prepared import panoptic, semantic
  return {**semantic.BUILDERS, "coco_panoptic": panoptic.CocoPanoptic}


def prepare(name: str, manual_dir: str | epath.PathLike, data_dir: str | epath.PathLike) -> tfds.core.DatasetBuilder:
  """Prepares dataset `name` from its layout under `manual_dir` into `data_dir` (once: a finished one is kept)."""
  known = builders()
  if name not in known:
    raise ValueError(f"unknown dataset {name!r} to prepare; known: {', '.join(sorted(known))}.")
  builder = known[name](data_dir=str(data_dir), file_format="tfrecord")
  # try_download_gcs=False: nothing is ever downloaded.
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir), try_download_gcs=False))
  return builder


def ensure_prepared_demo(data_dir: str | epath.PathLike, train_split_dir: str | os.PathLike) -> None:
  """Prepares the demo's labelled training scenes (a split directory `demo_data` wrote) as `demo` in `data_dir`,
  unless done: its manual directory is a sibling of the split holding a link `train` to it."""
  if find(data_dir, "demo") is not None:
    return
  split = Path(train_split_dir)  # The demo cache is local.
  manual = split.parent / f".prepare_{split.name}"
  manual.mkdir(exist_ok=True)
  try:
    (manual / "train").symlink_to(split)
  except FileExistsError:  # Made by an earlier run.
    pass
  prepare("demo", manual, data_dir)


def find(data_dir: str | epath.PathLike, name: str) -> epath.Path | None:
  """DATA_DIR/NAME/VERSION of the newest finished preparation of `name`, or None."""
  versions = epath.Path(data_dir) / name
  if not versions.is_dir():
    return None
  done = [p for p in versions.iterdir() if (p / "dataset_info.json").exists()]
  return max(done, key=lambda p: tfds.core.Version(p.name)) if done else None


def open_prepared(data_dir: str | epath.PathLike, name: str) -> tfds.core.DatasetBuilder:
  directory = find(data_dir, name)
  if directory is None:
    raise FileNotFoundError(f"no prepared dataset {name!r} in {data_dir}: prepare it with "
                            f"`{PREPARE_COMMAND.format(name=name, data_dir=data_dir)}`.")
  return tfds.builder_from_directory(str(directory))


def metadata(builder: tfds.core.DatasetBuilder) -> dict[str, Any]:
  return json.loads((epath.Path(builder.data_dir) / "metadata.json").read_text())


def dataset_info(builder: tfds.core.DatasetBuilder) -> DatasetInfo:
  """The directory reader's `DatasetInfo`, as recorded in a prepared semantic dataset."""
  m = metadata(builder)
  return DatasetInfo(m["name"], tuple(m["class_names"]), m["ignore_index"], m["background_class"],
                     tuple(m["unseen_classes"]), m["layout"], {k: tuple(v) for k, v in m["synonyms"].items()})


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
  """uint8 RGB [H, W, 3] of JPEG or PNG bytes; JPEGs with the accurate DCT, which is what PIL decodes with."""
  return tf.cond(tf.io.is_jpeg(encoded),
                 lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
                 lambda: tf.io.decode_png(encoded, channels=3))


def decode_label(encoded: tf.Tensor) -> tf.Tensor:
  """int32 [H, W] class ids of a prepared uint16 label PNG."""
  return tf.cast(tf.io.decode_png(encoded, channels=1, dtype=tf.uint16)[..., 0], tf.int32)


RAW = {"image": tfds.decode.SkipDecoding(), "label": tfds.decode.SkipDecoding()}


class PreparedDataset:
  """A prepared split as an evaluation dataset (what `labelled.load` returns when ROOT holds it)."""

  def __init__(self, data_dir: str | epath.PathLike, name: str, split: str):
    self._builder = open_prepared(data_dir, name)
    if split not in self._builder.info.splits:
      raise FileNotFoundError(f"prepared dataset {name!r} in {data_dir} has no split {split!r} "
                              f"(it has {sorted(self._builder.info.splits)}).")
    self.info, self._split = dataset_info(self._builder), split

  def __len__(self) -> int:
    return self._builder.info.splits[self._split].num_examples

  def __iter__(self) -> Iterator[Example]:
    for record in self._builder.as_dataset(split=self._split, decoders=RAW, shuffle_files=False):
      yield Example(record["key"].numpy().decode(), decode_image(record["image"]).numpy(),
                    decode_label(record["label"]).numpy().astype(np.int32))

  def images(self, limit: int = 0, process_index: int = 0,
             process_count: int = 1) -> Iterator[tuple[str, np.ndarray]]:
    """(key, uint8 image) of every `process_count`-th of the split's first `limit` examples (all when 0), starting
    at `process_index`, in the split's order; labels are not decoded."""
    records = self._builder.as_dataset(split=self._split, decoders=RAW, shuffle_files=False)
    if limit > 0:
      records = records.take(limit)
    for record in records.shard(process_count, process_index):
      yield record["key"].numpy().decode(), decode_image(record["image"]).numpy()
