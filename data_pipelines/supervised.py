"""Supervised segmentation batches from a prepared dataset (`data_pipelines.prepared`), on tf.data, per host.

Each host reads its own share of the split (`tfds.split_for_jax_process`: disjoint, together the whole split,
sizes within one). Per epoch the host's record files are read in an order, and their records shuffled in a
buffer, both seeded by (seed, host, epoch); every example carries its (epoch, index in that order), which keys its
augmentation (stateless: `data_pipelines.tf_augment`). The read position is (epoch, examples of that epoch
consumed by the batches handed out): a pipeline started from a saved position reads the same epoch order and skips
that many records (their bytes are read, not decoded), so a resumed run sees exactly the batches it would have.

Examples whose image or label fails to decode, or whose sizes differ, are dropped and counted (`counts()`:
`skipped`, found as gaps in the examples' indices). Batches cross epoch boundaries.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from data_pipelines import tf_augment
from data_pipelines import tf_options
from data_pipelines.prepared import store
from data_pipelines.segmentation_crops import CropSpec


@dataclasses.dataclass(frozen=True)
class Targets:
  """What the batches carry besides image and label: mask-classification targets when `max_targets` > 0."""
  max_targets: int = 0
  binary_masks: bool = False  # Also per-target boolean masks [M, S, S].
  photometric: bool = False  # mmseg's photometric distortion on the crops.


@dataclasses.dataclass(frozen=True)
class LabelFiles:
  """Labels read from DIRECTORY/KEY.png (class ids, 8- or 16-bit) in place of the records' own, e.g. pseudo labels
  written for a prepared training split. With `min_confidence` > 0, pixels whose KEY_confidence.png value / 255 is
  below it get `ignore_index`. Examples without a label file are skipped (and counted)."""
  directory: str
  sixteen_bit: bool = False
  min_confidence: float = 0.0
  ignore_index: int = 255

  def read(self, key: tf.Tensor) -> tf.Tensor:
    """int32 [H, W] of the example `key`."""
    path = tf.strings.join([self.directory.rstrip("/"), "/", key])
    encoded = tf.io.read_file(tf.strings.join([path, ".png"]))
    label = tf.cast(tf.io.decode_png(encoded, channels=1, dtype=tf.uint16 if self.sixteen_bit else tf.uint8)[..., 0],
                    tf.int32)
    if self.min_confidence > 0:
      confidence = tf.io.decode_png(tf.io.read_file(tf.strings.join([path, "_confidence.png"])), channels=1)[..., 0]
      label = tf.where(tf.cast(confidence, tf.float32) / 255.0 >= self.min_confidence, label, self.ignore_index)
    return label


class SupervisedPipeline:
  """This host's endless batches {'image' uint8 [b, S, S, 3], 'label' int32 [b, S, S], 'key' bytes [b]} (+
  'segments' int32 [b, S, S], 'target_classes' int32 [b, M], and 'masks' bool [b, M, S, S] as `targets` asks).
  `label_lookup` (int32 [65536]) maps the stored class ids (and their ignore value) to training ids; `label_files`
  replaces the stored labels by files named after the examples' keys."""

  def __init__(self, data_dir: str | epath.PathLike, name: str, split: str, batch_size: int, spec: CropSpec, *,
               seed: int = 0, process_index: int = 0, process_count: int = 1, label_lookup: np.ndarray | None = None,
               targets: Targets = Targets(), shuffle_buffer: int = 1024, position: dict[str, int] | None = None,
               label_files: LabelFiles | None = None):
    builder = store.open_prepared(data_dir, name)
    if split not in builder.info.splits:
      raise ValueError(f"prepared dataset {name!r} has no split {split!r}; it has {sorted(builder.info.splits)}.")
    self.info = store.dataset_info(builder)
    host_split = tfds.split_for_jax_process(split, process_index=process_index, process_count=process_count)
    split_info = builder.info.splits[host_split]
    self.num_examples, self.split_size = split_info.num_examples, builder.info.splits[split].num_examples
    if self.num_examples == 0:
      raise ValueError(f"{name}/{split} has {self.split_size} examples, too few for "
                       f"{process_count} hosts.")
    self._features, self._spec, self._targets = builder.info.features, spec, targets
    self._lookup = None if label_lookup is None else tf.constant(label_lookup, tf.int32)
    self._label_files = label_files
    files = [(f.filename, f.skip, f.take if f.take >= 0 else f.examples_in_shard - f.skip)
             for f in split_info.file_instructions]
    position = position or {"epoch": 0, "offset": 0}
    self._epoch, self._offset = int(position["epoch"]), int(position["offset"])
    self._counts = {"examples": 0, "skipped": 0}
    self._host_seed = int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])
    self._batches = self._dataset(files, batch_size, shuffle_buffer).as_numpy_iterator()

  def _dataset(self, files: list[tuple[str, int, int]], batch_size: int, shuffle_buffer: int) -> tf.data.Dataset:
    names, skips, takes = (list(column) for column in zip(*files))
    file_table = tf.data.Dataset.from_tensor_slices((names, tf.constant(skips, tf.int64), tf.constant(takes, tf.int64)))
    start_epoch, start_offset, host_seed = self._epoch, self._offset, self._host_seed

    def epoch_examples(epoch: tf.Tensor) -> tf.data.Dataset:
      shuffle_seed = host_seed * 1_000_003 + epoch
      cycle_length = min(16, len(names))
      records = file_table.shuffle(len(names), seed=shuffle_seed).interleave(
          lambda name, skip, take: tf.data.TFRecordDataset(name).skip(skip).take(take), cycle_length=cycle_length,
          num_parallel_calls=min(cycle_length, tf_options.parallel_calls()), deterministic=True)
      records = records.shuffle(shuffle_buffer, seed=shuffle_seed).enumerate()
      records = records.skip(tf.where(epoch == start_epoch, tf.constant(start_offset, tf.int64), 0))
      return records.map(lambda index, record: (epoch, index, record))

    examples = tf.data.Dataset.counter(start_epoch).flat_map(epoch_examples)
    examples = examples.map(self._example, num_parallel_calls=tf_options.parallel_calls(), deterministic=True)
    examples = examples.ignore_errors().batch(batch_size, drop_remainder=True).prefetch(2)
    return examples.with_options(tf_options.pipeline_options())

  def _example(self, epoch: tf.Tensor, index: tf.Tensor, record: tf.Tensor) -> dict[str, tf.Tensor]:
    raw = self._features.deserialize_example(record, decoders=store.RAW)
    image = store.decode_image(raw["image"])
    label = store.decode_label(raw["label"]) if self._label_files is None else self._label_files.read(raw["key"])
    tf.debugging.assert_equal(tf.shape(image)[:2], tf.shape(label), message="image and label sizes differ")
    if self._lookup is not None:
      label = tf.gather(self._lookup, label)
    seed = tf.random.experimental.stateless_fold_in(
        tf.random.experimental.stateless_fold_in(tf.constant([0, self._host_seed], tf.int64), epoch), index)
    image, label = tf_augment.augment(image, label, self._spec, seed, self._targets.photometric)
    out = {"image": image, "label": label, "key": raw["key"], "_epoch": epoch, "_index": index}
    if self._targets.max_targets:
      out["segments"], out["target_classes"] = tf_augment.semantic_targets(label, self._targets.max_targets,
                                                                          self._spec.ignore_index)
      if self._targets.binary_masks:
        out["masks"] = tf_augment.binary_masks(out["segments"], self._targets.max_targets)
    return out

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._batches)
    epochs, indices = batch.pop("_epoch"), batch.pop("_index")
    start = self._epoch * self.num_examples + self._offset
    end = int(epochs[-1]) * self.num_examples + int(indices[-1]) + 1
    self._counts["examples"] += len(indices)
    self._counts["skipped"] += end - start - len(indices)
    self._epoch, self._offset = divmod(end, self.num_examples)
    return batch

  def position(self) -> dict[str, int]:
    """Where a resumed pipeline starts: after the examples of the batches handed out so far."""
    return {"epoch": self._epoch, "offset": self._offset}

  def counts(self) -> dict[str, int]:
    return dict(self._counts)


def metadata(data_dir: str | epath.PathLike, name: str) -> dict[str, Any]:
  """A prepared dataset's metadata (class names, ignore index, zero-shot split, licence)."""
  return store.metadata(store.open_prepared(data_dir, name))
