"""Panoptic evaluation of any query-based predictor on a COCO-layout panoptic split: MaskFormer panoptic inference
per image, PQ / SQ / RQ as panopticapi computes them, and the zero-shot sPQ / uPQ / hPQ, as rows for the results
writer (`eval.results`)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from data_pipelines.coco_panoptic import CocoPanoptic
from ovseg_jax.eval.metrics import PanopticQualityAccumulator, seen_unseen_pq
from ovseg_jax.eval.panoptic_inference import panoptic_inference

# image uint8 [H, W, 3] -> (class logits [Q, K+1] over `class_names` + no object, mask logits [Q, H, W]).
QueryPredictor = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def evaluate_panoptic(predict: QueryPredictor, dataset: CocoPanoptic, class_names: Sequence[str],
                      unseen_classes: Sequence[str], name: str, predictor: str, object_mask_threshold: float = 0.8,
                      overlap_threshold: float = 0.8, max_images: int = 0) -> dict[str, Any]:
  """One results row: PQ, SQ, RQ (all, things, stuff), per-class PQ and seen / unseen / harmonic PQ over the first
  `max_images` images (0: all). Class index k of the predictor is category `class_names[k]` of the dataset."""
  category_of_class = dataset.category_ids(list(class_names))
  things = [k for k, c in enumerate(category_of_class) if dataset.categories[c]["isthing"]]
  categories = {i: {"isthing": c["isthing"]} for i, c in dataset.categories.items()}
  accumulator = PanopticQualityAccumulator(categories)
  count = len(dataset) if not max_images else min(max_images, len(dataset))
  for i in range(count):
    example = dataset.example(i)
    class_logits, mask_logits = predict(example.image)
    segment_map, segments = panoptic_inference(class_logits, mask_logits, things,
                                               object_mask_threshold=object_mask_threshold,
                                               overlap_threshold=overlap_threshold)
    segments = [{"id": s["id"], "category_id": category_of_class[s["category_id"]]} for s in segments]
    accumulator.add((segment_map, segments), (example.segment_ids, example.segments))
  result = accumulator.result()
  unseen = set(unseen_classes)
  seen_ids = [c for n, c in zip(class_names, category_of_class) if n not in unseen]
  unseen_ids = [c for n, c in zip(class_names, category_of_class) if n in unseen]
  row = {"dataset": name, "predictor": predictor, "num_images": count, "pq": result["All"]["pq"],
         "sq": result["All"]["sq"], "rq": result["All"]["rq"], "things_pq": result["Things"]["pq"],
         "stuff_pq": result["Stuff"]["pq"],
         "per_class_pq": {n: result["per_class"][c]["pq"] for n, c in zip(class_names, category_of_class)}}
  if unseen_ids:
    zero_shot = seen_unseen_pq(accumulator, seen_ids, unseen_ids)
    row.update(seen_pq=zero_shot["sPQ"], unseen_pq=zero_shot["uPQ"], harmonic_pq=zero_shot["hPQ"])
  return row
