"""Panoptic quality and MaskFormer panoptic inference against plain-Python transcriptions and hand-made cases."""
import collections

import numpy as np
import scipy.special
import pytest

from ovseg_jax.eval import panoptic_inference
from ovseg_jax.eval.metrics import panoptic

CATEGORIES = {1: {"isthing": 1}, 3: {"isthing": 1}, 7: {"isthing": 0}, 8: {"isthing": 1}, 12: {"isthing": 0},
              20: {"isthing": 0}}


def _reference_image(prediction, ground_truth, stats, branches):
  """pq_compute's per-image loop, one dict entry at a time; `stats[category] = [iou, tp, fp, fn]`."""
  pred_map, pred_segments = prediction
  gt_map, gt_segments = ground_truth
  gt_segms = {s["id"]: dict(s, iscrowd=s.get("iscrowd", 0)) for s in gt_segments}
  pred_segms = {s["id"]: dict(s) for s in pred_segments}
  overlap = collections.Counter(zip(gt_map.ravel().tolist(), pred_map.ravel().tolist()))
  pred_area = collections.Counter(pred_map.ravel().tolist())
  gt_area = collections.Counter(gt_map.ravel().tolist())
  gt_matched, pred_matched = set(), set()
  for (gt_id, pred_id), intersection in overlap.items():
    if gt_id not in gt_segms or pred_id not in pred_segms:
      continue
    gt, pred = gt_segms[gt_id], pred_segms[pred_id]
    if gt["iscrowd"] == 1 or gt["category_id"] != pred["category_id"]:
      continue
    union = pred_area[pred_id] + gt_area[gt_id] - intersection - overlap[(0, pred_id)]
    if intersection / union > 0.5:
      stats[gt["category_id"]][0] += intersection / union
      stats[gt["category_id"]][1] += 1
      gt_matched.add(gt_id)
      pred_matched.add(pred_id)
  crowd_of_category = {}
  for gt_id, gt in gt_segms.items():
    if gt_id in gt_matched:
      continue
    if gt["iscrowd"] == 1:
      crowd_of_category[gt["category_id"]] = gt_id
      continue
    stats[gt["category_id"]][3] += 1
  for pred_id, pred in pred_segms.items():
    if pred_id in pred_matched:
      continue
    ignored = overlap[(0, pred_id)]
    if pred["category_id"] in crowd_of_category:
      crowd = overlap[(crowd_of_category[pred["category_id"]], pred_id)]
      branches["crowd"] += ignored / pred_area[pred_id] <= 0.5 < (ignored + crowd) / pred_area[pred_id]
      ignored += crowd
    if ignored / pred_area[pred_id] > 0.5:
      branches["ignored"] += 1
      continue
    stats[pred["category_id"]][2] += 1


def _reference_average(stats, categories, isthing):
  pq, sq, rq, n, per_class = 0, 0, 0, 0, {}
  for label, info in categories.items():
    if isthing is not None and (info["isthing"] == 1) != isthing:
      continue
    iou, tp, fp, fn = stats[label]
    if tp + fp + fn == 0:
      per_class[label] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
      continue
    n += 1
    per_class[label] = {"pq": iou / (tp + 0.5 * fp + 0.5 * fn), "sq": iou / tp if tp else 0,
                        "rq": tp / (tp + 0.5 * fp + 0.5 * fn)}
    pq, sq, rq = pq + per_class[label]["pq"], sq + per_class[label]["sq"], rq + per_class[label]["rq"]
  return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def _reference_stats(predictions, ground_truths, branches=None):
  stats = collections.defaultdict(lambda: [0.0, 0, 0, 0])
  for prediction, ground_truth in zip(predictions, ground_truths):
    _reference_image(prediction, ground_truth, stats, collections.Counter() if branches is None else branches)
  return stats


