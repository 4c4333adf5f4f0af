"""S-Seg+ on a real target dataset (VOC, Pascal Context, COCO-Object, ...): a source for `ovseg_jax.selftrain`.

The teacher (an S-Seg workdir: its `config.json` rebuilds the model) labels the training split's images at their
own sizes with an evaluation protocol (`pseudo_labels.protocol`: short side, sliding windows, background rule)
and a classifier (`pseudo_labels.classifier`: the learned one, or CLIP crops / a CLIP ensemble with
`pseudo_labels.clip`). Each host labels every process_count-th image. The second stage reads the images and
label PNGs from disk (`ovseg_jax.segmentation_data`) and is evaluated on the dataset's validation split with
sliding windows, every class (background included) competing by argmax.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipelines import eval_datasets
from data_pipelines.eval_datasets.files import read_image
from ovseg_jax import eval_suite, progress, pseudo_label, train
from ovseg_jax.preprocessing import normalize_images


def _dataset(config: ml_collections.ConfigDict, split: str):
  if not config.data.root:
    raise ValueError(f"data.root is empty: set --config.data.root to the {config.data.dataset} directory (its "
                     "layout: data_pipelines/eval_datasets).")
  dataset = eval_datasets.load(config.data.dataset, Path(config.data.root).expanduser(), split)
  if not hasattr(dataset, "image_files"):
    raise ValueError(f"dataset {config.data.dataset!r} has no image files to self-train on.")
  return dataset


class DatasetSource:
  """Pseudo labels, training samples and evaluation for `data.dataset` under `data.root`."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.train_split = _dataset(config, config.data.split)
    self.info = self.train_split.info
    self.num_classes = self.info.num_classes

  def pseudo_label(self, output: Path) -> dict[str, Any]:
    cfg = self.config.pseudo_labels
    if not self.config.teacher_workdir:
      raise ValueError("teacher_workdir is empty: set --config.teacher_workdir to the S-Seg training workdir whose "
                       "latest checkpoint labels the images.")
    workdir = Path(self.config.teacher_workdir).expanduser()
    teacher_config = train.workdir_config(workdir)
    model, params, step = train.restore_model(teacher_config, workdir)
    protocol = eval_suite.Protocol.from_config(cfg.protocol)
    protocol = dataclasses.replace(protocol, synonyms={**self.info.synonyms, **protocol.synonyms})
    if protocol.background == "threshold" and protocol.background_threshold < 0:
      raise ValueError("pseudo_labels.protocol.background_threshold must be set (>= 0): the training split has no "
                       "separate tuning split here; use the published threshold of the eval config.")
    clip = eval_suite.load_clip_setup(cfg.clip)
    evaluator = eval_suite.DatasetEvaluator(model, params, self.info.class_names, self.info.background_index,
                                            protocol, teacher_config.data.context_length, cfg.classifier, clip)
    files = self.train_split.image_files()
    if cfg.num_images > 0:
      files = files[:cfg.num_images]
    mine = files[jax.process_index()::jax.process_count()]

    def predict(images: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
      labelled = [evaluator.predict_with_confidence(image, protocol.background_threshold) for image in images]
      return [label for label, _ in labelled], [confidence for _, confidence in labelled]

    counts = pseudo_label.label_images(((key, read_image(path)) for key, path in mine), predict, output,
                                       self.num_classes, batch_size=1, total=len(mine))
    return {"teacher_step": step, "classifier": cfg.classifier, "images_this_host": len(mine), **counts}

  def training_samples(self, output: Path) -> tuple[int, Any]:
    """Every image of the split with a pseudo label under `output` (written by all hosts)."""
    items = [(path, *pseudo_label.output_paths(output, key)) for key, path in self.train_split.image_files()
             if pseudo_label.output_paths(output, key)[0].exists()]
    if not items:
      raise FileNotFoundError(f"no pseudo labels under {output}: run the pseudo-labelling stage first.")
    min_confidence = self.config.pseudo_labels.min_confidence
    ignore = pseudo_label.ignore_index(self.num_classes)

    def read_sample(i: int) -> tuple[np.ndarray, np.ndarray]:
      image_path, label_path, confidence_path = items[i]
      label = pseudo_label.read_label(label_path)
      if min_confidence > 0:
        label = np.where(pseudo_label.read_confidence(confidence_path) >= min_confidence, label, ignore)
      return read_image(image_path), label
    progress.log(f"second stage: {len(items)} of {len(self.train_split)} {self.info.name} images pseudo-labelled")
    return len(items), read_sample

  def evaluate(self, workdir: Path, model: Any, params: Any, step: int) -> dict[str, Any]:
    cfg = self.config.eval
    dataset = _dataset(self.config, cfg.split)
    protocol = eval_suite.Protocol(cfg.short_side or None, cfg.window, cfg.stride, (), "none", 0.0, 0.0, "",
                                   cfg.batch_size, {})

    def score_windows(p, windows):
      logits = model.apply({"params": p}, normalize_images(windows)).astype(jnp.float32)
      logits = jax.image.resize(logits, (*windows.shape[:3], logits.shape[-1]), "bilinear")
      return jnp.moveaxis(jax.nn.softmax(logits), -1, 1)

    evaluator = eval_suite.WindowEvaluator(jax.jit(score_windows), (params,), list(range(self.num_classes)),
                                           self.info.background_index, protocol)
    results = eval_suite.evaluate_dataset(evaluator, dataset, 0.0, workdir, cfg.num_overlays)
    results.update(step=step, classifier="S-Seg+ (UperNet)")
    table = eval_suite.results_table([results])
    (workdir / "results.json").write_text(json.dumps(results, indent=2, default=float))
    (workdir / "results.md").write_text(f"# S-Seg+ at step {step} on {dataset.info.name} ({cfg.split})\n\n{table}\n")
    print(f"S-Seg+ at step {step}:\n{table}", flush=True)
    return results
