"""Evaluation metrics: semantic (confusion matrices, mIoU as mmseg defines it, chance baselines) and panoptic
(PQ / SQ / RQ as panopticapi computes them)."""
from ovseg_jax.eval.metrics.panoptic import (PanopticQualityAccumulator, panoptic_quality, pq_over,
                                             seen_unseen_pq)
from ovseg_jax.eval.metrics.semantic import (ConfusionAccumulator, confusion_matrix, constant_prediction,
                                             frequency_weighted_iou, harmonic_mean, mean_accuracy, miou, miou_over,
                                             per_class_accuracy, per_class_iou, pixel_accuracy, summarize,
                                             uniform_random_prediction)

__all__ = ["ConfusionAccumulator", "PanopticQualityAccumulator", "confusion_matrix", "constant_prediction",
           "frequency_weighted_iou", "harmonic_mean", "mean_accuracy", "miou", "miou_over", "panoptic_quality",
           "per_class_accuracy", "per_class_iou", "pixel_accuracy", "pq_over", "seen_unseen_pq", "summarize",
           "uniform_random_prediction"]
