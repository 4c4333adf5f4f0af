"""Segmentation training crops and mask-classification targets in TensorFlow ops, for tf.data.

The rules are those of `data_pipelines.segmentation_crops` (mmseg's resize by a scale range or detectron2's
shortest-edge resize; a crop redrawn up to ten times while one class covers `cat_max_ratio` or more of its
labelled pixels; a horizontal flip; padding to the crop size with 0 and the ignore label), plus mmseg's photometric
distortion (`data_pipelines.tf_photometric`). Sizes follow the same float64 arithmetic, labels are resized by PIL's
nearest rule (source pixel floor((x + 0.5) * in / out)), images as PIL's BILINEAR resizes them (antialiased when
shrinking), up to rounding. Randomness is stateless: one [2] seed per example.
"""
from __future__ import annotations

import tensorflow as tf

from data_pipelines import tf_photometric
from data_pipelines.segmentation_crops import CropSpec

_RESIZE, _FLIP, _CROP, _PHOTOMETRIC = 0, 1, 2, 3  # Independent draws folded into an example's seed.


def _uniform(seed: tf.Tensor, draw: int, low: float = 0.0, high: float = 1.0) -> tf.Tensor:
  return tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seed, draw), low, high, tf.float64)


def rescaled_size(height: tf.Tensor, width: tf.Tensor, spec: CropSpec, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """(new height, new width): int(side * factor + 0.5), the factor drawn as segmentation_crops draws it."""
  h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
  if spec.short_sides:
    sides = tf.constant(spec.short_sides, tf.float64)
    pick = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seed, _RESIZE), 0,
                                       len(spec.short_sides), tf.int32)
    factor = tf.gather(sides, pick) / tf.minimum(h, w)
    if spec.max_size:
      factor = tf.where(tf.maximum(h, w) * factor > spec.max_size, spec.max_size / tf.maximum(h, w), factor)
  else:
    ratio = _uniform(seed, _RESIZE, *spec.ratio_range)
    factor = tf.minimum(max(spec.scale) * ratio / tf.maximum(h, w), min(spec.scale) * ratio / tf.minimum(h, w))
  size = lambda side: tf.maximum(1, tf.cast(tf.floor(side * factor + 0.5), tf.int32))
  return size(h), size(w)


