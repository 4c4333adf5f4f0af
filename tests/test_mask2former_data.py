"""Mask2Former's training crops: detectron2's ColorAugSSDTransform against a float64 numpy transcription of the
released transform."""
import dataclasses

import numpy as np
import pytest

from data_pipelines import color_augmentation as color
from data_pipelines import segmentation_crops


# --- ColorAugSSDTransform -----------------------------------------------------------------------------------

def ref_convert(x, alpha=1.0, beta=0.0):
  return np.clip(x.astype(np.float64) * alpha + beta, 0, 255).astype(np.uint8)


def exact_bgr_to_hsv(bgr):
  """The textbook 8-bit BGR -> HSV in float64: V = max, S = 255 (V - min) / V, H = half the hue angle."""
  b, g, r = (bgr[..., i].astype(np.float64) for i in range(3))
  v = np.maximum(np.maximum(r, g), b)
  diff = v - np.minimum(np.minimum(r, g), b)
  s = np.where(v > 0, 255 * diff / np.maximum(v, 1), 0)
  safe = np.maximum(diff, 1)
  h = np.where(v == r, 60 * (g - b) / safe, np.where(v == g, 120 + 60 * (b - r) / safe, 240 + 60 * (r - g) / safe))
  h = np.where(diff == 0, 0, h)
  h = np.where(h < 0, h + 360, h) / 2
  return np.stack([np.floor(h + 0.5) % 180, np.floor(s + 0.5), v], -1).astype(np.uint8)


def ref_bgr_to_hsv(bgr):
  """cv2.cvtColor(COLOR_BGR2HSV) for uint8 as OpenCV computes it (RGB2HSV_b): divisions by V and 6 diff through
  tables rounded to 12 fractional bits, results rounded half up; in float64 here."""
  b, g, r = (bgr[..., i].astype(np.float64) for i in range(3))
  v = np.maximum(np.maximum(r, g), b)
  diff = v - np.minimum(np.minimum(r, g), b)
  s_table = np.where(v > 0, np.round(255 * 4096 / np.maximum(v, 1)), 0)
  h_table = np.where(diff > 0, np.round(180 * 4096 / (6 * np.maximum(diff, 1))), 0)
  s = np.floor((diff * s_table + 2048) / 4096)
  h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
  h = np.floor((h * h_table + 2048) / 4096)
  return np.stack([np.where(h < 0, h + 180, h), s, v], -1).astype(np.uint8)


def ref_hsv_to_bgr(hsv, ties=False):
  """cv2.cvtColor(COLOR_HSV2BGR) for uint8 (H in degrees / 2), float64; with `ties`, also where a channel lies
  within 1e-4 of a rounding tie (OpenCV computes in float32, so such a channel may round either way)."""
  h = hsv[..., 0].astype(np.float64) * 2 / 60
  s, v = hsv[..., 1] / 255.0, hsv[..., 2] / 255.0
  sector = np.floor(h).astype(int) % 6
  f = h - np.floor(h)
  p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
  rgb = np.select([sector[..., None] == k for k in range(6)],
                  [np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
  scaled = rgb[..., ::-1] * 255
  out = np.clip(np.floor(scaled + 0.5), 0, 255).astype(np.uint8)
  return (out, np.abs(scaled - np.floor(scaled) - 0.5) < 1e-4) if ties else out


def ref_color_aug(rgb, params):
  """ColorAugSSDTransform.apply_image with img_format 'RGB' and the draws given."""
  img = rgb[..., ::-1]
  if params.brightness is not None:
    img = ref_convert(img, beta=params.brightness)

  def saturation(x):
    if params.saturation is None:
      return x
    hsv = ref_bgr_to_hsv(x)
    hsv[..., 1] = ref_convert(hsv[..., 1], alpha=params.saturation)
    return ref_hsv_to_bgr(hsv)

  def hue(x):
    if params.hue is None:
      return x
    hsv = ref_bgr_to_hsv(x)
    hsv[..., 0] = (hsv[..., 0].astype(int) + params.hue) % 180
    return ref_hsv_to_bgr(hsv)

  contrast = lambda x: x if params.contrast is None else ref_convert(x, alpha=params.contrast)
  for step in ((contrast, saturation, hue) if params.contrast_first else (saturation, hue, contrast)):
    img = step(img)
  return img[..., ::-1]


@pytest.fixture(scope="module")
def colours():
  return np.random.default_rng(0).integers(0, 256, size=(256, 256, 3), dtype=np.uint8)


def _agree(ours, ref, max_off=1, max_fraction=0.01):
  diff = np.abs(ours.astype(int) - ref.astype(int))
  assert diff.max() <= max_off and (diff > 0).mean() <= max_fraction, (diff.max(), (diff > 0).mean())


def test_hsv_conversions_equal_the_float64_transcription(colours):
  named = np.asarray([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 0, 0], [128, 128, 128]]], np.uint8)
  np.testing.assert_array_equal(color.rgb_to_hsv8(named)[0],
                                [[0, 255, 255], [60, 255, 255], [120, 255, 255], [30, 255, 255], [0, 0, 0],
                                 [0, 0, 128]])
  hsv = color.rgb_to_hsv8(colours)
  np.testing.assert_array_equal(hsv, ref_bgr_to_hsv(colours[..., ::-1]))
  _agree(hsv, exact_bgr_to_hsv(colours[..., ::-1]), max_fraction=0.02)  # OpenCV's tables are off by 1 at most.
  hsv_grid = np.stack(np.meshgrid(np.arange(180), np.arange(0, 256, 5), np.arange(0, 256, 5), indexing="ij"), -1)
  hsv_grid = hsv_grid.reshape(180, -1, 3).astype(np.uint8)
  ours = color.hsv8_to_rgb(hsv_grid)
  ref, ties = ref_hsv_to_bgr(hsv_grid, ties=True)
  ref, ties = ref[..., ::-1], ties[..., ::-1]
  np.testing.assert_array_equal(ours[~ties], ref[~ties])
  assert np.abs(ours[ties].astype(int) - ref[ties]).max() <= 1 and ties.mean() < 0.01