def _reference(predictions, ground_truths, categories, branches=None):
  stats = _reference_stats(predictions, ground_truths, branches)
  result = {}
  for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
    result[name], per_class = _reference_average(stats, categories, isthing)
    if name == "All":
      result["per_class"] = per_class
  return result


def _assert_results_equal(result, expected):
  assert result.keys() == expected.keys()
  for name in ("All", "Things", "Stuff"):
    assert result[name]["n"] == expected[name]["n"], name
    for key in ("pq", "sq", "rq"):
      assert result[name][key] == pytest.approx(expected[name][key], rel=1e-12, abs=1e-15), (name, key)
  assert result["per_class"].keys() == expected["per_class"].keys()
  for c, quality in expected["per_class"].items():
    for key in ("pq", "sq", "rq"):
      assert result["per_class"][c][key] == pytest.approx(quality[key], rel=1e-12, abs=1e-15), (c, key)


def _random_image(rng, shape=(18, 22)):
  """Ground truth of rectangles (some crowd, some VOID, some unlisted, one unknown category) and a perturbed
  prediction with merges, new segments, VOID patches and changed classes."""
  gt = np.zeros(shape, np.int32)
  gt_ids = rng.choice((1 << 24) - 1, size=8, replace=False) + 1
  for gt_id in gt_ids:
    y, x = rng.integers(0, shape[0] - 3), rng.integers(0, shape[1] - 3)
    gt[y:y + rng.integers(3, 12), x:x + rng.integers(3, 12)] = gt_id
  gt[rng.random(shape) < 0.05] = 0
  category_ids = [*CATEGORIES, 99]  # 99: a ground truth category outside `categories`.
  gt_category = {int(i): int(rng.choice(category_ids, p=[0.17] * 5 + [0.12, 0.03])) for i in gt_ids}
  gt_segments = [{"id": i, "category_id": c, "iscrowd": int(rng.random() < 0.2)} for i, c in gt_category.items()
                 if rng.random() < (0.95 if (gt == i).any() else 0.5)]  # Unlisted ids; listed ones without pixels.

  pred = np.roll(gt, rng.integers(-1, 2, size=2), axis=(0, 1))
  for _ in range(rng.integers(0, 4)):  # New segments, reused ids (merges) and VOID patches.
    y, x = rng.integers(0, shape[0] - 2), rng.integers(0, shape[1] - 2)
    fill = rng.choice([rng.integers(1, 1 << 24), rng.choice(gt_ids), 0])
    pred[y:y + rng.integers(2, 9), x:x + rng.integers(2, 9)] = fill
  pred_ids = [int(i) for i in np.unique(pred) if i != 0]
  renamed = dict(zip(pred_ids, (rng.choice(1 << 20, size=len(pred_ids), replace=False) + 1).tolist()))
  pred = np.vectorize(lambda i: renamed.get(i, 0))(pred).astype(np.int32)
  pred_segments = [{"id": renamed[i], "category_id": gt_category[i] if i in gt_category and gt_category[i] in
                    CATEGORIES and rng.random() < 0.9 else int(rng.choice(list(CATEGORIES)))} for i in pred_ids]
  rng.shuffle(pred_segments)
  return (pred, pred_segments), (gt, gt_segments)


def test_random_images_match_pq_compute_transcription_and_stream_per_image():
  rng = np.random.default_rng(0)
  images = [_random_image(rng) for _ in range(60)]
  predictions, ground_truths = [p for p, _ in images], [g for _, g in images]
  branches = collections.Counter()
  expected = _reference(predictions, ground_truths, CATEGORIES, branches)
  assert branches["crowd"] > 0 and branches["ignored"] > branches["crowd"]  # Both FP exemptions happen.
  assert 0.2 < expected["All"]["pq"] < 0.9 and expected["Things"]["n"] == 3 and expected["Stuff"]["n"] == 3
  _assert_results_equal(panoptic.panoptic_quality(predictions, ground_truths, CATEGORIES), expected)

  streamed = panoptic.PanopticQualityAccumulator(CATEGORIES)
  per_image_sum = np.zeros_like(streamed.stats)
  for prediction, ground_truth in images:
    streamed.add(prediction, ground_truth)
    single = panoptic.PanopticQualityAccumulator(CATEGORIES)
    single.add(prediction, ground_truth)
    reference = _reference_stats([prediction], [ground_truth])
    np.testing.assert_allclose(single.stats, [reference[c] for c in CATEGORIES], rtol=1e-13)
    per_image_sum += single.stats
  np.testing.assert_allclose(streamed.stats, per_image_sum, rtol=1e-13)
  _assert_results_equal(streamed.result(), expected)


