"""Segmentation metrics against independent references: pixel loops, boolean masks and a hand-worked example."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovseg_jax.eval import metrics


def _loop_confusion(pred, label, num_classes, ignore_index=255):
  """Reference: one pixel at a time, counting only labels that are real classes and not ignored."""
  ref = np.zeros((num_classes, num_classes), np.int64)
  for p, l in zip(pred.ravel().tolist(), label.ravel().tolist()):
    if l != ignore_index and 0 <= l < num_classes:
      ref[l, p] += 1
  return ref


def _random_maps(rng, num_classes, shape=(2, 9, 11), dtype=np.int32):
  pred = rng.integers(0, num_classes, shape).astype(np.int32)
  label = rng.integers(0, num_classes, shape)
  label[rng.random(shape) < 0.2] = 255  # Ignored.
  label[rng.random(shape) < 0.05] = num_classes + 2  # Not a class: ignored too.
  return pred, label.astype(dtype)


@pytest.mark.parametrize("num_classes,dtype", [(5, np.int32), (70, np.uint8)])  # uint8: label * C must not wrap.
def test_confusion_matrix_matches_pixel_loop_on_host_and_in_jit(num_classes, dtype):
  pred, label = _random_maps(np.random.default_rng(num_classes), num_classes, dtype=dtype)
  ref = _loop_confusion(pred, label, num_classes)
  host = metrics.confusion_matrix(pred, label, num_classes)
  assert isinstance(host, np.ndarray) and host.dtype == np.int64
  np.testing.assert_array_equal(host, ref)
  jitted = jax.jit(functools.partial(metrics.confusion_matrix, num_classes=num_classes))
  device = jitted(jnp.asarray(pred), jnp.asarray(label))
  assert device.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(device), ref)


def test_confusion_matrix_custom_ignore_index_and_bad_input():
  pred, label = _random_maps(np.random.default_rng(1), 4)
  np.testing.assert_array_equal(metrics.confusion_matrix(pred, label, 4, ignore_index=2),
                                _loop_confusion(pred, label, 4, ignore_index=2))
  with pytest.raises(ValueError, match="predictions must be class ids"):
    metrics.confusion_matrix(np.full_like(pred, 4), label, 4)
  with pytest.raises(ValueError, match="shape"):
    metrics.confusion_matrix(pred[:, :3], label, 4)
  with pytest.raises(ValueError, match="integer class ids"):
    metrics.confusion_matrix(pred.astype(np.float32), label, 4)


def test_accumulator_sums_device_batches_in_int64():
  rng = np.random.default_rng(2)
  batches = [_random_maps(rng, 6) for _ in range(3)]
  acc = metrics.ConfusionAccumulator(6)
  for pred, label in batches:
    acc.add(metrics.confusion_matrix(jnp.asarray(pred), jnp.asarray(label), 6))
  whole = metrics.confusion_matrix(np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]), 6)
  np.testing.assert_array_equal(acc.total, whole)
  # Two int32-max device counts must not wrap on the host.
  big = metrics.ConfusionAccumulator(2)
  for _ in range(2):
    big.add(jnp.full((2, 2), np.iinfo(np.int32).max, jnp.int32))
  assert big.total.dtype == np.int64 and big.total[0, 0] == 2 * (2**31 - 1)
  with pytest.raises(ValueError, match="num_classes"):
    big.add(np.zeros((3, 3), np.int64))


def test_hand_worked_example():
  # 4 classes. Pixels as (label, pred):
  #   (0,0) (0,0) (0,0) (0,1) (1,1) (1,1) (1,2) (255,2)
  # class 0: TP 3, FN 1 (pixel 3), FP 0             -> IoU 3/4 = 0.75, accuracy 3/4
  # class 1: TP 2, FP 1 (pixel 3), FN 1 (pixel 6)   -> IoU 2/4 = 0.5,  accuracy 2/3
  # class 2: only predicted, TP 0, FP 1 (pixel 6; pixel 7 is ignored) -> IoU 0/1 = 0, accuracy NaN (no label)
  # class 3: absent from prediction and label -> IoU NaN, left out of the mean
  # mIoU = (0.75 + 0.5 + 0) / 3; pixel accuracy = 5 correct / 7 counted; mAcc = (3/4 + 2/3) / 2;
  # fwIoU = 4/7 * 0.75 + 3/7 * 0.5 (label shares of classes 0 and 1).
  label = np.array([0, 0, 0, 0, 1, 1, 1, 255])
  pred = np.array([0, 0, 0, 1, 1, 1, 2, 2])
  conf = metrics.confusion_matrix(pred, label, 4)
  miou, iou = metrics.miou(conf)
  np.testing.assert_allclose(iou[:3], [0.75, 0.5, 0.0])
  assert np.isnan(iou[3]) and iou.dtype == np.float64
  assert miou == pytest.approx(1.25 / 3)
  assert metrics.pixel_accuracy(conf) == pytest.approx(5 / 7)
  assert metrics.mean_accuracy(conf) == pytest.approx((3 / 4 + 2 / 3) / 2)
  assert metrics.frequency_weighted_iou(conf) == pytest.approx(4 / 7 * 0.75 + 3 / 7 * 0.5)
  assert metrics.miou_over(conf, [0, 1]) == pytest.approx(0.625)
  assert np.isnan(metrics.miou_over(conf, [3]))
  summary = metrics.summarize(conf, ["a", "b", "c", "d"], exclude=["c"])
  assert summary["miou"] == pytest.approx(0.625) and summary["excluded"] == ["c"]
  assert summary["per_class_iou"]["a"] == 0.75 and np.isnan(summary["per_class_iou"]["d"])
  assert summary["num_pixels"] == 7
  assert metrics.summarize(conf, "abcd", exclude=[2])["miou"] == pytest.approx(0.625)
  with pytest.raises(ValueError, match="class names"):
    metrics.summarize(conf, ["a", "b"])
  with pytest.raises(ValueError, match="neither"):
    metrics.summarize(conf, "abcd", exclude=["z"])


def test_metrics_match_boolean_mask_formulas_on_random_maps():
  rng = np.random.default_rng(3)
  num_classes = 6  # Labels use 0..3, predictions 0..4: class 4 is prediction-only, class 5 absent.
  label = rng.integers(0, 4, (3, 17, 13))
  label[rng.random(label.shape) < 0.1] = 255
  pred = rng.integers(0, 5, label.shape)
  valid = label != 255
  inter = np.array([np.sum((pred == c) & (label == c) & valid) for c in range(num_classes)], np.float64)
  union = np.array([np.sum(((pred == c) | (label == c)) & valid) for c in range(num_classes)], np.float64)
  count = np.array([np.sum(label == c) for c in range(num_classes)], np.float64)
  present = union > 0
  iou_ref = np.full(num_classes, np.nan)
  iou_ref[present] = inter[present] / union[present]
  conf = metrics.confusion_matrix(pred, label, num_classes)
  miou, iou = metrics.miou(conf)
  np.testing.assert_allclose(iou, iou_ref)
  assert miou == pytest.approx(iou_ref[present].mean())
  assert metrics.pixel_accuracy(conf) == pytest.approx(np.mean(pred[valid] == label[valid]))
  labelled = count > 0
  assert metrics.mean_accuracy(conf) == pytest.approx(np.mean(inter[labelled] / count[labelled]))
  assert metrics.frequency_weighted_iou(conf) == pytest.approx(
      np.sum(count[labelled] / valid.sum() * iou_ref[labelled]))


def test_harmonic_mean():
  assert metrics.harmonic_mean(0.5, 0.25) == pytest.approx(1 / 3)
  assert metrics.harmonic_mean(0.0, 0.0) == 0.0
  assert np.isnan(metrics.harmonic_mean(float("nan"), 0.3))


def test_baselines():
  rng = np.random.default_rng(4)
  random = metrics.uniform_random_prediction((2, 40, 40), 5, rng)
  assert random.shape == (2, 40, 40) and random.dtype == np.int32
  assert set(np.unique(random).tolist()) == set(range(5))
  constant = metrics.constant_prediction((3, 4), 2)
  assert constant.dtype == np.int32 and (constant == 2).all() and constant.shape == (3, 4)
