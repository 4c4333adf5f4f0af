r"""Evaluation: mIoU of an S-Seg checkpoint on a labelled split, beside baselines on the same images.

  python -m ovseg_jax.evaluate --config=configs/sseg_demo.py --workdir=/tmp/sseg_demo
  python -m ovseg_jax.evaluate --config=configs/eval_suite.py:demo --checkpoint=/tmp/sseg_demo

The first form re-runs a training config's own evaluation (for a self-training config, e.g.
`configs/selftrain_voc.py`, the S-Seg+ evaluation of `ovseg_jax.selftrain`); the second applies evaluation
protocols to several datasets (`ovseg_jax.eval_suite`).

Loads the latest checkpoint in `workdir`, writes `results.json`, `results.md` and `overlays/` there.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ovseg_jax import inference, metrics, visualize
from ovseg_jax.metrics import confusion_matrix, miou  # Public contract: ovseg_jax.evaluate.{confusion_matrix,miou}.

__all__ = ["confusion_matrix", "miou", "predict_split", "predict_labelled_split", "evaluate_labelled_split",
           "evaluate_demo", "main"]

BACKGROUND = "background"


@dataclass
class SplitPredictions:
  """Best non-background class per pixel (dataset ids) and its score, so any threshold is cheap to apply."""
  best_score: np.ndarray  # float32 [n, H, W]
  best_class: np.ndarray  # int32 [n, H, W]

  def labels(self, background_id: int | None, threshold: float) -> np.ndarray:
    if background_id is None:
      return self.best_class
    return np.where(self.best_score < threshold, background_id, self.best_class).astype(np.int32)


def predict_split(segmenter, params: Any, images: np.ndarray, text_embeddings: jax.Array,
                  name_groups: np.ndarray, class_ids: Sequence[int], batch_size: int) -> SplitPredictions:
  """Runs the jitted segmenter over `images` in fixed-size batches (the last one padded: one compile)."""
  class_ids = jnp.asarray(class_ids, jnp.int32)
  reduce = jax.jit(lambda s: (jnp.max(s, axis=1), class_ids[jnp.argmax(s, axis=1)]))
  scores, classes = [], []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    padded = np.zeros((batch_size, *images.shape[1:]), images.dtype)
    padded[:len(chunk)] = chunk
    best_score, best_class = jax.device_get(reduce(segmenter(params, padded, text_embeddings, name_groups)))
    scores.append(best_score[:len(chunk)])
    classes.append(best_class[:len(chunk)])
  return SplitPredictions(np.concatenate(scores), np.concatenate(classes).astype(np.int32))


def _confusion(pred: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
  return np.asarray(confusion_matrix(pred, label, num_classes), np.int64)


def tune_background_threshold(pred: SplitPredictions, labels: np.ndarray, num_classes: int,
                              background_id: int, candidates: np.ndarray | None = None) -> float:
  """The threshold with the best mIoU on a tuning split (never the split being reported)."""
  candidates = np.linspace(0.0, 1.0, 41) if candidates is None else candidates
  scores = [metrics.miou(_confusion(pred.labels(background_id, t), labels, num_classes))[0] for t in candidates]
  return float(candidates[int(np.nanargmax(scores))])


def summary(pred_labels: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
             background_id: int | None) -> dict[str, Any]:
  conf = _confusion(pred_labels, labels, len(class_names))
  summary = metrics.summarize(conf, list(class_names))
  if background_id is not None:
    objects = [i for i in range(len(class_names)) if i != background_id]
    summary["object_miou"] = metrics.miou_over(conf, objects)
  return summary


def class_name_predictor(model: Any, params: Any, class_names: Sequence[str], eval_cfg: ml_collections.ConfigDict,
                         context_length: int) -> tuple[Callable[[np.ndarray], SplitPredictions], int | None]:
  """`predict(images) -> SplitPredictions` over `class_names` (each expanded to its configured synonyms),
  with the text embedded and the segmenter compiled once; and the background class id, if it applies.

  With `eval.background='threshold'` the background class competes only if it has synonyms (e.g. the
  scene words of the demo); pixels scoring below the threshold become background either way.
  """
  names = list(class_names)
  synonyms = dict(eval_cfg.get("synonyms", {}))
  background_id = names.index(BACKGROUND) if eval_cfg.background == "threshold" and BACKGROUND in names else None
  class_ids = [i for i in range(len(names)) if i != background_id or BACKGROUND in synonyms]
  prompts, groups = inference.expand_synonyms([names[i] for i in class_ids], synonyms)
  text = inference.class_text_embeddings(model, params, prompts, eval_cfg.templates, context_length)
  segmenter = inference.make_segmenter(model, eval_cfg.decode)

  def predict(images: np.ndarray) -> SplitPredictions:
    return predict_split(segmenter, params, images, text, groups, class_ids, eval_cfg.batch_size)
  return predict, background_id


def predict_labelled_split(model: Any, params: Any, split: Any, eval_cfg: ml_collections.ConfigDict,
                           context_length: int) -> tuple[SplitPredictions, int | None]:
  """Predictions for a split's images over its class names (see `class_name_predictor`)."""
  predict, background_id = class_name_predictor(model, params, split.class_names, eval_cfg, context_length)
  return predict(split.images), background_id