@pytest.mark.parametrize("params", [
    color.ColorAugParams(brightness=-20.7, contrast=None, saturation=None, hue=None, contrast_first=True),
    color.ColorAugParams(brightness=None, contrast=1.37, saturation=None, hue=None, contrast_first=False),
    color.ColorAugParams(brightness=None, contrast=None, saturation=0.61, hue=None, contrast_first=True),
    color.ColorAugParams(brightness=None, contrast=None, saturation=None, hue=-17, contrast_first=True),
    color.ColorAugParams(brightness=None, contrast=None, saturation=None, hue=18, contrast_first=True),
    color.ColorAugParams(brightness=25.2, contrast=0.55, saturation=1.42, hue=9, contrast_first=True),
    color.ColorAugParams(brightness=25.2, contrast=0.55, saturation=1.42, hue=9, contrast_first=False),
])
def test_color_aug_equals_the_released_transform(colours, params):
  ours = color.apply(colours, params)
  assert ours.dtype == np.uint8 and ours.shape == colours.shape
  _agree(ours, ref_color_aug(colours, params), max_off=2, max_fraction=0.01)
  if params.hue is None and params.saturation is None:  # Affine steps alone: float32 vs float64 truncation.
    _agree(ours, ref_color_aug(colours, params), max_off=1, max_fraction=0.001)


def test_color_aug_orders_matter_and_draws_cover_the_ranges(colours):
  a = color.ColorAugParams(None, 1.4, 1.4, 10, True)
  assert not np.array_equal(color.apply(colours, a), color.apply(colours, color.ColorAugParams(None, 1.4, 1.4, 10,
                                                                                                False)))
  draws = [color.draw(np.random.default_rng(i)) for i in range(2000)]
  for name, low, high in (("brightness", -32, 32), ("contrast", 0.5, 1.5), ("saturation", 0.5, 1.5),
                          ("hue", -18, 18)):
    values = [getattr(d, name) for d in draws if getattr(d, name) is not None]
    assert 0.45 < len(values) / len(draws) < 0.55, name  # Each step runs half the time.
    assert low <= min(values) and max(values) <= high, name
  hues = {d.hue for d in draws if d.hue is not None}
  assert hues == set(range(-18, 19)) and all(isinstance(h, int) for h in hues)
  assert 0.45 < np.mean([d.contrast_first for d in draws]) < 0.55


def test_crops_get_the_color_aug_only_when_asked():
  image = np.random.default_rng(1).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
  label = np.zeros((40, 50), np.int32)
  spec = segmentation_crops.CropSpec(crop_size=32, short_sides=(40,), max_size=0, cat_max_ratio=1.0)
  plain = [segmentation_crops.augment(image, label, spec, np.random.default_rng(s))[0] for s in range(8)]
  jitter = dataclasses.replace(spec, color_aug=True)
  jittered = [segmentation_crops.augment(image, label, jitter, np.random.default_rng(s))[0] for s in range(8)]
  # The crop's pixel set is kept by plain crops; colour jitter changes it in most draws.
  changed = [not np.array_equal(np.sort(p.reshape(-1)), np.sort(j.reshape(-1))) for p, j in zip(plain, jittered)]
  assert sum(changed) >= 4
