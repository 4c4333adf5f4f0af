"""Mask2Former's training input: labelled images -> augmented crops -> targets as the criterion reads them.

Samples come from a labelled split: the demo's training scenes with their pixel labels (`data.source='demo'`) or
an evaluation-dataset reader's split (`data.dataset` under `data.root`, e.g. COCO-Stuff train2017). Label ids
index `data.class_names`; the classes of `data.unseen_classes` are held out (zero-shot training: their pixels are
ignored, so they are neither a target nor "no object"), the others are the training classes, numbered in order.
With `data.targets='panoptic'` the samples are COCO panoptic segments (`data.source='coco_panoptic'`: the directory
`data.root` in COCO's panoptic layout, e.g. COCO 2017 or the demo's panoptic scenes): every non-crowd segment of a
training class is a target of its own (Mask2Former's panoptic mapper), and the training images are those with no
segment of an unseen class (the zero-shot panoptic rule of PADing and CONCAT).

Crops follow Mask2Former's semantic dataset mapper (`data_pipelines.segmentation_crops` with detectron2's
shortest-edge resize, the category-area rule, ColorAugSSD with `data.color_aug`, flip, padding with ignore). Each crop becomes MaskFormer's semantic
targets: one binary mask per training class present, here as a segment-index map (`segments`: the target index
of each pixel, -1 where ignored) and the targets' classes padded with -1 to `data.max_targets`. An image with more
classes keeps the `max_targets` largest; the others' pixels are ignored.

With `data.tfds_name`, samples come instead from that dataset prepared as TensorFlow Datasets in `data.tfds_dir`
(`python -m data_pipelines.prepare NAME --manual_dir=... --data_dir=...`) through the tf.data pipeline of
`data_pipelines.supervised` (the same crop rules in TF ops; `data.color_aug` there is the TF photometric distortion),
each host reading its share; every host's read position is saved with the checkpoints. The demo's labelled
scenes (`data.source='demo'`, `data.tfds_name='demo'`) are prepared on first use into WORKDIR/data unless
`data.tfds_dir` names another data dir.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from pathlib import Path

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from data_pipelines import coco_panoptic, demo_data, labelled, segmentation_crops, supervised
from data_pipelines.prepared import store
from data_pipelines.segmentation_crops import CropSpec
from ovseg_jax.train import fit, pipeline_data

# Above every class index (ADE-847 has 847), the uint16 labels' ignore value and coco_panoptic's.
IGNORE = coco_panoptic.IGNORE


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
  d = config.data
  if d.get("targets", "semantic") == "panoptic":
    return panoptic_samples(config)
  lookup = label_lookup(config)
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
  dataset = labelled.load(d.dataset, Path(d.root).expanduser(), d.split)
  if tuple(dataset.info.class_names) != tuple(d.class_names):
    raise ValueError(f"data.class_names ({len(d.class_names)}) differ from {d.dataset}'s {dataset.info.num_classes} "
                     "classes: take them from the dataset's reader.")
  if not hasattr(dataset, "example"):
    raise ValueError(f"dataset {d.dataset!r} has no random access to train on.")

  def read(i: int) -> tuple[np.ndarray, np.ndarray]:
    example = dataset.example(i)
    return example.image, lookup[np.clip(example.label, 0, IGNORE)]
  return len(dataset), read


def panoptic_samples(config: ml_collections.ConfigDict
                     ) -> tuple[int, Callable[[int], tuple[np.ndarray, np.ndarray]]]:
  """(count, read_sample(i) -> (uint8 image, `coco_panoptic.panoptic_label`)) over the seen-only images of the
  COCO-layout directory `data.root`, split `data.split`."""
  d = config.data
  if d.source != "coco_panoptic" or not d.root:
    raise ValueError(f"data.targets='panoptic' reads data.source='coco_panoptic' from data.root (got source="
                     f"{d.source!r}, root={d.root!r}); its layout: {coco_panoptic.LAYOUT}.")
  dataset = coco_panoptic.CocoPanoptic(d.root, d.split)
  if dataset.class_names != tuple(d.class_names):
    raise ValueError(f"data.class_names ({len(d.class_names)}) differ from the {len(dataset.class_names)} categories "
                     f"of {d.root}: take them from its panoptic JSON.")
  seen = training_classes(config)
  class_of_category = {i: seen.index(c["name"]) for i, c in dataset.categories.items() if c["name"] in seen}
  kept = coco_panoptic.seen_only(dataset.annotations, dataset.category_ids(list(d.unseen_classes)))
  if not kept:
    raise ValueError(f"every image of {d.root} ({d.split}) has a segment of data.unseen_classes: nothing to train on.")

  def read(i: int) -> tuple[np.ndarray, np.ndarray]:
    example = dataset.example(kept[i])
    return example.image, coco_panoptic.panoptic_label(example.segment_ids, example.segments, class_of_category)
  return len(kept), read


def crop_spec(config: ml_collections.ConfigDict) -> CropSpec:
  d = config.data
  # Without short_sides: mmseg-style resize to fit `scale` x ratio (with scale (S, S): large-scale jitter).
  return CropSpec(crop_size=d.crop_size, cat_max_ratio=d.cat_max_ratio, ignore_index=IGNORE,
                  short_sides=tuple(d.short_sides), max_size=d.max_size, scale=tuple(d.get("scale", (2048, 512))),
                  ratio_range=tuple(d.get("ratio_range", (0.5, 2.0))), color_aug=bool(d.get("color_aug", False)))


def host_batches(config: ml_collections.ConfigDict, start_step: int) -> Iterator[dict[str, np.ndarray]]:
  """This host's batches {'image' uint8 [b, S, S, 3], 'segments' int32 [b, S, S], 'target_classes' int32 [b, M]}
  from step `start_step` on (every sample's randomness keyed by seed, step and slot: a resumed run continues
  exactly)."""
  num_samples, read_sample = samples(config)
  host_seed = int(np.random.SeedSequence([config.seed, jax.process_index()]).generate_state(1)[0])
  crops = segmentation_crops.crop_batches(num_samples, read_sample, config.batch_size // jax.process_count(),
                                          host_seed, start_step, crop_spec(config), workers=config.data.workers)
  targets = coco_panoptic.panoptic_targets if config.data.get("targets") == "panoptic" else semantic_targets
  for batch in crops:
    segments, classes = zip(*(targets(label, config.data.max_targets) for label in batch["label"]))
    yield {"image": batch["image"], "segments": np.stack(segments), "target_classes": np.stack(classes)}


def prepared_data_dir(config: ml_collections.ConfigDict, workdir: epath.Path) -> str:
  """`data.tfds_dir`, or WORKDIR/data with the demo's labelled training scenes prepared there on first use."""
  d = config.data
  if d.tfds_dir:
    return d.tfds_dir
  if d.source != "demo" or d.tfds_name != "demo":
    raise ValueError(f"data.tfds_name={d.tfds_name!r} needs data.tfds_dir: the data dir it was prepared into.")
  data_dir = str(workdir / "data")
  if jax.process_index() == 0:
    store.ensure_prepared_demo(data_dir, demo_data.labelled_train_for_config(d, config.seed, d.num_labelled))
  multihost_utils.sync_global_devices("prepared demo data")
  return data_dir