def evaluate_labelled_split(model: Any, params: Any, split: Any, eval_cfg: ml_collections.ConfigDict,
                            context_length: int, threshold: float, out_dir: Path | None = None,
                            seed: int = 0) -> dict[str, Any]:
  """mIoU (all classes and objects only) of the model and of two baselines on the same images."""
  names = list(split.class_names)
  pred, background_id = predict_labelled_split(model, params, split, eval_cfg, context_length)
  pred_labels = pred.labels(background_id, threshold)
  rng = np.random.default_rng(seed)
  results = {"num_images": int(len(split.images)), "classes": names, "background_threshold": threshold,
             "decode": eval_cfg.decode,
             "trained": summary(pred_labels, split.labels, names, background_id),
             "uniform_random": summary(metrics.uniform_random_prediction(split.labels.shape, len(names), rng),
                                        split.labels, names, background_id)}
  if background_id is not None:
    results["all_background"] = summary(metrics.constant_prediction(split.labels.shape, background_id),
                                         split.labels, names, background_id)
  if out_dir is not None:
    visualize.save_overlays(out_dir / "overlays", split.images, pred_labels, split.labels, names, prefix="eval",
                            max_images=eval_cfg.num_overlays)
  return results


def evaluate_demo(config: ml_collections.ConfigDict, workdir: Path, model: Any, params: Any,
                  step: int) -> dict[str, Any]:
  """The demo's evaluation: threshold chosen on the tune split, numbers and pictures from the eval split."""
  from data_pipelines import demo_data
  paths = demo_paths(config)
  split = demo_data.load_labelled_split(paths.eval_dir if config.eval.split == "eval" else paths.tune_dir)
  threshold = demo_background_threshold(config, model, params)
  t0 = time.perf_counter()
  results = evaluate_labelled_split(model, params, split, config.eval, config.data.context_length, threshold,
                                    out_dir=workdir, seed=config.seed)
  results.update(step=step, eval_seconds=time.perf_counter() - t0)
  table = write_results(results, workdir)
  print(f"evaluation at step {step} on {results['num_images']} held-out demo images (background threshold "
        f"{threshold:.3f}, chosen on the separate tune split):\n{table}", flush=True)
  return results


def demo_background_threshold(config: ml_collections.ConfigDict, model: Any, params: Any) -> float:
  """`eval.background_threshold`, or when it is negative the best one on the demo's separate tune split."""
  from data_pipelines import demo_data
  threshold = config.eval.background_threshold
  if config.eval.background == "threshold" and threshold < 0:
    tune = demo_data.load_labelled_split(demo_paths(config).tune_dir)
    tune_pred, background_id = predict_labelled_split(model, params, tune, config.eval, config.data.context_length)
    threshold = tune_background_threshold(tune_pred, tune.labels, len(tune.class_names), background_id)
  return threshold


def demo_paths(config: ml_collections.ConfigDict):
  """The demo's data for `config.data` (generated on first use, then cached)."""
  from data_pipelines import demo_data
  d = config.data
  cfg = demo_data.DemoDataConfig(image_size=d.image_size, num_train=d.num_train, num_eval=d.num_eval,
                                 num_tune=d.num_tune, seed=config.seed)
  return demo_data.ensure_demo_data(Path(d.demo_root).expanduser(), cfg)


def results_table(results: dict[str, Any]) -> str:
  """Markdown table: each predictor's mIoU (all classes and objects only) and pixel accuracy."""
  rows = []
  for name in ("trained", "uniform_random", "all_background"):
    if name in results:
      r = results[name]
      rows.append({"predictor": name, "mIoU": r["miou"], "object-class mIoU": r.get("object_miou", float("nan")),
                   "pixel acc": r["pixel_accuracy"]})
  table = visualize.markdown_table(rows, ["predictor", "mIoU", "object-class mIoU", "pixel acc"])
  per_class = visualize.per_class_table(np.asarray(list(results["trained"]["per_class_iou"].values())),
                                        results["classes"])
  return f"{table}\n\nPer-class IoU of the trained model:\n\n{per_class}\n"


def write_results(results: dict[str, Any], workdir: Path) -> str:
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "results.json").write_text(json.dumps(results, indent=2, default=float))
  table = results_table(results)
  (workdir / "results.md").write_text(
      f"# Evaluation at step {results.get('step')}\n\nbackground threshold {results['background_threshold']:.3f}, "
      f"decode {results['decode']}, {results['num_images']} images\n\n{table}")
  return table


def main(argv: Sequence[str]) -> None:
  del argv
  from absl import flags
  from ovseg_jax import cli, eval_suite, selftrain, train  # Deferred: keeps `import ovseg_jax.evaluate` light.
  config = cli.CONFIG.value
  checkpoint = flags.FLAGS.checkpoint
  if checkpoint:  # An eval config (protocols and datasets) applied to a training workdir.
    if "datasets" not in config:
      raise SystemExit("error: --checkpoint needs an evaluation config with `datasets` (e.g. "
                       "configs/eval_suite.py), not a training config.")
    output = Path(flags.FLAGS.output).expanduser() if flags.FLAGS.output else None
    eval_suite.run_suite(config, Path(checkpoint).expanduser(), output)
    return
  if not cli.WORKDIR.value:
    raise SystemExit("error: give --workdir (with the training config) or --checkpoint (with an eval config).")
  trainer = selftrain if config.get("trainer") == "selftrain" else train
  trainer.evaluate_checkpoint(config, Path(cli.WORKDIR.value).expanduser())


if __name__ == "__main__":
  from absl import flags
  from ovseg_jax import cli
  flags.DEFINE_string("checkpoint", None, "Training workdir (or its checkpoints/) to evaluate with an eval config.")
  flags.DEFINE_string("output", None, "Where results go; default CHECKPOINT/eval.")
  cli.run(main, required=("config",))
