"""Semantic segmentation metrics: confusion matrices (on device or host), mIoU as mmseg defines it, baselines.

The confusion matrix has ground truth on rows and predictions on columns. Per batch it is counted where the
predictions live (int32 inside jit, int64 for numpy inputs); `ConfusionAccumulator` sums batches into an int64
host total so a long evaluation cannot overflow.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(pred: Any, label: Any, num_classes: int, ignore_index: int = 255) -> Any:
  """Counts pixels per (ground truth, prediction) pair: int [C, C], rows = ground truth.

  Pixels whose label is `ignore_index` or outside [0, C) are not counted. Host inputs (numpy) give an int64
  numpy matrix and predictions outside [0, C) raise; if either input is a jax array (also inside jit) the
  result is an int32 jax matrix, and predictions outside [0, C) cannot raise there and are dropped.
  """
  if np.shape(pred) != np.shape(label):
    raise ValueError(f"confusion_matrix: prediction shape {np.shape(pred)} != label shape {np.shape(label)}; "
                     "resize the prediction to the label map first.")
  if num_classes < 1:
    raise ValueError(f"confusion_matrix: num_classes must be >= 1, got {num_classes}.")
  for name, x in (("prediction", pred), ("label", label)):
    x_dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype  # Tracers have a dtype but no values.
    if not np.issubdtype(x_dtype, np.integer):
      raise ValueError(f"confusion_matrix: the {name} must hold integer class ids, got dtype {x_dtype}; "
                       "take the argmax of the scores first.")
  on_host = not isinstance(pred, jax.Array) and not isinstance(label, jax.Array)
  xp, dtype = (np, np.int64) if on_host else (jnp, jnp.int32)
  pred = xp.asarray(pred).astype(dtype).ravel()
  label = xp.asarray(label).astype(dtype).ravel()
  if on_host and pred.size and (pred.min() < 0 or pred.max() >= num_classes):
    raise ValueError(f"confusion_matrix: predictions must be class ids in [0, {num_classes}), found values in "
                     f"[{pred.min()}, {pred.max()}]; pass argmax ids, not scores or dataset-specific ids.")
  valid = (label != ignore_index) & (label >= 0) & (label < num_classes) & (pred >= 0) & (pred < num_classes)
  # Uncounted pixels go to one extra bin that is cut off: no float weights, exact integer counts.
  index = xp.where(valid, label * num_classes + pred, num_classes * num_classes)
  if on_host:
    counts = np.bincount(index, minlength=num_classes * num_classes + 1)
  else:
    counts = jnp.bincount(index, length=num_classes * num_classes + 1)
  return counts[:-1].reshape(num_classes, num_classes).astype(dtype)


class ConfusionAccumulator:
  """Sums per-batch confusion matrices (device or host) into an int64 host total."""

  def __init__(self, num_classes: int):
    self.total = np.zeros((num_classes, num_classes), np.int64)

  def add(self, confusion: Any) -> None:
    confusion = np.asarray(jax.device_get(confusion))
    if confusion.shape != self.total.shape:
      raise ValueError(f"ConfusionAccumulator: got a {confusion.shape} matrix for a {self.total.shape} total; "
                       "count every batch with the same num_classes.")
    self.total += confusion.astype(np.int64)


def _as_confusion(confusion: Any) -> np.ndarray:
  confusion = np.asarray(jax.device_get(confusion), np.float64)
  if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
    raise ValueError(f"expected a square confusion matrix [C, C], got shape {confusion.shape}.")
  return confusion


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """Elementwise ratio that is NaN where the denominator is 0 (the class is absent), without warnings."""
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(denominator > 0, numerator / denominator, np.nan)


def _nanmean(values: np.ndarray) -> float:
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # All-NaN means no class was present: the mean is NaN.
    return float(np.nanmean(values))


def per_class_iou(confusion: Any) -> np.ndarray:
  """IoU_c = TP / (TP + FP + FN), float64 [C]; NaN for classes absent from both prediction and label."""
  c = _as_confusion(confusion)
  tp = np.diag(c)
  return _divide(tp, c.sum(0) + c.sum(1) - tp)


def miou(confusion: Any) -> tuple[float, np.ndarray]:
  """(mean IoU over classes present in prediction or label, per-class IoU float64 [C]), as mmseg computes it."""
  iou = per_class_iou(confusion)
  return _nanmean(iou), iou


def miou_over(confusion: Any, class_ids: Sequence[int]) -> float:
  """Mean IoU over a subset of classes (e.g. objects without background, or unseen classes).

  IoUs come from the full matrix, so confusions with classes outside the subset still count as errors.
  """
  iou = per_class_iou(confusion)
  ids = np.asarray(class_ids, np.int64)
  if ids.size == 0 or ids.min() < 0 or ids.max() >= len(iou):
    raise ValueError(f"miou_over: class_ids must be a non-empty subset of [0, {len(iou)}), got {list(class_ids)}.")
  return _nanmean(iou[ids])


def pixel_accuracy(confusion: Any) -> float:
  """Correct pixels / counted pixels."""
  c = _as_confusion(confusion)
  return float(_divide(np.trace(c), c.sum()))


def per_class_accuracy(confusion: Any) -> np.ndarray:
  """Recall per class, TP / label pixels, float64 [C]; NaN for classes absent from the label."""
  c = _as_confusion(confusion)
  return _divide(np.diag(c), c.sum(1))


def mean_accuracy(confusion: Any) -> float:
  """Mean per-class accuracy over classes present in the label (mmseg's mAcc)."""
  return _nanmean(per_class_accuracy(confusion))


def frequency_weighted_iou(confusion: Any) -> float:
  """Sum over classes of (label pixel share) * IoU; classes absent from the label weigh 0."""
  c = _as_confusion(confusion)
  frequency = _divide(c.sum(1), c.sum())
  return float(np.nansum(frequency * per_class_iou(c))) if c.sum() > 0 else float("nan")


def harmonic_mean(a: float, b: float) -> float:
  """2ab / (a + b), e.g. of seen and unseen mIoU; 0 when both are 0, NaN if either is NaN."""
  a, b = float(a), float(b)
  return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def summarize(confusion: Any, class_names: Sequence[str], exclude: Sequence[int | str] = ()) -> dict[str, Any]:
  """JSON-ready summary: miou (over classes not in `exclude`, given by id or name), fwiou, pixel and mean
  accuracy over all classes, and `per_class_iou` {name: IoU} for every class (NaN = absent)."""
  c = _as_confusion(confusion)
  names = list(class_names)
  if len(names) != len(c):
    raise ValueError(f"summarize: {len(names)} class names for a {len(c)}-class confusion matrix.")
  excluded = set()
  for item in exclude:
    if item not in names and item not in range(len(names)):
      raise ValueError(f"summarize: excluded class {item!r} is neither a class name in {names} nor an id in "
                       f"[0, {len(names)}).")
    excluded.add(names.index(item) if isinstance(item, str) else int(item))
  kept = [i for i in range(len(names)) if i not in excluded]
  iou = per_class_iou(c)
  return {"miou": miou_over(c, kept), "fwiou": frequency_weighted_iou(c), "pixel_accuracy": pixel_accuracy(c),
          "mean_accuracy": mean_accuracy(c), "excluded": [names[i] for i in sorted(excluded)],
          "num_pixels": int(c.sum()), "per_class_iou": {n: float(v) for n, v in zip(names, iou)}}


def uniform_random_prediction(labels_shape: Sequence[int], num_classes: int, rng: np.random.Generator) -> np.ndarray:
  """Chance baseline: every pixel an independent uniform class id, int32."""
  return rng.integers(0, num_classes, size=tuple(labels_shape), dtype=np.int32)


def constant_prediction(labels_shape: Sequence[int], class_id: int) -> np.ndarray:
  """Baseline that predicts one class (e.g. background) everywhere, int32."""
  return np.full(tuple(labels_shape), class_id, np.int32)
