"""S-Seg+ on a real target dataset (VOC, Pascal Context, COCO-Object, ...): a source for
`methods.selftrain.trainer`.

The teacher (an S-Seg workdir: its `config.json` rebuilds the model) labels the training split's images at their
own sizes with an evaluation protocol (`pseudo_labels.protocol`: short side, sliding windows, background rule)
and a classifier (`pseudo_labels.classifier`: the learned one, or CLIP crops / a CLIP ensemble with
`pseudo_labels.clip`). Each host labels every process_count-th image. `data.root` is the dataset's directory or a
data dir it was prepared into (`data_pipelines.labelled` chooses). From a directory, the second stage reads the
images and label PNGs file by file (`data_pipelines.segmentation_crops`); from a prepared dataset, each host reads
its share of the split's records with their label PNGs through the tf.data pipeline (`data_pipelines.supervised`,
the read position saved with each checkpoint). It is evaluated on the dataset's validation split (`config.eval`).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from data_pipelines import labelled, supervised
from data_pipelines.eval_datasets.files import read_image
from ovseg_jax.eval import engine
from ovseg_jax.eval.open_vocabulary import load_clip_setup
from ovseg_jax.methods.selftrain import pseudo_labels, setup
from ovseg_jax.methods.sseg import trainer as sseg
from ovseg_jax.train import fit, pipeline_data, progress, workdir as workdirs


def _dataset(config: ml_collections.ConfigDict, split: str):
  if not config.data.root:
    raise ValueError(f"data.root is empty: set --config.data.root to the {config.data.dataset} directory (its "
                     "layout: data_pipelines/eval_datasets) or a data dir it was prepared into.")
  return labelled.load(config.data.dataset, Path(config.data.root).expanduser(), split)


class DatasetSource:
  """Pseudo labels, training samples and evaluation for `data.dataset` under `data.root`."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.train_split = _dataset(config, config.data.split)
    self._from_files = hasattr(self.train_split, "image_files")  # Else a prepared dataset.
    self.info = self.train_split.info
    self.num_classes = self.info.num_classes

  def pseudo_label(self, output: Path) -> dict[str, Any]:
    cfg = self.config.pseudo_labels
    if not self.config.teacher_workdir:
      raise ValueError("teacher_workdir is empty: set --config.teacher_workdir to the S-Seg training workdir whose "
                       "latest checkpoint labels the images.")
    workdir = workdirs.as_workdir(self.config.teacher_workdir)
    teacher_config = workdirs.read_config(workdir)
    model, params, step = sseg.restore_model(teacher_config, workdir)
    protocol = engine.dataset_protocol(ml_collections.ConfigDict({"protocol": cfg.protocol}), {}, self.info)
    if protocol.background == "threshold" and protocol.background_threshold < 0:
      raise ValueError("pseudo_labels.protocol.background_threshold must be set (>= 0): the training split has no "
                       "separate tuning split here; use the published threshold of the eval config.")
    clip = load_clip_setup(cfg.clip)
    candidate = sseg.candidates(model, params, teacher_config, (cfg.classifier,), clip)[0]
    predictor = candidate.make(self.info, protocol)
    count, images = self._host_images(cfg.num_images)

    def predict(images: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
      return predictor.labels_with_confidence(images, protocol.background_threshold)

    counts = pseudo_labels.label_images(images, predict, output, self.num_classes, batch_size=1, total=count)
    return {"teacher_step": step, "classifier": cfg.classifier, "images_this_host": count, **counts}

  def _host_images(self, limit: int) -> tuple[int, Iterator[tuple[str, np.ndarray]]]:
    """This host's share (every process_count-th) of the split's first `limit` images (all when 0)."""
    index, hosts = jax.process_index(), jax.process_count()
    if not self._from_files:
      total = min(limit, len(self.train_split)) if limit > 0 else len(self.train_split)
      return len(range(index, total, hosts)), self.train_split.images(limit, index, hosts)
    files = self.train_split.image_files()
    mine = (files[:limit] if limit > 0 else files)[index::hosts]
    return len(mine), ((key, read_image(path)) for key, path in mine)

  def host_data(self, output: Path, data_position: dict[str, Any] | None, start_step: int) -> fit.HostData:
    """Crops of the pseudo-labelled training images: file by file from a directory, through the tf.data
    pipeline from a prepared dataset (examples without a label count as skipped)."""
    if self._from_files:
      return setup.crop_host_data(self.config, *self._file_samples(output), self.num_classes, start_step)
    d = self.config.data
    pipeline = supervised.SupervisedPipeline(
        Path(d.root).expanduser(), d.dataset, d.split, self.config.batch_size // jax.process_count(),
        setup.crop_spec(self.config, self.num_classes), seed=self.config.seed, process_index=jax.process_index(),
        process_count=jax.process_count(), position=pipeline_data.host_position(data_position),
        label_files=supervised.LabelFiles(str(output), pseudo_labels.label_dtype(self.num_classes) == np.uint16,
                                          self.config.pseudo_labels.min_confidence,
                                          pseudo_labels.ignore_index(self.num_classes)))
    progress.log(f"second stage: the pseudo-labelled images of the prepared {d.dataset}/{d.split} in {d.root}")
    return pipeline_data.host_data(pipeline, ("image", "label"))

  def _file_samples(self, output: Path) -> tuple[int, Any]:
    """Every image of the split with a pseudo label under `output` (written by all hosts)."""
    items = [(path, *pseudo_labels.output_paths(output, key)) for key, path in self.train_split.image_files()
             if pseudo_labels.output_paths(output, key)[0].exists()]
    if not items:
      raise FileNotFoundError(f"no pseudo labels under {output}: run the pseudo-labelling stage first.")
    min_confidence = self.config.pseudo_labels.min_confidence
    ignore = pseudo_labels.ignore_index(self.num_classes)

    def read_sample(i: int) -> tuple[np.ndarray, np.ndarray]:
      image_path, label_path, confidence_path = items[i]
      label = pseudo_labels.read_label(label_path)
      if min_confidence > 0:
        label = np.where(pseudo_labels.read_confidence(confidence_path) >= min_confidence, label, ignore)
      return read_image(image_path), label
    progress.log(f"second stage: {len(items)} of {len(self.train_split)} {self.info.name} images pseudo-labelled")
    return len(items), read_sample

  def eval_roots(self) -> dict[str, str]:
    return {self.info.name: self.config.data.root}

  def teacher_candidates(self) -> list[engine.Candidate]:
    return []  # The teacher is evaluated by its own eval job; labelling the val split twice costs too much here.