def test_seen_unseen_pq_over_class_subsets():
  rng = np.random.default_rng(1)
  images = [_random_image(rng) for _ in range(20)]
  accumulator = panoptic.PanopticQualityAccumulator(CATEGORIES)
  for prediction, ground_truth in images:
    accumulator.add(prediction, ground_truth)
  seen, unseen = [1, 7, 8, 20], [3, 12]
  # The zero-shot evaluators' way: panopticapi's average over a categories dict cut to the subset.
  reference = {name: _reference([p for p, _ in images], [g for _, g in images],
                                {c: CATEGORIES[c] for c in ids})["All"]["pq"]
               for name, ids in (("seen", seen), ("unseen", unseen))}
  summary = panoptic.seen_unseen_pq(accumulator, seen, unseen)
  s, u = reference["seen"], reference["unseen"]
  assert summary == pytest.approx({"sPQ": s, "uPQ": u, "hPQ": 2 * s * u / (s + u)}, rel=1e-12)
  result = accumulator.result()
  assert panoptic.pq_over(result, unseen) == pytest.approx(np.mean([result["per_class"][c]["pq"] for c in unseen]))
  with pytest.raises(ValueError, match="not among the categories"):
    panoptic.pq_over(accumulator, [5])


def test_pq_over_counts_only_classes_with_segments():
  gt_map, gt_segments = _square_gt()
  accumulator = panoptic.PanopticQualityAccumulator(CATEGORIES)
  accumulator.add((gt_map, [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 3}]), (gt_map, gt_segments))
  # Class 1: TP; class 3: FP; class 7: FN; classes 8, 12 and 20 have nothing.
  assert panoptic.pq_over(accumulator, [1, 8, 12]) == 1.0
  assert panoptic.pq_over(accumulator, [1, 3, 8]) == 0.5
  assert np.isnan(panoptic.pq_over(accumulator, [8, 12]))
  assert panoptic.pq_over(accumulator.result(), [1, 8, 12]) == pytest.approx(1 / 3)  # per_class: absent = 0.


def _square_gt():
  """4x4 image: segment 1 of class 1 (thing) on the left half, segment 2 of class 7 (stuff) on the right."""
  return np.array([[1, 1, 2, 2]] * 4, np.int32), [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 7}]


def _quality(pred_map, pred_segments, gt_map, gt_segments):
  return panoptic.panoptic_quality([(pred_map, pred_segments)], [(gt_map, gt_segments)], CATEGORIES)


def test_perfect_prediction_scores_one():
  gt_map, gt_segments = _square_gt()
  result = _quality(gt_map * 5, [{"id": 10, "category_id": 7}, {"id": 5, "category_id": 1}], gt_map, gt_segments)
  assert result["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 2}
  assert result["Things"] == result["Stuff"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 1}
  assert result["per_class"][3] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}


