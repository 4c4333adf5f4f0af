"""The evaluation engine: datasets x protocols x predictors -> confusion matrices -> metrics, results files
and overlays. Every evaluation of the project runs through it: a trainer's final evaluation (the demo's
held-out split is a dataset like any other), `python -m ovseg_jax.evaluate`, self-training.

A predictor (`WindowPredictor`) scores images by sliding windows under a protocol (`eval.protocol`); a
`Candidate` builds one for a dataset's class names, so one model gives one results row per dataset and
classifier. A negative background threshold is chosen on the dataset entry's tune split (never the reported
one). Chance baselines (uniform random, all background) can be scored on the same labels. Every dataset's files
are checked before any model work, and the results files are rewritten as each dataset finishes.
"""
from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from etils import epath

from data_pipelines import demo_data, labelled
from data_pipelines.eval_datasets.base import DatasetInfo, EvalDataset, Example
from ovseg_jax.eval import metrics, results, visualize
from ovseg_jax.eval.protocol import Protocol, labels_for_metrics
from ovseg_jax.eval.windows import WindowPredictor, resize_scores, window_starts
from ovseg_jax.train import progress

THRESHOLD_CANDIDATES = np.linspace(0.0, 1.0, 41)


@dataclasses.dataclass(frozen=True)
class Candidate:
  """A named predictor, built per dataset from its info and protocol: one results row per dataset."""
  name: str
  make: Callable[[DatasetInfo, Protocol], WindowPredictor]


def _windows_per_image(predictor: WindowPredictor, hw: tuple[int, int]) -> int:
  p = predictor.protocol
  h, w = hw
  if p.short_side:
    scale = p.short_side / min(h, w)
    h, w = max(1, round(h * scale)), max(1, round(w * scale))
  return len(window_starts(max(h, p.window), p.window, p.stride)) * len(window_starts(max(w, p.window), p.window,
                                                                                        p.stride))


def _scored(predictor: WindowPredictor, dataset: EvalDataset) -> Iterator[tuple[Example, np.ndarray]]:
  """(example, class scores) in dataset order; images share window batches up to the protocol's batch size."""
  pending: list[Example] = []
  windows = 0
  for example in dataset:
    pending.append(example)
    windows += _windows_per_image(predictor, example.image.shape[:2])
    if windows >= predictor.protocol.batch_size:
      yield from zip(pending, predictor.scores([e.image for e in pending]))
      pending, windows = [], 0
  if pending:
    yield from zip(pending, predictor.scores([e.image for e in pending]))


def choose_threshold(predictor: WindowPredictor, dataset: EvalDataset,
                     candidates: np.ndarray = THRESHOLD_CANDIDATES) -> float:
  """The background threshold with the best mIoU on a tuning split (never the reported one)."""
  info = dataset.info
  confusions = np.zeros((len(candidates), info.num_classes, info.num_classes), np.int64)
  for example, scores in _scored(predictor, dataset):
    label = labels_for_metrics(example.label, predictor.background_id, info.ignore_index, predictor.protocol)
    scores = resize_scores(scores, label.shape)  # Once, not once per candidate threshold.
    for i, t in enumerate(candidates):
      confusions[i] += metrics.confusion_matrix(predictor.labels(scores, t, label.shape), label, info.num_classes,
                                                info.ignore_index)
  return float(candidates[int(np.nanargmax([metrics.miou(c)[0] for c in confusions]))])


def _summary(confusion: np.ndarray, info: DatasetInfo, background_excluded: bool) -> dict[str, Any]:
  """mIoU (background left out under the "without background" protocol), pixel accuracy, fwIoU, per-class IoU;
  object-class mIoU (all but background) and seen / unseen / harmonic mIoU where the dataset defines them."""
  background = info.background_index
  summary = metrics.summarize(confusion, list(info.class_names),
                              exclude=[background] if background_excluded and background is not None else [])
  if background is not None:
    summary["object_miou"] = metrics.miou_over(confusion, [i for i in range(info.num_classes) if i != background])
  if info.unseen_classes:
    ids = {name: i for i, name in enumerate(info.class_names)}
    seen = metrics.miou_over(confusion, [ids[c] for c in info.seen_classes])
    unseen = metrics.miou_over(confusion, [ids[c] for c in info.unseen_classes])
    summary.update(seen_miou=seen, unseen_miou=unseen, harmonic_miou=metrics.harmonic_mean(seen, unseen))
  return summary


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9+-]+", "_", text).strip("_")


