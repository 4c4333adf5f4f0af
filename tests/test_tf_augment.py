"""The TF crop ops against the numpy/PIL implementation in data_pipelines.segmentation_crops (and the numpy
mask-classification targets of the Mask2Former trainer) where they must agree."""
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_pipelines import segmentation_crops, tf_augment
from data_pipelines.segmentation_crops import CropSpec

RNG = np.random.default_rng(0)


def _smooth_image(h, w):
  coarse = RNG.integers(0, 256, (h // 4 + 2, w // 4 + 2, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))


@pytest.mark.parametrize("size", [(80, 61), (20, 17), (37, 53), (111, 9)])
def test_label_resize_is_pils_nearest(size):
  label = RNG.integers(0, 200, (37, 53)).astype(np.int32)
  expected = np.asarray(Image.fromarray(label).resize((size[1], size[0]), Image.NEAREST))
  np.testing.assert_array_equal(tf_augment.resize_nearest(tf.constant(label), *size).numpy(), expected)


@pytest.mark.parametrize("spec", [CropSpec(crop_size=16, short_sides=(24,), max_size=0),
                                  CropSpec(crop_size=16, short_sides=(40,), max_size=60),
                                  CropSpec(crop_size=16, scale=(80, 20), ratio_range=(1.3, 1.3))])
def test_rescale_equals_the_numpy_pipeline_when_the_draw_is_fixed(spec):
  """One short side or one ratio: nothing left to chance, so sizes and labels are equal, images within rounding."""
  image, label = _smooth_image(31, 45), RNG.integers(0, 9, (31, 45)).astype(np.int32)
  np_image, np_label = segmentation_crops._rescale(image, label, spec, np.random.default_rng(0))
  height, width = tf_augment.rescaled_size(31, 45, spec, tf.constant([0, 1], tf.int64))
  tf_label = tf_augment.resize_nearest(tf.constant(label), height, width).numpy()
  tf_image = tf_augment.resize_image(tf.constant(image), height, width).numpy()
  np.testing.assert_array_equal(tf_label, np_label)
  difference = np.abs(tf_image.astype(int) - np_image.astype(int))
  assert difference.mean() < 1.0 and difference.max() <= 3, (difference.mean(), difference.max())


def test_short_side_is_one_of_the_choices_and_covers_them():
  spec = CropSpec(crop_size=16, short_sides=(12, 20, 28), max_size=0)
  sides = {int(min(*tf_augment.rescaled_size(31, 45, spec, tf.constant([0, s], tf.int64)))) for s in range(40)}
  assert sides == {12, 20, 28}


@pytest.mark.parametrize("ratio", [0.5, 0.75, 1.0])
def test_category_area_rule_agrees_with_numpy(ratio):
  spec = CropSpec(cat_max_ratio=ratio, ignore_index=255)
  windows = [np.full((4, 4), 255), np.full((4, 4), 3), np.array([[1, 1, 1, 2]] * 4), np.array([[1, 1, 2, 2]] * 4),
             np.array([[1, 1, 1, 255]] * 3 + [[2, 255, 255, 255]])]
  windows += [RNG.choice([0, 1, 2, 255], (5, 7), p=p) for p in ([0.7, 0.1, 0.1, 0.1], [0.3, 0.3, 0.3, 0.1]) * 10]
  for window in windows:
    assert bool(tf_augment.crop_acceptable(tf.constant(window, tf.int32), spec)) == \
        segmentation_crops.crop_acceptable(window, spec), window


class _FixedDraws:
  """Stands in for numpy's Generator in segmentation_crops.augment: the crop corner and flip given."""

  def __init__(self, y, x, flip):
    self.corner, self.flip = [y, x], flip

  def choice(self, options):
    return options[0]

  def integers(self, low, high):
    return self.corner.pop(0)

  def random(self):
    return 0.0 if self.flip else 1.0


def test_crop_flip_and_padding_equal_one_of_the_numpy_pipelines_outcomes():
  """At scale 1 (the short side kept), every TF crop is exactly numpy's for some corner and flip."""
  image, label = _smooth_image(6, 13), RNG.integers(0, 4, (6, 13)).astype(np.int32)
  spec = CropSpec(crop_size=8, short_sides=(6,), max_size=0, cat_max_ratio=1.0, ignore_index=255)
  outcomes = [segmentation_crops.augment(image, label, spec, _FixedDraws(0, x, flip))
              for x in range(13 - 8 + 1) for flip in (False, True)]
  seen = set()
  for seed in range(12):
    tf_image, tf_label = (t.numpy() for t in tf_augment.augment(tf.constant(image), tf.constant(label), spec,
                                                                tf.constant([seed, 7], tf.int64)))
    matches = [i for i, (im, lb) in enumerate(outcomes) if np.array_equal(im, tf_image) and np.array_equal(lb, tf_label)]
    assert len(matches) == 1
    seen.add(matches[0])
  assert len(seen) > 3 and (tf_label[6:] == 255).all() and (tf_image[6:] == 0).all()


def test_crop_box_redraws_until_the_rule_holds():
  label = np.zeros((40, 40), np.int32)
  label[20:] = 1  # A 16-pixel crop is acceptable when its rows cross row 20: 15 of the 25 corner rows.
  rule = CropSpec(crop_size=16, cat_max_ratio=0.75)

  def acceptable_crops(spec):
    boxes = [tf_augment.crop_box(tf.constant(label), spec, tf.constant([seed, 0], tf.int64)) for seed in range(20)]
    assert all((int(ch), int(cw)) == (16, 16) for _, _, ch, cw in boxes)
    return sum(segmentation_crops.crop_acceptable(label[y:y + 16, x:x + 16], rule) for y, x, _, _ in boxes)

  assert acceptable_crops(rule) == 20  # Ten draws all fail with probability 0.4^10.
  assert acceptable_crops(CropSpec(crop_size=16, cat_max_ratio=1.0)) < 20  # One draw: 0.6 each.


def test_semantic_targets_equal_the_trainers_numpy_targets():
  from ovseg_jax.methods.mask2former import data
  for max_targets in (1, 3, 8):
    for _ in range(5):
      label = RNG.choice([0, 4, 9, 11, 12, data.IGNORE], (9, 9)).astype(np.int32)
      label[0, :2] = 4  # Ties are likely: the lower id wins in both.
      segments, classes = (t.numpy() for t in tf_augment.semantic_targets(tf.constant(label), max_targets,
                                                                          data.IGNORE))
      np_segments, np_classes = data.semantic_targets(label, max_targets)
      np.testing.assert_array_equal(classes, np_classes)
      np.testing.assert_array_equal(segments, np_segments)
      masks = tf_augment.binary_masks(tf.constant(segments), max_targets).numpy()
      np.testing.assert_array_equal(masks, np.stack([np_segments == m for m in range(max_targets)]))
  empty = tf_augment.semantic_targets(tf.fill([4, 4], data.IGNORE), 2, data.IGNORE)
  assert (empty[0].numpy() == -1).all() and empty[1].numpy().tolist() == [-1, -1]


def test_an_enlarged_window_equals_the_window_of_the_enlarged_image():
  image = _smooth_image(23, 31)
  whole = tf.image.resize(tf.constant(image, tf.float32), [50, 67], "bilinear").numpy()
  for y, x, h, w in ((0, 0, 50, 67), (7, 11, 20, 30), (49, 66, 1, 1), (30, 0, 20, 9)):
    window = tf_augment.resized_window(tf.constant(image), 50, 67, (y, x, h, w)).numpy()
    expected = np.round(np.clip(whole[y:y + h, x:x + w], 0, 255))
    assert np.abs(window - expected).max() <= 1
