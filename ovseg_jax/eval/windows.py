"""Sliding-window inference (mmseg's "slide" mode) with one compiled program for any image size.

An image is covered by windows of `window` pixels every `stride` pixels (the last window of a row or column
flush with the border); each window's class scores are added into the image's canvas and divided by how many
windows covered each pixel. Images smaller than a window are padded to it, and windows (of one or several
images) are scored in batches of fixed size, so every image reuses the same compiled scorer. As mmseg does, the
class scores are resized (bilinearly) to the label's size before the argmax; labels are never resized.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from PIL import Image

from ovseg_jax.eval.protocol import Protocol, decide_labels
from ovseg_jax.models.resize import linear_resize_matrix
from ovseg_jax.train import sharding


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
  """Bilinear resize keeping the aspect ratio so that the shorter side is `short_side` pixels."""
  h, w = image.shape[:2]
  if min(h, w) == short_side:
    return image
  scale = short_side / min(h, w)
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def resize_scores(scores: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """[C, h, w] -> [C, H, W] float32 as mmseg resizes logits to the label (bilinear, align_corners=False, no
  antialiasing). The weights are non-negative and sum to one, so scores in [0, 1] stay there."""
  if scores.shape[1:] == tuple(hw):
    return scores
  rows = linear_resize_matrix(scores.shape[1], hw[0]).astype(np.float32)
  cols = linear_resize_matrix(scores.shape[2], hw[1]).astype(np.float32)
  return (rows @ scores.astype(np.float32)) @ cols.T


def window_starts(length: int, window: int, stride: int) -> list[int]:
  """Start offsets along one axis: every `stride`, the last one flush with the end (mmseg's grid)."""
  if length <= window:
    return [0]
  count = -(-(length - window) // stride) + 1
  return [min(i * stride, length - window) for i in range(count)]


def slide(score_windows: Callable[[np.ndarray], np.ndarray], images: Sequence[np.ndarray], num_classes: int,
          window: int, stride: int, batch_size: int) -> list[np.ndarray]:
  """Class scores [C, H, W] of each image [H, W, 3] uint8 by averaging overlapping windows; the windows of all
  `images` share batches.

  `score_windows(windows uint8 [batch_size, window, window, 3]) -> [batch_size, C, window, window]`.
  """
  padded, boxes = [], []
  for n, image in enumerate(images):
    h, w = image.shape[:2]
    canvas = np.zeros((max(h, window), max(w, window), 3), image.dtype)
    canvas[:h, :w] = image
    padded.append(canvas)
    boxes += [(n, y, x) for y in window_starts(canvas.shape[0], window, stride)
              for x in window_starts(canvas.shape[1], window, stride)]
  sums = [np.zeros((num_classes, *p.shape[:2]), np.float32) for p in padded]
  counts = [np.zeros(p.shape[:2], np.float32) for p in padded]
  for start in range(0, len(boxes), batch_size):
    chunk = boxes[start:start + batch_size]
    batch = np.zeros((batch_size, window, window, 3), padded[0].dtype)
    for i, (n, y, x) in enumerate(chunk):
      batch[i] = padded[n][y:y + window, x:x + window]
    scores = np.asarray(score_windows(batch))
    for i, (n, y, x) in enumerate(chunk):
      sums[n][:, y:y + window, x:x + window] += scores[i]
      counts[n][y:y + window, x:x + window] += 1
  return [(s / c)[:, :image.shape[0], :image.shape[1]] for s, c, image in zip(sums, counts, images)]


class WindowPredictor:
  """Scores images of any size by sliding windows and decides their labels by a protocol.

  `score_windows(*constants, windows uint8 [batch, window, window, 3]) -> [batch, len(class_ids), window,
  window]`; the constants (params, text embeddings) are replicated. Windows are split over every local device
  when the window batch divides evenly (one process: evaluation jobs run per host on their own images).
  `details` are entries for the results rows (what a classifier stands for, which classes it counts as seen)."""

  def __init__(self, score_windows: Callable[..., jax.Array], constants: tuple, class_ids: list[int],
               background_id: int | None, protocol: Protocol, details: dict[str, Any] | None = None):
    self.protocol, self.background_id, self.class_ids = protocol, background_id, class_ids
    self.details = dict(details or {})
    devices = jax.local_devices()
    self.mesh = sharding.make_mesh((("data", len(devices)),), devices) if protocol.batch_size % len(devices) == 0 \
        else sharding.make_mesh((("data", 1),), devices[:1])
    constants = jax.device_put(constants, sharding.replicated(self.mesh))
    windows_sharding = sharding.batch_sharding(self.mesh)
    self._score = lambda windows: np.asarray(score_windows(*constants, jax.device_put(windows, windows_sharding)))

  def _resized(self, image: np.ndarray) -> np.ndarray:
    return resize_short_side(image, self.protocol.short_side) if self.protocol.short_side else image

  def scores(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """[len(class_ids), h, w] class scores of each image at the protocol's resolution."""
    p = self.protocol
    return slide(self._score, [self._resized(x) for x in images], len(self.class_ids), p.window, p.stride,
                 p.batch_size)

  def labels(self, scores: np.ndarray, threshold: float, hw: tuple[int, int]) -> np.ndarray:
    """Dataset labels [H, W] from one image's scores, resized to size `hw` before the decision."""
    return decide_labels(resize_scores(scores, hw), self.class_ids, self.background_id, self.protocol, threshold)

  def predict(self, image: np.ndarray, threshold: float) -> np.ndarray:
    """Dataset labels [H, W] at the image's own size."""
    return self.labels(self.scores([image])[0], threshold, image.shape[:2])

  def labels_with_confidence(self, images: Sequence[np.ndarray], threshold: float
                             ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each image's labels [H, W] and best class score [H, W] in [0, 1] at its own size: pseudo labels."""
    labels, confidence = [], []
    for image, scores in zip(images, self.scores(images)):
      resized = resize_scores(scores, image.shape[:2])
      confidence.append(resized.max(axis=0))
      labels.append(decide_labels(resized, self.class_ids, self.background_id, self.protocol, threshold))
    return labels, confidence
