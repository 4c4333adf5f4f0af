"""The TF photometric distortion against a float64 numpy transcription of mmseg's PhotoMetricDistortion (its
steps, order and uint8 truncations over OpenCV's 8-bit HSV conversions, transcribed in tests/test_mask2former_data.py)
with the same draws fixed, on fresh random images; and against the numpy path of `data_pipelines.color_augmentation`."""
import itertools

import numpy as np
import pytest
import tensorflow as tf

from data_pipelines import color_augmentation, tf_photometric
from test_mask2former_data import _agree, exact_bgr_to_hsv, ref_bgr_to_hsv, ref_convert, ref_hsv_to_bgr


def mmseg_photometric(image_rgb, d):
  """mmseg's PhotoMetricDistortion.__call__ with its random choices `d`, on the BGR image it works in."""
  img = image_rgb[..., ::-1]
  if d["brightness_on"]:
    img = ref_convert(img, beta=float(d["brightness"]))
  contrast = lambda x: ref_convert(x, alpha=float(d["contrast"])) if d["contrast_on"] else x
  if d["contrast_first"]:  # mmseg's mode 1.
    img = contrast(img)
  if d["saturation_on"]:
    hsv = ref_bgr_to_hsv(img)
    hsv[..., 1] = ref_convert(hsv[..., 1], alpha=float(d["saturation"]))
    img = ref_hsv_to_bgr(hsv)
  if d["hue_on"]:
    hsv = ref_bgr_to_hsv(img)
    hsv[..., 0] = (hsv[..., 0].astype(int) + d["hue"]) % 180
    img = ref_hsv_to_bgr(hsv)
  if not d["contrast_first"]:
    img = contrast(img)
  return img[..., ::-1]


def _fixed_draws(rng, brightness_on, contrast_on, contrast_first, saturation_on, hue_on):
  return {"brightness_on": brightness_on, "contrast_on": contrast_on, "contrast_first": contrast_first,
          "saturation_on": saturation_on, "hue_on": hue_on, "hue": int(rng.integers(-18, 18)),
          # float32, as the TF op draws them.
          **{k: np.float32(rng.uniform(*r)) for k, r in (("brightness", (-32, 32)), ("contrast", (0.5, 1.5)),
                                                         ("saturation", (0.5, 1.5)))}}


def _tf_apply(image, d):
  return tf_photometric.apply(tf.constant(image), {k: tf.constant(v) for k, v in d.items()}).numpy()


def test_tf_hsv_conversions_are_opencvs():
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
  hsv = tf_photometric.rgb_to_hsv8(tf.constant(rgb)).numpy()
  np.testing.assert_array_equal(hsv, ref_bgr_to_hsv(rgb[..., ::-1]))
  _agree(hsv, exact_bgr_to_hsv(rgb[..., ::-1]), max_fraction=0.02)  # OpenCV's tables are off by 1 at most.
  grid = np.stack(np.meshgrid(np.arange(180), np.arange(0, 256, 5), np.arange(0, 256, 5), indexing="ij"), -1)
  grid = grid.reshape(180, -1, 3).astype(np.uint8)
  ref, ties = ref_hsv_to_bgr(grid, ties=True)
  ours = tf_photometric.hsv8_to_rgb(tf.constant(grid)).numpy()[..., ::-1]
  np.testing.assert_array_equal(ours[~ties], ref[~ties])
  assert np.abs(ours[ties].astype(int) - ref[ties]).max() <= 1 and ties.mean() < 0.01


@pytest.mark.parametrize("steps", list(itertools.product([False, True], repeat=5)))
def test_tf_distortion_equals_mmseg_float64_transcription(steps):
  rng = np.random.default_rng(sum(s << i for i, s in enumerate(steps)))
  image = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)  # Fresh random pixels: every hue and saturation.
  image[:8] = image[:8, :, :1]  # And some grey pixels (S = 0).
  d = _fixed_draws(rng, *steps)
  out, expected = _tf_apply(image, d), mmseg_photometric(image, d)
  if steps[3] or steps[4]:  # float32 against float64 at HSV -> RGB rounding ties, carried through later steps.
    _agree(out, expected, max_off=2, max_fraction=0.02)
  else:  # float32 against float64 at truncation boundaries.
    _agree(out, expected, max_off=1, max_fraction=0.001)


def test_tf_distortion_equals_the_numpy_path_exactly():
  rng = np.random.default_rng(7)
  for steps in itertools.product([False, True], repeat=5):
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    d = _fixed_draws(rng, *steps)
    params = color_augmentation.ColorAugParams(
        float(d["brightness"]) if d["brightness_on"] else None, float(d["contrast"]) if d["contrast_on"] else None,
        float(d["saturation"]) if d["saturation_on"] else None, d["hue"] if d["hue_on"] else None, d["contrast_first"])
    np.testing.assert_array_equal(_tf_apply(image, d), color_augmentation.apply(image, params))


def test_draws_are_seeded_and_cover_their_ranges():
  draws = [{k: v.numpy() for k, v in tf_photometric.draws(tf.constant([s, 1], tf.int64)).items()} for s in range(400)]
  again = tf_photometric.draws(tf.constant([3, 1], tf.int64))
  assert all(draws[3][k] == again[k].numpy() for k in draws[3])
  for key in ("brightness_on", "contrast_on", "contrast_first", "saturation_on", "hue_on"):
    assert 0.4 < np.mean([d[key] for d in draws]) < 0.6
  hues = {int(d["hue"]) for d in draws}
  assert min(hues) == -18 and max(hues) == 17  # numpy's randint(-18, 18), as mmseg draws it.
  assert -32 <= min(d["brightness"] for d in draws) < -30 and 30 < max(d["brightness"] for d in draws) <= 32
  for key in ("contrast", "saturation"):
    assert 0.5 <= min(d[key] for d in draws) < 0.52 and 1.48 < max(d[key] for d in draws) <= 1.5


def test_distortion_is_seeded():
  image = tf.constant(np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8))
  outputs = [tf_photometric.photometric_distortion(image, tf.constant([s, 0], tf.int64)).numpy() for s in range(8)]
  same_draws = tf_photometric.draws(tf.constant([3, 0], tf.int64))
  np.testing.assert_array_equal(outputs[3], tf_photometric.apply(image, same_draws))
  assert sum(not np.array_equal(o, image.numpy()) for o in outputs) >= 6  # All four skipped: 1 in 16.
