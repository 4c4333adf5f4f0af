"""Mask2Former's training input: labelled images -> augmented crops -> targets as the criterion reads them.

Samples come from a labelled split: the demo's training scenes with their pixel labels (`data.source='demo'`) or
an evaluation-dataset reader's split (`data.dataset` under `data.root`, e.g. COCO-Stuff train2017). Label ids
index `data.class_names`; the classes of `data.unseen_classes` are held out (zero-shot training: their pixels are
ignored, so they are neither a target nor "no object"), the others are the training classes, numbered in order.

Crops follow Mask2Former's semantic dataset mapper (`data_pipelines.segmentation_crops` with detectron2's
shortest-edge resize, the category-area rule, ColorAugSSD with `data.color_aug`, flip, padding with ignore). Each crop becomes MaskFormer's semantic
targets: one binary mask per training class present, here as a segment-index map (`segments`: the target index
of each pixel, -1 where ignored) and the targets' classes padded with -1 to `data.max_targets`. An image with more
classes keeps the `max_targets` largest; the others' pixels are ignored.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import ml_collections
import numpy as np

from data_pipelines import demo_data, eval_datasets, segmentation_crops
from data_pipelines.segmentation_crops import CropSpec

IGNORE = 2 ** 16 - 1  # Above every class index (ADE-847 has 847), and the uint16 labels' ignore value.


def training_classes(config: ml_collections.ConfigDict) -> list[str]:
  """The class head's classes: `data.class_names` without `data.unseen_classes`."""
  names, unseen = list(config.data.class_names), set(config.data.unseen_classes)
  missing = sorted(unseen - set(names))
  if missing:
    raise ValueError(f"data.unseen_classes {missing} are not in data.class_names; check their spelling.")
  return [n for n in names if n not in unseen]


def label_lookup(config: ml_collections.ConfigDict) -> np.ndarray:
  """int32 [IGNORE + 1]: a dataset label id -> its training class index, IGNORE for unseen and unknown ids."""
  names, seen = list(config.data.class_names), training_classes(config)
  table = np.full(IGNORE + 1, IGNORE, np.int32)
  for i, name in enumerate(names):
    if name in seen:
      table[i] = seen.index(name)
  return table


def semantic_targets(label: np.ndarray, max_targets: int) -> tuple[np.ndarray, np.ndarray]:
  """Training-class labels [H, W] (IGNORE where unlabelled) -> (segments int32 [H, W], classes int32 [max_targets]):
  one target per class present, the largest first when there are more than `max_targets`."""
  ids, counts = np.unique(label[label != IGNORE], return_counts=True)
  keep = np.sort(ids[np.argsort(-counts, kind="stable")[:max_targets]])
  index = np.full(IGNORE + 1, -1, np.int32)
  index[keep] = np.arange(len(keep))
  classes = np.full(max_targets, -1, np.int32)
  classes[:len(keep)] = keep
  return index[label], classes


def samples(config: ml_collections.ConfigDict) -> tuple[int, Callable[[int], tuple[np.ndarray, np.ndarray]]]:
  """(count, read_sample(i) -> (uint8 image [H, W, 3], training-class labels [H, W]))."""
  lookup = label_lookup(config)
  d = config.data
  if d.source == "demo":
    split = demo_data.load_labelled_split(demo_data.labelled_train_for_config(d, config.seed, d.num_labelled))
    if split.class_names != list(d.class_names):
      raise ValueError(f"data.class_names {list(d.class_names)} differ from the demo's {split.class_names}.")
    return len(split.keys), lambda i: (split.images[i], lookup[split.labels[i]])
  if d.source != "dataset":
    raise ValueError(f"data.source={d.source!r}: use 'demo' or 'dataset' (with data.dataset and data.root).")
  if not d.root:
    raise ValueError(f"data.root is empty: set --config.data.root to the {d.dataset} directory (its layout: "
                     "data_pipelines/eval_datasets).")
  dataset = eval_datasets.load(d.dataset, Path(d.root).expanduser(), d.split)
  if tuple(dataset.info.class_names) != tuple(d.class_names):
    raise ValueError(f"data.class_names ({len(d.class_names)}) differ from {d.dataset}'s {dataset.info.num_classes} "
                     "classes: take them from the dataset's reader.")
  if not hasattr(dataset, "example"):
    raise ValueError(f"dataset {d.dataset!r} has no random access to train on.")

  def read(i: int) -> tuple[np.ndarray, np.ndarray]:
    example = dataset.example(i)
    return example.image, lookup[np.clip(example.label, 0, IGNORE)]
  return len(dataset), read


def crop_spec(config: ml_collections.ConfigDict) -> CropSpec:
  d = config.data
  return CropSpec(crop_size=d.crop_size, cat_max_ratio=d.cat_max_ratio, ignore_index=IGNORE,
                  short_sides=tuple(d.short_sides), max_size=d.max_size, color_aug=bool(d.get("color_aug", False)))


def host_batches(config: ml_collections.ConfigDict, start_step: int) -> Iterator[dict[str, np.ndarray]]:
  """This host's batches {'image' uint8 [b, S, S, 3], 'segments' int32 [b, S, S], 'target_classes' int32 [b, M]}
  from step `start_step` on (every sample's randomness keyed by seed, step and slot: a resumed run continues
  exactly)."""
  num_samples, read_sample = samples(config)
  host_seed = int(np.random.SeedSequence([config.seed, jax.process_index()]).generate_state(1)[0])
  crops = segmentation_crops.crop_batches(num_samples, read_sample, config.batch_size // jax.process_count(),
                                          host_seed, start_step, crop_spec(config), workers=config.data.workers)
  for batch in crops:
    segments, classes = zip(*(semantic_targets(label, config.data.max_targets) for label in batch["label"]))
    yield {"image": batch["image"], "segments": np.stack(segments), "target_classes": np.stack(classes)}