def host_data(config: ml_collections.ConfigDict, workdir: epath.Path, data_position: dict[str, Any] | None,
              start_step: int) -> fit.HostData:
  """This host's batches (as `host_batches` gives them), from the prepared dataset `data.tfds_name` if set."""
  d = config.data
  if not d.get("tfds_name"):
    return fit.HostData(host_batches(config, start_step))
  data_dir = prepared_data_dir(config, workdir)
  pipeline = supervised.SupervisedPipeline(
      data_dir, d.tfds_name, d.split, config.batch_size // jax.process_count(), crop_spec(config), seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count(), label_lookup=label_lookup(config),
      targets=supervised.Targets(max_targets=d.max_targets, photometric=bool(d.get("color_aug", False))),
      shuffle_buffer=d.shuffle_buffer, position=pipeline_data.host_position(data_position))
  if tuple(pipeline.info.class_names) != tuple(d.class_names):
    raise ValueError(f"data.class_names ({len(d.class_names)}) differ from the prepared {d.tfds_name}'s "
                     f"{pipeline.info.num_classes} classes in {data_dir}: take them from the dataset's reader.")
  if d.source == "demo" and pipeline.split_size != d.num_labelled:
    raise ValueError(f"the demo prepared in {data_dir} has {pipeline.split_size} scenes, data.num_labelled is "
                     f"{d.num_labelled}: delete {data_dir} to prepare it again.")
  return pipeline_data.host_data(pipeline, ("image", "segments", "target_classes"))
