"""Sliding-window inference (mmseg's "slide" mode) with one compiled program for any image size.

The image is covered by windows of `window` pixels every `stride` pixels (the last window of a row or column
flush with the border); each window's class scores are added into the image's canvas and divided by how many
windows covered each pixel. Images smaller than a window are padded to it, and windows are scored in batches
of fixed size, so every image reuses the same compiled scorer.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
  """Bilinear resize keeping the aspect ratio so that the shorter side is `short_side` pixels."""
  h, w = image.shape[:2]
  scale = short_side / min(h, w)
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def window_starts(length: int, window: int, stride: int) -> list[int]:
  """Start offsets along one axis: every `stride`, the last one flush with the end (mmseg's grid)."""
  if length <= window:
    return [0]
  count = -(-(length - window) // stride) + 1
  return [min(i * stride, length - window) for i in range(count)]


def slide(score_windows: Callable[[np.ndarray], np.ndarray], image: np.ndarray, num_classes: int, window: int,
          stride: int, batch_size: int) -> np.ndarray:
  """Class scores [C, H, W] of `image` [H, W, 3] uint8 by averaging overlapping windows.

  `score_windows(windows uint8 [batch_size, window, window, 3]) -> [batch_size, C, window, window]`.
  """
  h, w = image.shape[:2]
  padded = np.zeros((max(h, window), max(w, window), 3), image.dtype)
  padded[:h, :w] = image
  ph, pw = padded.shape[:2]
  boxes = [(y, x) for y in window_starts(ph, window, stride) for x in window_starts(pw, window, stride)]
  canvas = np.zeros((num_classes, ph, pw), np.float32)
  count = np.zeros((ph, pw), np.float32)
  for start in range(0, len(boxes), batch_size):
    chunk = boxes[start:start + batch_size]
    batch = np.zeros((batch_size, window, window, 3), image.dtype)
    for i, (y, x) in enumerate(chunk):
      batch[i] = padded[y:y + window, x:x + window]
    scores = np.asarray(score_windows(batch))
    for i, (y, x) in enumerate(chunk):
      canvas[:, y:y + window, x:x + window] += scores[i]
      count[y:y + window, x:x + window] += 1
  return (canvas / count)[:, :h, :w]
