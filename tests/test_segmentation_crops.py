"""Second-stage training crops: windows of the rescaled sample, the class-ratio rule, padding, exact resume."""
import numpy as np
import pytest

from data_pipelines import segmentation_crops
from data_pipelines.segmentation_crops import CropSpec

RNG = np.random.default_rng(0)


def _find_window(big: np.ndarray, small: np.ndarray) -> tuple[int, int] | None:
  h, w = small.shape[:2]
  for y in range(big.shape[0] - h + 1):
    for x in range(big.shape[1] - w + 1):
      if np.array_equal(big[y:y + h, x:x + w], small):
        return y, x
  return None


def test_crop_is_a_window_of_the_sample_or_its_mirror():
  image = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
  label = RNG.integers(0, 5, (20, 30))
  spec = CropSpec(crop_size=12, scale=(30, 20), ratio_range=(1.0, 1.0), cat_max_ratio=1.0)  # No rescaling.
  flips = []
  for seed in range(12):
    crop_image, crop_label = segmentation_crops.augment(image, label, spec, np.random.default_rng(seed))
    assert crop_image.shape == (12, 12, 3) and crop_label.dtype == np.int32
    where = _find_window(label, crop_label)
    flipped = where is None
    if flipped:
      where = _find_window(label, crop_label[:, ::-1])
    assert where is not None
    y, x = where
    window = image[y:y + 12, x:x + 12]
    np.testing.assert_array_equal(crop_image, window[:, ::-1] if flipped else window)
    flips.append(flipped)
  assert 0 < sum(flips) < len(flips)


def test_rescale_keeps_the_aspect_and_fits_the_scale():
  image = RNG.integers(0, 256, (40, 100, 3), dtype=np.uint8)
  label = np.zeros((40, 100), np.int64)
  spec = CropSpec(crop_size=400, scale=(200, 50), ratio_range=(2.0, 2.0), cat_max_ratio=1.0)
  # Fits 400 x 100 at ratio 2: factor min(400/100, 100/40) = 2.5 -> 250 x 100, padded to 400 x 400.
  crop_image, crop_label = segmentation_crops.augment(image, label, spec, np.random.default_rng(0))
  labelled = crop_label != spec.ignore_index
  assert labelled.sum() == 250 * 100 and labelled[:100, :250].all()
  assert not crop_image[100:].any()


def test_class_ratio_rule_prefers_mixed_crops():
  label = np.zeros((64, 64), np.int64)
  label[:, 48:] = 1  # Only windows reaching the right quarter hold two classes.
  image = np.zeros((64, 64, 3), np.uint8)
  def mixed_fraction(ratio):
    spec = CropSpec(crop_size=16, scale=(64, 64), ratio_range=(1.0, 1.0), cat_max_ratio=ratio)
    crops = [segmentation_crops.augment(image, label, spec, np.random.default_rng(s))[1] for s in range(60)]
    return np.mean([np.mean(c == 1) not in (0.0, 1.0) and max(np.mean(c == 0), np.mean(c == 1)) < 0.75
                    for c in crops])
  assert mixed_fraction(1.0) < 0.3 and mixed_fraction(0.75) > 0.8


def test_epochs_visit_every_sample_once():
  order = segmentation_crops.sample_indices(7, seed=3, start=0, count=21)
  for epoch in range(3):
    assert sorted(order[7 * epoch:7 * epoch + 7]) == list(range(7))
  np.testing.assert_array_equal(segmentation_crops.sample_indices(7, 3, 5, 9), order[5:14])


def test_resumed_batches_equal_the_uninterrupted_ones():
  images = RNG.integers(0, 256, (5, 24, 24, 3), dtype=np.uint8)
  labels = RNG.integers(0, 4, (5, 24, 24))
  read = lambda i: (images[i], labels[i])
  spec = CropSpec(crop_size=16, scale=(24, 24), ratio_range=(0.5, 2.0))
  full = segmentation_crops.crop_batches(5, read, 3, seed=1, start_step=0, spec=spec, workers=2)
  first = [next(full) for _ in range(4)]
  resumed = next(segmentation_crops.crop_batches(5, read, 3, seed=1, start_step=3, spec=spec, workers=2))
  for key in ("image", "label"):
    np.testing.assert_array_equal(resumed[key], first[3][key])
  assert not np.array_equal(first[0]["image"], first[1]["image"])


@pytest.mark.parametrize("shape", [(8, 40), (40, 8)])
def test_small_images_are_padded_with_ignore(shape):
  image = RNG.integers(1, 256, (*shape, 3), dtype=np.uint8)
  spec = CropSpec(crop_size=32, scale=shape[::-1], ratio_range=(1.0, 1.0), cat_max_ratio=1.0)
  crop_image, crop_label = segmentation_crops.augment(image, np.ones(shape, np.int64), spec, np.random.default_rng(0))
  assert (crop_label != spec.ignore_index).sum() == min(shape) * 32



def test_shortest_edge_resize_chooses_a_short_side_and_caps_the_long_one():
  image, label = np.zeros((40, 100, 3), np.uint8), np.zeros((40, 100), np.int32)
  spec = CropSpec(crop_size=8, short_sides=(20, 60), max_size=120)
  sizes = {segmentation_crops._rescale(image, label, spec, np.random.default_rng(s))[1].shape for s in range(10)}
  assert sizes == {(20, 50), (48, 120)}  # 60 would make the long side 150 > 120.