def evaluate_dataset(predictor: WindowPredictor, dataset: EvalDataset, threshold: float, name: str,
                     output: epath.Path | None = None, num_overlays: int = 0) -> dict[str, Any]:
  """One results row: the confusion over the whole split -> metrics; overlays of the first images."""
  info, protocol = dataset.info, predictor.protocol
  confusion = np.zeros((info.num_classes, info.num_classes), np.int64)
  start = last = time.perf_counter()
  for n, (example, scores) in enumerate(_scored(predictor, dataset), 1):
    label = labels_for_metrics(example.label, predictor.background_id, info.ignore_index, protocol)
    pred = predictor.labels(scores, threshold, label.shape)
    confusion += metrics.confusion_matrix(pred, label, info.num_classes, info.ignore_index)
    if n <= num_overlays and output is not None:
      overlays = epath.Path(output) / "overlays"
      overlays.mkdir(parents=True, exist_ok=True)
      panel = visualize.overlay_panel(example.image, pred, np.where(label == info.ignore_index, 0, label),
                                      list(info.class_names))
      with (overlays / f"{info.name}_{_slug(name)}_{n - 1:02d}.png").open("wb") as f:
        panel.save(f, format="PNG")
    if time.perf_counter() - last > 10 or n == len(dataset):
      last = time.perf_counter()
      rate = n / (last - start)
      progress.log(f"{info.name} ({name}): {n}/{len(dataset)} images, {rate:.1f} img/s, "
                   f"ETA {(len(dataset) - n) / rate / 60:.1f} min")
  row = _summary(confusion, info, protocol.background == "exclude" and predictor.background_id is not None)
  row.update(dataset=info.name, predictor=name, num_images=len(dataset), background=protocol.background,
             background_threshold=threshold, seconds=time.perf_counter() - start, **getattr(predictor, "details", {}))
  return row


def baseline_rows(dataset: EvalDataset, protocol: Protocol, seed: int = 0) -> list[dict[str, Any]]:
  """Chance on the same labels: every pixel a uniform random class, and (with a background class that is
  scored) background everywhere."""
  info = dataset.info
  background = info.background_index
  excluded = protocol.background == "exclude" and background is not None
  rng = np.random.default_rng(seed)
  predictors = {"uniform random": lambda shape: metrics.uniform_random_prediction(shape, info.num_classes, rng)}
  if background is not None and not excluded:
    predictors["all background"] = lambda shape: metrics.constant_prediction(shape, background)
  confusions = {name: np.zeros((info.num_classes, info.num_classes), np.int64) for name in predictors}
  for example in dataset:
    label = labels_for_metrics(example.label, background, info.ignore_index, protocol)
    for name, predict in predictors.items():
      confusions[name] += metrics.confusion_matrix(predict(label.shape), label, info.num_classes, info.ignore_index)
  return [{**_summary(confusion, info, excluded), "dataset": info.name, "predictor": name, "baseline": True,
           "num_images": len(dataset), "background": "-"} for name, confusion in confusions.items()]


def dataset_protocol(eval_config: ml_collections.ConfigDict, entry: ml_collections.ConfigDict,
                     info: DatasetInfo) -> Protocol:
  """The eval config's protocol with the dataset entry's overrides, the dataset's own synonyms and its published
  zero-shot split (the seen classes of the seen/unseen ensembles)."""
  protocol = Protocol.from_config(ml_collections.ConfigDict({**eval_config.protocol.to_dict(),
                                                            **dict(entry.get("protocol", {}))}))
  return dataclasses.replace(protocol, synonyms={**info.synonyms, **protocol.synonyms},
                             seen_classes=info.seen_classes if info.unseen_classes else ())