def test_false_positive_and_missed_segment():
  gt_map, gt_segments = _square_gt()
  # Class 3 predicted on the class-7 half: a FP for 3 and a FN for 7.
  result = _quality(gt_map, [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 3}], gt_map, gt_segments)
  assert result["per_class"][1]["pq"] == 1.0 and result["per_class"][3] == result["per_class"][7] == {
      "pq": 0.0, "sq": 0.0, "rq": 0.0}
  assert result["All"] == {"pq": pytest.approx(1 / 3), "sq": pytest.approx(1 / 3), "rq": pytest.approx(1 / 3), "n": 3}
  assert result["Things"] == {"pq": 0.5, "sq": 0.5, "rq": 0.5, "n": 2}
  # The class-7 half left VOID: only the FN.
  result = _quality(np.where(gt_map == 1, 1, 0), [{"id": 1, "category_id": 1}], gt_map, gt_segments)
  assert result["All"] == {"pq": 0.5, "sq": 0.5, "rq": 0.5, "n": 2} and result["Stuff"]["pq"] == 0.0


@pytest.mark.parametrize("width,matched", [(2, False), (3, True)])
def test_iou_of_exactly_one_half_is_not_a_match(width, matched):
  gt_map = np.array([[1] * 4] + [[2] * 4] * 3, np.int32)  # Segment 1: the top row, 4 pixels.
  pred_map = np.full((4, 4), 2, np.int32)
  pred_map[0, :width] = 1  # IoU 2/4 or 3/4.
  segments = [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 7}]
  result = _quality(pred_map, segments, gt_map, segments)
  expected = {"pq": 0.75, "sq": 0.75, "rq": 1.0} if matched else {"pq": 0.0, "sq": 0.0, "rq": 0.0}
  assert result["per_class"][1] == expected


def test_void_pixels_leave_the_union():
  gt_map, gt_segments = _square_gt()
  gt_map = gt_map.copy()
  gt_map[:, 3] = 0
  # The class-7 prediction covers 4 GT pixels and 4 VOID ones: IoU 4 / (8 + 4 - 4 - 4) = 1, not 1/2.
  result = _quality(_square_gt()[0], gt_segments, gt_map, gt_segments)
  assert result["per_class"][7] == {"pq": 1.0, "sq": 1.0, "rq": 1.0}


@pytest.mark.parametrize("void_pixels,false_positive", [(3, False), (2, True)])
def test_prediction_more_than_half_void_is_ignored(void_pixels, false_positive):
  gt_map, gt_segments = _square_gt()
  gt_map = gt_map.copy()
  gt_map[:void_pixels, 3] = 0
  pred_map = gt_map.copy()
  pred_map[:, 3] = 3  # Class 8 over the VOID pixels and the rest of the column (class 7 in the GT).
  pred_segments = gt_segments + [{"id": 3, "category_id": 8}]
  result = _quality(pred_map, pred_segments, gt_map, gt_segments)
  assert result["per_class"][7]["rq"] == 1.0
  assert result["All"]["n"] == 2 + false_positive and result["per_class"][8]["pq"] == 0.0


@pytest.mark.parametrize("category,false_positive", [(3, False), (8, True)])
def test_crowd_region_absorbs_false_positives_of_its_class(category, false_positive):
  gt_map = np.array([[1, 1, 2, 2]] * 4, np.int32)
  gt_segments = [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 3, "iscrowd": 1}]
  pred_map = np.array([[1, 1, 2, 2]] * 3 + [[1, 1, 3, 3]], np.int32)
  pred_segments = [{"id": 1, "category_id": 1}, {"id": 2, "category_id": category}, {"id": 3, "category_id": 3}]
  result = _quality(pred_map, pred_segments, gt_map, gt_segments)
  # The crowd is never a FN; a class-3 prediction on it is not a FP; one of another class is.
  assert result["per_class"][1]["pq"] == 1.0 and result["per_class"][3] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
  assert result["All"]["n"] == 1 + false_positive