def resize_nearest(label: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  """Label [H, W] -> [height, width] by PIL's nearest rule."""
  def sources(out: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    scale = tf.cast(size, tf.float64) / tf.cast(out, tf.float64)
    index = tf.cast(tf.floor((tf.range(out, dtype=tf.float64) + 0.5) * scale), tf.int32)
    return tf.minimum(index, size - 1)
  shape = tf.shape(label)
  return tf.gather(tf.gather(label, sources(height, shape[0]), axis=0), sources(width, shape[1]), axis=1)


def resized_window(image: tf.Tensor, height: tf.Tensor, width: tf.Tensor, box: tuple[tf.Tensor, ...]) -> tf.Tensor:
  """Window (y, x, h, w) of the image resized to (height, width) as PIL's BILINEAR resizes: antialiased when
  shrinking; when enlarging, plain bilinear with half-pixel centres computed for the window's pixels alone, by
  crop_and_resize on the image padded with its edge pixels (which clamps the taps at the borders)."""
  y, x, ch, cw = box
  pixels = tf.cast(image, tf.float32)

  def shrink():
    return tf.image.resize(pixels, tf.stack([height, width]), "bilinear", antialias=True)[y:y + ch, x:x + cw]

  def enlarge():
    padded = tf.pad(pixels, [[1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")

    def span(start, count, out, size):  # Normalised first and last source coordinates in the padded image.
      scale = tf.cast(size, tf.float32) / tf.cast(out, tf.float32)
      first = (tf.cast(start, tf.float32) + 0.5) * scale - 0.5 + 1.0
      return tf.stack([first, first + tf.cast(count - 1, tf.float32) * scale]) / tf.cast(size + 1, tf.float32)
    rows, columns = span(y, ch, height, tf.shape(image)[0]), span(x, cw, width, tf.shape(image)[1])
    boxes = tf.stack([rows[0], columns[0], rows[1], columns[1]])[None]
    return tf.image.crop_and_resize(padded[None], boxes, [0], tf.stack([ch, cw]))[0]
  shrinking = tf.logical_or(height < tf.shape(image)[0], width < tf.shape(image)[1])
  return tf.cast(tf.round(tf.clip_by_value(tf.cond(shrinking, shrink, enlarge), 0, 255)), tf.uint8)


def resize_image(image: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  return resized_window(image, height, width, (0, 0, height, width))


def crop_acceptable(window: tf.Tensor, spec: CropSpec) -> tf.Tensor:
  """The category-area rule: at least two classes, none covering `cat_max_ratio` of the labelled pixels."""
  if spec.cat_max_ratio >= 1:
    return tf.constant(True)
  _, _, counts = tf.unique_with_counts(tf.boolean_mask(window, window != spec.ignore_index))
  counts = tf.cast(counts, tf.float64)
  share = tf.reduce_max(tf.concat([counts, [0.0]], 0)) / tf.maximum(tf.reduce_sum(counts), 1.0)
  return tf.logical_and(tf.size(counts) > 1, share < spec.cat_max_ratio)


def crop_box(label: tf.Tensor, spec: CropSpec, seed: tf.Tensor) -> tuple[tf.Tensor, ...]:
  """(y, x, crop height, crop width): up to ten random boxes, the first acceptable one (else the last)."""
  h, w = tf.shape(label)[0], tf.shape(label)[1]
  ch, cw = tf.minimum(spec.crop_size, h), tf.minimum(spec.crop_size, w)

  def draw(attempt: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    s = tf.random.experimental.stateless_fold_in(tf.random.experimental.stateless_fold_in(seed, _CROP), attempt)
    y = tf.random.stateless_uniform([], s, 0, h - ch + 1, tf.int32)
    x = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(s, 1), 0, w - cw + 1, tf.int32)
    return y, x

  def redraw(attempt, y, x):
    del y, x
    return (attempt + 1, *draw(attempt + 1))

  def unacceptable(attempt, y, x):
    return tf.logical_and(attempt < 9, tf.logical_not(crop_acceptable(label[y:y + ch, x:x + cw], spec)))

  _, y, x = tf.while_loop(unacceptable, redraw, (tf.constant(0), *draw(tf.constant(0))))
  return y, x, ch, cw


def pad_crop(image: tf.Tensor, label: tf.Tensor, spec: CropSpec) -> tuple[tf.Tensor, tf.Tensor]:
  """Bottom/right padding to the crop size: image 0, label the ignore index."""
  size = spec.crop_size
  pad_h, pad_w = size - tf.shape(label)[0], size - tf.shape(label)[1]
  image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])
  label = tf.pad(label, [[0, pad_h], [0, pad_w]], constant_values=spec.ignore_index)
  return tf.ensure_shape(image, (size, size, 3)), tf.ensure_shape(label, (size, size))


def augment(image: tf.Tensor, label: tf.Tensor, spec: CropSpec, seed: tf.Tensor,
            photometric: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
  """uint8 image [H, W, 3] and int32 class ids [H, W] -> a (crop_size, crop_size) training crop of both."""
  height, width = rescaled_size(tf.shape(label)[0], tf.shape(label)[1], spec, seed)
  label = resize_nearest(label, height, width)
  y, x, ch, cw = crop_box(label, spec, seed)
  image, label = resized_window(image, height, width, (y, x, ch, cw)), label[y:y + ch, x:x + cw]
  flip = _uniform(seed, _FLIP) < 0.5
  image, label = tf.cond(flip, lambda: (image[:, ::-1], label[:, ::-1]), lambda: (image, label))
  if photometric:
    image = tf_photometric.photometric_distortion(image,
                                                  tf.random.experimental.stateless_fold_in(seed, _PHOTOMETRIC))
  return pad_crop(image, label, spec)


def semantic_targets(label: tf.Tensor, max_targets: int, ignore_index: int) -> tuple[tf.Tensor, tf.Tensor]:
  """Class ids [S, S] -> (segments int32 [S, S]: each pixel's target index, -1 where ignored or dropped;
  classes int32 [max_targets], -1 padded): one target per class present, the `max_targets` largest kept (ties
  to the lower id), in class order; as `methods.mask2former.data.semantic_targets` does in numpy."""
  size = tf.maximum(tf.reduce_max(label), ignore_index) + 1
  counts = tf.math.bincount(tf.reshape(label, [-1]), minlength=size, maxlength=size)
  counts = tf.tensor_scatter_nd_update(counts, [[ignore_index]], [0])
  largest, ids = tf.math.top_k(counts, k=tf.minimum(max_targets, size))  # Ties: the lower id first.
  keep = tf.sort(tf.boolean_mask(ids, largest > 0))
  table = tf.tensor_scatter_nd_update(tf.fill([size], -1), keep[:, None], tf.range(tf.size(keep)))
  classes = tf.pad(keep, [[0, max_targets - tf.size(keep)]], constant_values=-1)
  return tf.gather(table, label), classes


def binary_masks(segments: tf.Tensor, max_targets: int) -> tf.Tensor:
  """Per-target binary masks bool [max_targets, S, S] of a segment-index map."""
  return tf.equal(segments[None], tf.range(max_targets, dtype=segments.dtype)[:, None, None])