def background_threshold(predictor: WindowPredictor, entry: ml_collections.ConfigDict, root: Path,
                         name: str = "") -> tuple[float, str]:
  """(threshold, the split it was chosen on or '') for a predictor whose protocol decides background by one: the
  protocol's, or when that is negative the best on the entry's tune split."""
  protocol = predictor.protocol
  if protocol.background != "threshold" or protocol.background_threshold >= 0:
    return protocol.background_threshold, ""
  if not entry.get("tune_split"):
    raise ValueError(f"dataset {entry.name!r}: background_threshold < 0 asks for a threshold chosen on a tune split, "
                     "but the entry has no tune_split; set one, or set the published threshold.")
  threshold = choose_threshold(predictor, labelled.load(entry.name, root, entry.tune_split))
  progress.log(f"{entry.name} {name}: background threshold {threshold:.3f} chosen on split {entry.tune_split!r}")
  return threshold, entry.tune_split


def training_data_roots(train_config: ml_collections.ConfigDict) -> dict[str, str]:
  """Dataset roots a training config implies: the demo's generated labelled splits for a demo-trained model."""
  data = train_config.get("data", {})
  if data.get("source") != "demo":
    return {}
  return {"demo": str(Path(demo_data.ensure_for_config(data, train_config.seed).eval_dir).parent)}


def evaluate_run(config: ml_collections.ConfigDict, candidates: list[Candidate], workdir: str | Path, title: str,
                 step: int) -> list[dict[str, Any]]:
  """A training run's own evaluation: the eval suite of `config.eval` (the demo's splits need no root); skipped,
  with the command that runs it later, while a dataset has no root."""
  if not config.eval.datasets:
    progress.log("evaluation: config.eval.datasets is empty, nothing to evaluate.")
    return []
  roots = training_data_roots(config)
  if not all(entry.root or entry.name in roots for entry in config.eval.datasets):
    progress.log("evaluation: set the dataset roots in config.eval.datasets (--config.eval.datasets.0.root=...), or "
                 "run `python -m ovseg_jax.evaluate --config=<this config> --workdir=WORKDIR` with them later.")
    return []
  return evaluate_suite(config.eval, candidates, workdir, title, roots, extra={"step": step})


def open_datasets(eval_config: ml_collections.ConfigDict, roots: Mapping[str, str | Path] | None = None
                  ) -> list[tuple[ml_collections.ConfigDict, Path, EvalDataset]]:
  """(entry, root, dataset) of every entry of `eval_config.datasets` (roots from the entries, else
  `roots[name]`), with the files of its split and tune split checked: a missing dataset fails here, in seconds,
  before any model is restored or compiled."""
  opened = []
  for entry in eval_config.datasets:
    root = entry.root or (roots or {}).get(entry.name)
    if not root:
      raise ValueError(f"datasets entry {entry.name!r} has no root: set its `root` to the dataset directory.")
    root = Path(root).expanduser()
    if entry.get("tune_split"):
      labelled.load(entry.name, root, entry.tune_split)
    dataset = labelled.load(entry.name, root, entry.split)
    if entry.get("unseen_classes"):  # A zero-shot split chosen by the experiment (e.g. the demo's held-out classes).
      dataset.info = dataclasses.replace(dataset.info, unseen_classes=tuple(entry.unseen_classes))
    opened.append((entry, root, dataset))
  return opened


def evaluate_suite(eval_config: ml_collections.ConfigDict, candidates: list[Candidate], output: str | Path,
                   title: str, roots: Mapping[str, str | Path] | None = None,
                   extra: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
  """Every candidate on every dataset of `eval_config.datasets` (roots from the entries, else `roots[name]`);
  with `eval_config.baselines` also the chance baselines. Every dataset is checked first (`open_datasets`); the
  results files in `output` are rewritten after each dataset, so a later failure keeps the earlier rows."""
  output = epath.Path(output)
  rows = []
  for entry, root, dataset in open_datasets(eval_config, roots):
    protocol = dataset_protocol(eval_config, entry, dataset.info)
    for candidate in candidates:
      predictor = candidate.make(dataset.info, protocol)
      threshold, chosen_on = background_threshold(predictor, entry, root, candidate.name)
      row = evaluate_dataset(predictor, dataset, threshold, candidate.name, output, eval_config.num_overlays)
      rows.append({**row, "threshold_chosen_on": chosen_on, **(extra or {})})
    if eval_config.get("baselines"):
      rows += [{**row, **(extra or {})} for row in baseline_rows(dataset, protocol, eval_config.get("seed", 0))]
    if rows:
      results.write_results(rows, output, title, echo=False)
  results.write_results(rows, output, title)
  return rows