def test_bad_input_is_refused_by_name():
  gt_map, gt_segments = _square_gt()
  for pred_segments, message in (([{"id": 1, "category_id": 1}], r"\[2\] are in the map"),
                                 (gt_segments + [{"id": 4, "category_id": 1}], r"\[4\] are listed but have no"),
                                 ([{"id": 1, "category_id": 1}, {"id": 2, "category_id": 5}], r"\[5\] are not in"),
                                 (gt_segments + [{"id": 2, "category_id": 1}], "must be unique")):
    with pytest.raises(ValueError, match=message):
      _quality(gt_map, pred_segments, gt_map, gt_segments)
  with pytest.raises(ValueError, match="differ in shape"):
    _quality(gt_map[:3], gt_segments, gt_map, gt_segments)


def _reference_panoptic_inference(class_logits, mask_logits, thing_ids, object_mask_threshold=0.8,
                                  overlap_threshold=0.8, counts=None):
  """MaskFormer.panoptic_inference of the released Mask2Former code, one kept query at a time."""
  counts = collections.Counter() if counts is None else counts
  probabilities = scipy.special.softmax(class_logits.astype(np.float32), axis=-1)
  scores, labels = probabilities.max(-1), probabilities.argmax(-1)
  masks = scipy.special.expit(mask_logits.astype(np.float32))
  keep = (labels != class_logits.shape[1] - 1) & (scores > object_mask_threshold)
  scores, labels, masks = scores[keep], labels[keep], masks[keep]
  panoptic_seg = np.zeros(mask_logits.shape[1:], np.int32)
  segments_info = []
  if masks.shape[0] == 0:
    return panoptic_seg, segments_info
  mask_ids = (scores.reshape(-1, 1, 1) * masks).argmax(0)
  stuff_memory, current_segment_id = {}, 0
  for k in range(len(labels)):
    pred_class = int(labels[k])
    isthing = pred_class in thing_ids
    mask_area = (mask_ids == k).sum()
    original_area = (masks[k] >= 0.5).sum()
    mask = (mask_ids == k) & (masks[k] >= 0.5)
    if mask_area > 0 and original_area > 0 and mask.sum() > 0:
      if mask_area / original_area < overlap_threshold:
        counts["overlap_dropped"] += 1
        continue
      if not isthing:
        if pred_class in stuff_memory:
          counts["stuff_merged"] += 1
          panoptic_seg[mask] = stuff_memory[pred_class]
          continue
        stuff_memory[pred_class] = current_segment_id + 1
      current_segment_id += 1
      panoptic_seg[mask] = current_segment_id
      segments_info.append({"id": current_segment_id, "isthing": bool(isthing), "category_id": pred_class})
  return panoptic_seg, segments_info


