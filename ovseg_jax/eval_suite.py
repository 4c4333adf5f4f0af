r"""Evaluation protocols on labelled datasets: resize, sliding window, prompts, background rule, metrics.

  python -m ovseg_jax.evaluate --config=configs/eval_suite.py --checkpoint=WORKDIR [--output=DIR]

The checkpoint's own `config.json` rebuilds the model; every dataset of the eval config is read with
`data_pipelines.eval_datasets`, each image resized to the protocol's short side and scored by sliding windows
(or whole), and the per-pixel class is decided by the protocol's background rule:

- `threshold`: background has no text embedding (unless synonyms give it one); pixels whose best class
  score is below `background_threshold` are background (GroupViT's rule; its released values: VOC 0.95,
  Pascal Context 0.35, COCO-Object 0.95). A negative threshold is chosen on `tune_split`.
- `constant`: background scores a constant `background_score` everywhere and competes like a class.
- `exclude`: the "without background" protocol: background pixels of the labels are ignored and background
  is never predicted.
- `none`: the dataset has no background class.

Writes results.json, results.md (beside the published S-Seg numbers) and overlays per dataset.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from ovseg_jax import classify, inference, metrics, progress, prompts, sharding, sliding_window, visualize

BACKGROUND_MODES = ("threshold", "constant", "exclude", "none")
# S-Seg's published mIoU (paper Table 2, trained on CC12M; S-Seg+ adds self-training), for reference only.
PUBLISHED_SSEG = {"voc": 44.9, "context59": 22.9, "coco_object": 22.5}


@dataclass(frozen=True)
class Protocol:
  short_side: int | None  # Resize so the shorter side has this many pixels; None keeps the image size.
  window: int  # Sliding-window size (the whole image if it fits in one window).
  stride: int
  templates: tuple[str, ...]
  background: str
  background_threshold: float
  background_score: float
  decode: str
  batch_size: int
  synonyms: dict[str, tuple[str, ...]]

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict) -> Protocol:
    if cfg.background not in BACKGROUND_MODES:
      raise ValueError(f"protocol.background={cfg.background!r}: use one of {BACKGROUND_MODES}.")
    return cls(short_side=cfg.short_side or None, window=cfg.window, stride=cfg.stride,
               templates=prompts.templates(cfg.templates), background=cfg.background,
               background_threshold=cfg.background_threshold, background_score=cfg.background_score,
               decode=cfg.decode, batch_size=cfg.batch_size,
               synonyms={k: tuple(v) for k, v in dict(cfg.get("synonyms", {})).items()})


def text_classes(class_names: tuple[str, ...], background_id: int | None, protocol: Protocol) -> list[int]:
  """Dataset class ids that get text embeddings: all but background, unless synonyms name background."""
  embed_background = protocol.background == "none" or (
      protocol.background == "threshold" and class_names[background_id] in protocol.synonyms)
  return [i for i in range(len(class_names)) if i != background_id or embed_background]


def decide_labels(scores: np.ndarray, class_ids: list[int], background_id: int | None,
                  protocol: Protocol, threshold: float) -> np.ndarray:
  """scores [len(class_ids), H, W] -> dataset labels [H, W] by the protocol's background rule."""
  best = np.asarray(class_ids)[np.argmax(scores, axis=0)]
  if background_id is None or protocol.background in ("none", "exclude"):
    return best.astype(np.int32)
  top = np.max(scores, axis=0)
  if protocol.background == "threshold":
    return np.where(top < threshold, background_id, best).astype(np.int32)
  return np.where(top < protocol.background_score, background_id, best).astype(np.int32)  # 'constant'


def labels_for_metrics(label: np.ndarray, background_id: int | None, ignore_index: int,
                       protocol: Protocol) -> np.ndarray:
  """The "without background" protocol ignores background pixels; the others score them."""
  if protocol.background == "exclude" and background_id is not None:
    return np.where(label == background_id, ignore_index, label)
  return label


