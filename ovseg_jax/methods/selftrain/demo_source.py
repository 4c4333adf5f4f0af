"""S-Seg+ on the embedded demo: the demo S-Seg labels its own training images (captions unused), and S-Seg+ is
evaluated beside its teacher on the demo's held-out split. A source for `methods.selftrain.trainer`."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from PIL import Image

from data_pipelines import demo_data, eval_datasets, shards
from ovseg_jax.eval import engine
from ovseg_jax.methods.selftrain import pseudo_labels, setup
from ovseg_jax.methods.sseg import trainer as sseg
from ovseg_jax.train import fit, workdir as workdirs


def demo_train_images(teacher_config: ml_collections.ConfigDict, limit: int) -> list[tuple[str, np.ndarray]]:
  """The first `limit` images of this host's demo training shards."""
  train_shards = demo_data.ensure_for_config(teacher_config.data, teacher_config.seed).train_shards
  paths = shards.host_shards(train_shards, jax.process_index(), jax.process_count())
  images = []
  for key, jpeg, _ in shards.iterate_samples(paths, shards.SkipStats()):
    images.append((key, np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))))
    if len(images) == limit:
      break
  return images


class DemoSource:
  """The demo's training images, kept in memory (a few thousand 64-px images), and its held-out split."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config, self.teacher_config = config, config.teacher
    self.num_classes = len(demo_data.class_names())

  def teacher(self) -> tuple[Any, Any, int]:
    return sseg.restore_model(self.teacher_config, workdirs.as_workdir(self.config.teacher_workdir))

  def eval_roots(self) -> dict[str, str]:
    return engine.training_data_roots(self.teacher_config)

  def teacher_candidates(self) -> list[engine.Candidate]:
    model, params, _ = self.teacher()
    return sseg.candidates(model, params, self.teacher_config, name=f"{sseg.NAME} (teacher)")

  def pseudo_label(self, output: Path) -> dict[str, Any]:
    """Labels the images with the evaluation protocol of `config.eval` (threshold chosen on the tune split)."""
    model, params, step = self.teacher()
    entry = self.config.eval.datasets[0]
    root = Path(self.eval_roots()["demo"])
    info = eval_datasets.load("demo", root, entry.tune_split).info
    predictor = sseg.candidates(model, params, self.teacher_config)[0].make(
        info, engine.dataset_protocol(self.config.eval, entry, info))
    threshold, _ = engine.background_threshold(predictor, entry, root)
    images = demo_train_images(self.teacher_config, self.config.pseudo_labels.num_images)
    counts = pseudo_labels.label_images(iter(images), lambda batch: predictor.labels_with_confidence(batch, threshold),
                                        output, self.num_classes, predictor.protocol.batch_size, total=len(images))
    return {"teacher_step": step, "background_threshold": threshold, **counts}

  def training_samples(self, output: Path) -> tuple[int, Any]:
    """(count, read_sample(i) -> (image, pseudo label with low-confidence pixels ignored))."""
    images, labels, confidence = pseudo_labels.load_pseudo_labelled(
        output, demo_train_images(self.teacher_config, self.config.pseudo_labels.num_images))
    labels = np.where(confidence >= self.config.pseudo_labels.min_confidence, labels, pseudo_labels.IGNORE_INDEX)
    return len(images), lambda i: (images[i], labels[i])

  def host_data(self, output: Path, data_position: dict[str, Any] | None, start_step: int) -> fit.HostData:
    del data_position  # The crops are keyed by step.
    return setup.crop_host_data(self.config, *self.training_samples(output), self.num_classes, start_step)
