"""detectron2's `ColorAugSSDTransform` (SSD's photometric distortion), which Mask2Former's semantic and panoptic
mappers apply after the crop (COLOR_AUG_SSD True).

Each step runs with probability 1/2: brightness (add U(-32, 32)); then either contrast, saturation, hue or
saturation, hue, contrast (a fair coin); contrast multiplies by U(0.5, 1.5); saturation multiplies the S channel
of 8-bit HSV by U(0.5, 1.5); hue adds an integer in [-18, 18] to the 8-bit H channel (0-179) modulo 180. Every
step returns uint8 as the released transform does: float32 arithmetic, clipped to [0, 255], truncated. The HSV
round trips are OpenCV's 8-bit conversions (`cv2.COLOR_BGR2HSV` / `COLOR_HSV2BGR`: H in [0, 180), fixed-point
division tables, float32 HSV -> RGB), written here in numpy so that no OpenCV is needed.
"""
from __future__ import annotations

import dataclasses

import numpy as np

BRIGHTNESS_DELTA = 32.0
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18
HSV_SHIFT = 12  # OpenCV's hsv_shift.
_I = np.arange(1, 256, dtype=np.float64)
# OpenCV's division tables (index 0 is 0): round(255 * 2^12 / v) and round(180 * 2^12 / (6 diff)).
S_DIV = np.concatenate([[0], np.rint((255 << HSV_SHIFT) / _I)]).astype(np.int64)
H_DIV = np.concatenate([[0], np.rint((180 << HSV_SHIFT) / (6.0 * _I))]).astype(np.int64)
# For each of the six hue sectors, which of (v, p, q, t) is the (b, g, r) channel, as OpenCV's table.
SECTORS = np.asarray([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])


@dataclasses.dataclass(frozen=True)
class ColorAugParams:
  """One draw of the transform; None = the step is skipped."""
  brightness: float | None
  contrast: float | None
  saturation: float | None
  hue: int | None
  contrast_first: bool


def draw(rng: np.random.Generator) -> ColorAugParams:
  """The transform's random choices, in the order the released transform draws them."""
  coin = lambda: bool(rng.integers(2))
  brightness = float(rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)) if coin() else None
  contrast_first = coin()
  draws = {}
  for step in (("contrast", "saturation", "hue") if contrast_first else ("saturation", "hue", "contrast")):
    if not coin():
      draws[step] = None
    elif step == "hue":
      draws[step] = int(rng.integers(-HUE_DELTA, HUE_DELTA + 1))
    else:
      draws[step] = float(rng.uniform(*(CONTRAST_RANGE if step == "contrast" else SATURATION_RANGE)))
  return ColorAugParams(brightness, draws["contrast"], draws["saturation"], draws["hue"], contrast_first)


def _affine(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
  return np.clip(x.astype(np.float32) * np.float32(alpha) + np.float32(beta), 0, 255).astype(np.uint8)


def rgb_to_hsv8(rgb: np.ndarray) -> np.ndarray:
  """uint8 RGB [..., 3] -> OpenCV's 8-bit HSV (H 0-180, S and V 0-255)."""
  r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
  v = np.maximum(np.maximum(r, g), b)
  diff = v - np.minimum(np.minimum(r, g), b)
  s = (diff * S_DIV[v] + (1 << (HSV_SHIFT - 1))) >> HSV_SHIFT
  h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
  h = (h * H_DIV[diff] + (1 << (HSV_SHIFT - 1))) >> HSV_SHIFT
  h = np.where(h < 0, h + 180, h)
  return np.stack([h, s, v], axis=-1).astype(np.uint8)


def hsv8_to_rgb(hsv: np.ndarray) -> np.ndarray:
  """OpenCV's 8-bit HSV [..., 3] -> uint8 RGB, in float32 as OpenCV computes it."""
  h = hsv[..., 0].astype(np.float32) * np.float32(6.0 / 180.0)
  s = hsv[..., 1].astype(np.float32) * np.float32(1.0 / 255.0)
  v = hsv[..., 2].astype(np.float32) * np.float32(1.0 / 255.0)
  h = np.mod(h, np.float32(6.0))
  sector = np.floor(h).astype(np.int64)
  frac = h - sector.astype(np.float32)
  outside = (sector < 0) | (sector >= 6)
  sector, frac = np.where(outside, 0, sector), np.where(outside, np.float32(0), frac)
  one = np.float32(1.0)
  table = np.stack([v, v * (one - s), v * (one - s * frac), v * (one - s * (one - frac))], axis=-1)
  bgr = np.take_along_axis(table, SECTORS[sector], axis=-1)
  bgr = np.where((s == 0)[..., None], v[..., None], bgr)
  return np.clip(np.rint(bgr[..., ::-1] * np.float32(255.0)), 0, 255).astype(np.uint8)


def _saturation(image: np.ndarray, alpha: float) -> np.ndarray:
  hsv = rgb_to_hsv8(image)
  hsv[..., 1] = _affine(hsv[..., 1], alpha)
  return hsv8_to_rgb(hsv)


def _hue(image: np.ndarray, delta: int) -> np.ndarray:
  hsv = rgb_to_hsv8(image)
  hsv[..., 0] = (hsv[..., 0].astype(np.int64) + delta) % 180
  return hsv8_to_rgb(hsv)


def apply(image: np.ndarray, params: ColorAugParams) -> np.ndarray:
  """uint8 RGB [H, W, 3] -> uint8 RGB [H, W, 3] under one draw."""
  if params.brightness is not None:
    image = _affine(image, beta=params.brightness)
  steps = {"contrast": lambda x: _affine(x, alpha=params.contrast) if params.contrast is not None else x,
           "saturation": lambda x: _saturation(x, params.saturation) if params.saturation is not None else x,
           "hue": lambda x: _hue(x, params.hue) if params.hue is not None else x}
  for step in (("contrast", "saturation", "hue") if params.contrast_first else ("saturation", "hue", "contrast")):
    image = steps[step](image)
  return image


def color_aug_ssd(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """One random draw of the transform applied to a uint8 RGB image."""
  return apply(image, draw(rng))