def _nearest_resize(label: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  if label.shape == hw:
    return label
  return np.asarray(Image.fromarray(label.astype(np.int32)).resize(hw[::-1], Image.NEAREST))


@dataclass(frozen=True)
class ClipSetup:
  """A loaded CLIP and how it classifies masks (`ovseg_jax.classify`)."""
  module: Any
  params: Any
  crop_size: int
  mask_threshold: float = 0.5
  seen_classes: tuple[str, ...] = ()  # The training vocabulary's classes (none for S-Seg).
  no_object_logit: float | None = None  # A fixed "no object" class for CLIP's softmax (None: off).


class WindowEvaluator:
  """Scores images of any size by sliding windows with one compiled program per protocol (window x batch).

  `score_windows(*constants, windows uint8 [batch, window, window, 3]) -> [batch, len(class_ids), window,
  window]`; the constants (params, text embeddings) are replicated. Windows are split over every local device
  when the window batch divides evenly (one process: evaluation jobs run per host on their own images)."""

  def __init__(self, score_windows: Callable[..., jax.Array], constants: tuple, class_ids: list[int],
               background_id: int | None, protocol: Protocol):
    self.protocol, self.background_id, self.class_ids = protocol, background_id, class_ids
    devices = jax.local_devices()
    self.mesh = sharding.make_mesh((("data", len(devices)),), devices) if protocol.batch_size % len(devices) == 0 \
        else sharding.make_mesh((("data", 1),), devices[:1])
    constants = jax.device_put(constants, sharding.replicated(self.mesh))
    windows_sharding = sharding.batch_sharding(self.mesh)
    self._score = lambda windows: np.asarray(score_windows(*constants, jax.device_put(windows, windows_sharding)))

  def scores(self, image: np.ndarray) -> np.ndarray:
    """[len(class_ids), h, w] class scores at the protocol's resolution."""
    p = self.protocol
    if p.short_side:
      image = sliding_window.resize_short_side(image, p.short_side)
    return sliding_window.slide(self._score, image, len(self.class_ids), p.window, p.stride, p.batch_size)

  def _labels(self, scores: np.ndarray, threshold: float, hw: tuple[int, int]) -> np.ndarray:
    return _nearest_resize(decide_labels(scores, self.class_ids, self.background_id, self.protocol, threshold), hw)

  def predict(self, image: np.ndarray, threshold: float) -> np.ndarray:
    """Dataset labels [H, W] at the image's own size."""
    return self._labels(self.scores(image), threshold, image.shape[:2])

  def predict_with_confidence(self, image: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(labels [H, W], the best class score [H, W] in [0, 1]) at the image's own size: pseudo labels."""
    scores = self.scores(image)
    top = Image.fromarray(np.clip(scores.max(axis=0), 0.0, 1.0).astype(np.float32), mode="F")
    confidence = np.asarray(top.resize(image.shape[1::-1], Image.BILINEAR))
    return self._labels(scores, threshold, image.shape[:2]), confidence


class DatasetEvaluator(WindowEvaluator):
  """An S-Seg checkpoint as a window evaluator: masks classified by text (or CLIP) over a dataset's names."""

  def __init__(self, model: Any, params: Any, class_names: tuple[str, ...], background_id: int | None,
               protocol: Protocol, context_length: int, classifier: str = "learned", clip: ClipSetup | None = None):
    if classifier != "learned" and clip is None:
      raise ValueError(f"classifier {classifier!r} needs a CLIP: set clip.checkpoint in the eval config "
                       "(pseudo_labels.clip.checkpoint in a self-training config).")
    class_ids = text_classes(class_names, background_id, protocol)
    names = [class_names[i] for i in class_ids]
    prompt_names, groups = inference.expand_synonyms(names, protocol.synonyms)
    text = inference.class_text_embeddings(model, params, prompt_names, protocol.templates, context_length)
    groups = jnp.asarray(groups)
    reclassify = None
    if classifier != "learned":
      clip_text = inference.class_text_embeddings(clip.module, clip.params, prompt_names, protocol.templates,
                                                  clip.module.architecture.context_length)
      seen = jnp.asarray([n in clip.seen_classes for n in names])
      reclassify = classify.make_reclassifier(classifier, clip.module, clip.params, clip_text, groups, seen,
                                              clip.crop_size, clip.mask_threshold,
                                              no_object_logit=clip.no_object_logit)
    segmenter = inference.make_segmenter(model, protocol.decode, reclassify)
    super().__init__(lambda p, t, g, windows: segmenter(p, windows, t, g), (params, text, groups), class_ids,
                     background_id, protocol)


def choose_threshold(evaluator: WindowEvaluator, dataset: Any, candidates: np.ndarray | None = None) -> float:
  """The background threshold with the best mIoU on a tuning split (never the reported one)."""
  candidates = np.linspace(0.0, 1.0, 41) if candidates is None else candidates
  info = dataset.info
  confusions = np.zeros((len(candidates), info.num_classes, info.num_classes), np.int64)
  for example in dataset:
    scores = evaluator.scores(example.image)
    for i, t in enumerate(candidates):
      pred = _nearest_resize(decide_labels(scores, evaluator.class_ids, evaluator.background_id,
                                           evaluator.protocol, t), example.label.shape)
      confusions[i] += metrics.confusion_matrix(pred, example.label, info.num_classes, info.ignore_index)
  return float(candidates[int(np.nanargmax([metrics.miou(c)[0] for c in confusions]))])


def evaluate_dataset(evaluator: WindowEvaluator, dataset: Any, threshold: float, out_dir: Path | None = None,
                     num_overlays: int = 0) -> dict[str, Any]:
  """Confusion over the whole split -> mIoU, per-class IoU, pixel accuracy, fwIoU, seen/unseen mIoU."""
  info, protocol = dataset.info, evaluator.protocol
  confusion = np.zeros((info.num_classes, info.num_classes), np.int64)
  shown_images, shown_preds, shown_labels = [], [], []
  start = last = time.perf_counter()
  for n, example in enumerate(dataset, 1):
    pred = evaluator.predict(example.image, threshold)
    label = labels_for_metrics(example.label, evaluator.background_id, info.ignore_index, protocol)
    confusion += metrics.confusion_matrix(pred, label, info.num_classes, info.ignore_index)
    if len(shown_images) < num_overlays:
      shown_images.append(example.image)
      shown_preds.append(pred)
      shown_labels.append(np.where(label == info.ignore_index, 0, label))
    if time.perf_counter() - last > 10 or n == len(dataset):
      last = time.perf_counter()
      rate = n / (last - start)
      progress.log(f"{info.name}: {n}/{len(dataset)} images, {rate:.1f} img/s, "
                   f"ETA {(len(dataset) - n) / rate / 60:.1f} min")
  exclude = [evaluator.background_id] if protocol.background == "exclude" and evaluator.background_id is not None else []
  results = metrics.summarize(confusion, list(info.class_names), exclude=exclude)
  results.update(dataset=info.name, num_images=len(dataset), background=protocol.background,
                 background_threshold=threshold, seconds=time.perf_counter() - start)
  if info.unseen_classes:
    ids = {name: i for i, name in enumerate(info.class_names)}
    seen = metrics.miou_over(confusion, [ids[c] for c in info.seen_classes])
    unseen = metrics.miou_over(confusion, [ids[c] for c in info.unseen_classes])
    results.update(seen_miou=seen, unseen_miou=unseen, harmonic_miou=metrics.harmonic_mean(seen, unseen))
  if out_dir is not None and shown_images:
    for i, (image, pred, label) in enumerate(zip(shown_images, shown_preds, shown_labels)):
      visualize.save_overlays(out_dir / "overlays", image[None], pred[None], label[None], list(info.class_names),
                              prefix=f"{info.name}_{i:02d}", max_images=1)
  return results


def results_table(results: list[dict[str, Any]]) -> str:
  rows = [{"dataset": r["dataset"], "classifier": r.get("classifier", "learned"), "images": r["num_images"],
           "background": r["background"], "mIoU": 100 * r["miou"], "pixel acc": 100 * r["pixel_accuracy"],
           "fwIoU": 100 * r["fwiou"],
           "h-mIoU (seen/unseen)": 100 * r["harmonic_miou"] if "harmonic_miou" in r else float("nan"),
           "published S-Seg mIoU": PUBLISHED_SSEG.get(r["dataset"], float("nan"))} for r in results]
  return visualize.markdown_table(rows, list(rows[0]), float_fmt="{:.1f}")


def load_clip_setup(cfg: ml_collections.ConfigDict) -> ClipSetup | None:
  """The eval config's `clip` section -> a loaded CLIP, or None without a checkpoint."""
  if not cfg.get("checkpoint"):
    return None
  from ovseg_jax.models.clip import load_clip
  module, params = load_clip(Path(cfg.checkpoint).expanduser(), activation=cfg.get("activation") or None)
  no_object = cfg.get("no_object_logit", -1.0)
  return ClipSetup(module, params, cfg.get("crop_size") or module.architecture.image_size,
                   cfg.get("mask_threshold", 0.5), tuple(cfg.get("seen_classes", ())),
                   None if no_object < 0 else no_object)


def run_suite(eval_config: ml_collections.ConfigDict, checkpoint_dir: Path, output: Path | None,
              clip: ClipSetup | None = None) -> list[dict]:
  """Evaluates the latest checkpoint under `checkpoint_dir` on every dataset of `eval_config.datasets`, with
  every classifier of `eval_config.classifiers` (CLIP from `eval_config.clip`, or `clip` when given)."""
  from data_pipelines import eval_datasets
  from ovseg_jax import train
  workdir = checkpoint_dir.parent if checkpoint_dir.name == "checkpoints" else checkpoint_dir
  train_config = train.workdir_config(workdir)
  if train_config.get("trainer") == "selftrain":
    raise ValueError(f"{workdir} holds a self-training (UperNet) run: evaluate it with `python -m ovseg_jax.evaluate "
                     "--config=configs/selftrain_demo.py --workdir=...`.")
  classifiers = tuple(eval_config.get("classifiers", ("learned",)))
  clip = clip or load_clip_setup(eval_config.get("clip", ml_collections.ConfigDict()))
  model, params, step = train.restore_model(train_config, workdir)
  output = output or workdir / "eval"
  output.mkdir(parents=True, exist_ok=True)
  all_results = []
  for entry in eval_config.datasets:
    protocol = Protocol.from_config(ml_collections.ConfigDict({**eval_config.protocol.to_dict(),
                                                              **dict(entry.get("protocol", {}))}))
    root = entry.root or _default_root(entry.name, train_config)
    dataset = eval_datasets.load(entry.name, root, entry.split)
    info = dataset.info
    protocol = dataclasses.replace(protocol, synonyms={**info.synonyms, **protocol.synonyms})
    for classifier in classifiers:
      evaluator = DatasetEvaluator(model, params, info.class_names, info.background_index, protocol,
                                   train_config.data.context_length, classifier, clip)
      threshold = protocol.background_threshold
      if protocol.background == "threshold" and threshold < 0:
        threshold = choose_threshold(evaluator, eval_datasets.load(entry.name, root, entry.tune_split))
        progress.log(f"{info.name} ({classifier}): background threshold {threshold:.3f} chosen on split "
                     f"{entry.tune_split!r}")
      overlays = output / info.name / classifier.replace(":", "_")
      results = evaluate_dataset(evaluator, dataset, threshold, overlays, eval_config.num_overlays)
      results.update(step=step, classifier=classifier)
      all_results.append(results)
  (output / "results.json").write_text(json.dumps(all_results, indent=2, default=float))
  table = results_table(all_results)
  (output / "results.md").write_text(f"# Evaluation of {workdir} at step {step}\n\n{table}\n\nPublished S-Seg "
                                     "numbers (paper Table 2, CC12M) are for reference; other models and data "
                                     "differ.\n")
  print(f"evaluation of {workdir} at step {step}:\n{table}", flush=True)
  return all_results


def _default_root(name: str, train_config: ml_collections.ConfigDict) -> Path:
  if name != "demo":
    raise ValueError(f"datasets entry {name!r} has no root: set its `root` to the dataset directory.")
  from ovseg_jax import evaluate
  return Path(evaluate.demo_paths(train_config).eval_dir).parent
