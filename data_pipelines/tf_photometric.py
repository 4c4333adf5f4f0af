"""mmseg's PhotoMetricDistortion in TensorFlow ops, for tf.data: the arithmetic of `data_pipelines.color_augmentation`
(which Mask2Former's Python path uses) on uint8 images, with stateless draws.

Each step runs with probability 1/2: brightness adds U(-32, 32); contrast multiplies by U(0.5, 1.5), before the HSV
steps or after them (a fair coin); saturation multiplies the S channel of OpenCV's 8-bit HSV by U(0.5, 1.5); hue adds
an integer of [-18, 18) to its H channel (0-179) modulo 180 (numpy's `randint(-18, 18)`, as mmseg draws it). Every
step returns uint8 as mmseg's does: float32 arithmetic, clipped to [0, 255], truncated.
"""
from __future__ import annotations

import tensorflow as tf

from data_pipelines import color_augmentation as ca

_S_DIV, _H_DIV = tf.constant(ca.S_DIV, tf.int32), tf.constant(ca.H_DIV, tf.int32)
_SECTORS = tf.constant(ca.SECTORS, tf.int32)
_HALF = 1 << (ca.HSV_SHIFT - 1)


def draws(seed: tf.Tensor) -> dict[str, tf.Tensor]:
  """One example's random choices from its [2] seed: which steps run ('..._on'), their amounts, the order."""
  fold = lambda draw: tf.random.experimental.stateless_fold_in(seed, draw)
  uniform = lambda draw, low=0.0, high=1.0: tf.random.stateless_uniform([], fold(draw), low, high, tf.float32)
  return {"brightness_on": uniform(0) < 0.5, "brightness": uniform(1, -ca.BRIGHTNESS_DELTA, ca.BRIGHTNESS_DELTA),
          "contrast_on": uniform(2) < 0.5, "contrast": uniform(3, *ca.CONTRAST_RANGE),
          "contrast_first": uniform(4) < 0.5,
          "saturation_on": uniform(5) < 0.5, "saturation": uniform(6, *ca.SATURATION_RANGE),
          "hue_on": uniform(7) < 0.5,
          "hue": tf.random.stateless_uniform([], fold(8), -ca.HUE_DELTA, ca.HUE_DELTA, tf.int32)}


def _convert(x: tf.Tensor, alpha: tf.Tensor | float = 1.0, beta: tf.Tensor | float = 0.0) -> tf.Tensor:
  """uint8 -> uint8: x * alpha + beta in float32, clipped to [0, 255], truncated."""
  return tf.cast(tf.clip_by_value(tf.cast(x, tf.float32) * alpha + beta, 0.0, 255.0), tf.uint8)


def rgb_to_hsv8(rgb: tf.Tensor) -> tf.Tensor:
  """uint8 RGB [..., 3] -> int32 OpenCV 8-bit HSV (H 0-179, S and V 0-255), by its fixed-point tables."""
  r, g, b = tf.unstack(tf.cast(rgb, tf.int32), axis=-1)
  v = tf.maximum(tf.maximum(r, g), b)
  diff = v - tf.minimum(tf.minimum(r, g), b)
  s = tf.bitwise.right_shift(diff * tf.gather(_S_DIV, v) + _HALF, ca.HSV_SHIFT)
  h = tf.where(v == r, g - b, tf.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
  h = tf.bitwise.right_shift(h * tf.gather(_H_DIV, diff) + _HALF, ca.HSV_SHIFT)
  return tf.stack([tf.where(h < 0, h + 180, h), s, v], axis=-1)


def hsv8_to_rgb(hsv: tf.Tensor) -> tf.Tensor:
  """OpenCV 8-bit HSV [..., 3] -> uint8 RGB, in float32 as OpenCV computes it."""
  h, s, v = tf.unstack(tf.cast(hsv, tf.float32), axis=-1)
  h, s, v = tf.math.floormod(h * (6.0 / 180.0), 6.0), s * (1.0 / 255.0), v * (1.0 / 255.0)
  sector = tf.cast(tf.floor(h), tf.int32)
  frac = h - tf.cast(sector, tf.float32)
  outside = (sector < 0) | (sector >= 6)
  sector, frac = tf.where(outside, 0, sector), tf.where(outside, 0.0, frac)
  table = tf.stack([v, v * (1.0 - s), v * (1.0 - s * frac), v * (1.0 - s * (1.0 - frac))], axis=-1)
  bgr = tf.gather(table, tf.gather(_SECTORS, sector), batch_dims=len(table.shape) - 1)
  bgr = tf.where((s == 0)[..., None], v[..., None], bgr)
  return tf.cast(tf.clip_by_value(tf.round(bgr[..., ::-1] * 255.0), 0.0, 255.0), tf.uint8)


def _with_hsv(image: tf.Tensor, change) -> tf.Tensor:
  h, s, v = tf.unstack(rgb_to_hsv8(image), axis=-1)
  return hsv8_to_rgb(tf.stack(change(h, s, v), axis=-1))


def apply(image: tf.Tensor, d: dict[str, tf.Tensor]) -> tf.Tensor:
  """uint8 RGB [H, W, 3] under the choices `d` (as `draws` gives them)."""
  def step(on, fn, x):
    return tf.cond(on, lambda: fn(x), lambda: x)
  contrast = lambda x: step(d["contrast_on"], lambda y: _convert(y, alpha=d["contrast"]), x)
  x = step(d["brightness_on"], lambda y: _convert(y, beta=d["brightness"]), image)
  x = step(d["contrast_first"], contrast, x)
  x = step(d["saturation_on"], lambda y: _with_hsv(
      y, lambda h, s, v: (h, tf.cast(_convert(s, alpha=d["saturation"]), tf.int32), v)), x)
  x = step(d["hue_on"], lambda y: _with_hsv(y, lambda h, s, v: (tf.math.floormod(h + d["hue"], 180), s, v)), x)
  return step(tf.logical_not(d["contrast_first"]), contrast, x)


def photometric_distortion(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """One random draw (from the example's [2] seed) of the distortion applied to a uint8 RGB image."""
  return apply(image, draws(seed))