def _random_query_outputs(rng, num_queries=14, num_classes=5, size=16):
  """Confident and unsure queries whose masks mostly own cells of a coarse grid, with overlaps."""
  class_logits = rng.normal(size=(num_queries, num_classes + 1))
  confident = rng.random(num_queries) < 0.75
  top_class = rng.integers(0, num_classes + 1, num_queries)
  class_logits[confident, top_class[confident]] += rng.uniform(2, 8, confident.sum())
  coarse = rng.normal(size=(num_queries, size // 4, size // 4)) * 2 - 3
  owner = rng.integers(0, num_queries, (size // 4, size // 4))
  coarse[owner, np.arange(size // 4)[:, None], np.arange(size // 4)] += 7
  mask_logits = np.kron(coarse, np.ones((4, 4))) + rng.normal(size=(num_queries, size, size))
  return class_logits.astype(np.float32), mask_logits.astype(np.float32)


def test_panoptic_inference_matches_per_query_loop():
  counts, thing_ids = collections.Counter(), {0, 2, 3}
  for seed in range(12):
    class_logits, mask_logits = _random_query_outputs(np.random.default_rng(seed))
    for object_mask_threshold, overlap_threshold in ((0.8, 0.8), (0.5, 0.5)):
      expected_map, expected_segments = _reference_panoptic_inference(
          class_logits, mask_logits, thing_ids, object_mask_threshold, overlap_threshold, counts)
      panoptic_map, segments = panoptic_inference.panoptic_inference(
          class_logits, mask_logits, thing_ids, object_mask_threshold=object_mask_threshold,
          overlap_threshold=overlap_threshold)
      assert panoptic_map.dtype == np.int32
      np.testing.assert_array_equal(panoptic_map, expected_map)
      assert segments == expected_segments
      counts["segments"] += len(segments)
      probabilities = scipy.special.softmax(class_logits, axis=-1)
      np.testing.assert_array_equal(panoptic_inference.panoptic_inference(
          probabilities, mask_logits, thing_ids, object_mask_threshold=object_mask_threshold,
          overlap_threshold=overlap_threshold, scores_are_probabilities=True)[0], expected_map)
  assert counts["segments"] > 50 and counts["overlap_dropped"] > 5 and counts["stuff_merged"] > 5


def test_panoptic_inference_empty_when_no_query_is_confident():
  class_logits, mask_logits = _random_query_outputs(np.random.default_rng(0))
  no_object = np.zeros_like(class_logits)
  no_object[:, -1] = 10  # Every query says "no object".
  for logits in (no_object, np.zeros_like(class_logits)):  # ... or is uniform, far below 0.8.
    panoptic_map, segments = panoptic_inference.panoptic_inference(logits, mask_logits, {0})
    assert segments == [] and panoptic_map.shape == (16, 16) and not panoptic_map.any()
  # The threshold is strict, in float32 as in the reference: a score of exactly 0.8 is not kept.
  for top, kept in ((0.8, False), (0.81, True)):
    probabilities = np.array([[top, 1 - top, 0]], np.float32)
    _, segments = panoptic_inference.panoptic_inference(probabilities, np.ones((1, 2, 2)), {0},
                                                        scores_are_probabilities=True)
    assert len(segments) == kept


def test_overlap_filter_counts_every_pixel_a_query_wins():
  # Two thing queries on a 1x10 image; query 0 is the more confident one.
  class_logits = np.array([[12.0, 0, 0], [0, 10.0, 0]], np.float32)
  mask_logits = np.full((2, 1, 10), -10.0, np.float32)
  mask_logits[0, 0, 7:] = 10  # Query 0 takes pixels 7-9.
  mask_logits[1, 0, :] = 10  # Query 1's own mask is the whole row: it wins 7 of 10 pixels.
  for overlap_threshold, expected in ((0.8, [0] * 7 + [1] * 3), (0.6, [2] * 7 + [1] * 3)):
    panoptic_map, _ = panoptic_inference.panoptic_inference(class_logits, mask_logits, {0, 1},
                                                            overlap_threshold=overlap_threshold)
    np.testing.assert_array_equal(panoptic_map[0], expected)
  # Query 1 also wins pixels outside its own mask (sigmoid(-1) * score beats ~0): they count in the ratio
  # (10 won / 7 own), but stay out of its segment.
  mask_logits[1, 0, 7:] = -1
  mask_logits[0, 0, 7:] = -10
  mask_logits[0, 0, :3] = 10
  panoptic_map, segments = panoptic_inference.panoptic_inference(class_logits, mask_logits, {0, 1})
  np.testing.assert_array_equal(panoptic_map[0], [1] * 3 + [2] * 4 + [0] * 3)
  assert segments == [{"id": 1, "category_id": 0, "isthing": True}, {"id": 2, "category_id": 1, "isthing": True}]


def test_semantic_inference_sums_queries():
  class_logits, mask_logits = _random_query_outputs(np.random.default_rng(3))
  probabilities = scipy.special.softmax(class_logits.astype(np.float64), axis=-1)[:, :-1]
  masks = scipy.special.expit(mask_logits.astype(np.float64))
  expected = sum(probabilities[q][:, None, None] * masks[q] for q in range(len(masks)))
  np.testing.assert_allclose(panoptic_inference.semantic_inference(class_logits, mask_logits), expected, rtol=1e-5)
