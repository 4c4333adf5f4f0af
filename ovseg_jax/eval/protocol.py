"""Evaluation protocols: how an image is resized and windowed, which prompts name the classes, and how the
background class is decided.

Background rules (`Protocol.background`):
- `threshold`: background has no text embedding (unless synonyms give it one); pixels whose best class
  score is below `background_threshold` are background (GroupViT's rule; its released values: VOC 0.95,
  Pascal Context 0.35, COCO-Object 0.95). A negative threshold is chosen on the dataset's tune split.
- `constant`: background scores a constant `background_score` everywhere and competes like a class.
- `exclude`: the "without background" protocol: background pixels of the labels are ignored and background
  is never predicted.
- `none`: every class, background included, competes by argmax (datasets without background, or a model
  that predicts background itself).
"""
from __future__ import annotations

from dataclasses import dataclass

import ml_collections
import numpy as np

from ovseg_jax.eval import prompts

BACKGROUND_MODES = ("threshold", "constant", "exclude", "none")


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
  batch_size: int  # Windows scored per call (one compiled program per protocol).
  synonyms: dict[str, tuple[str, ...]]
  # Classes the seen/unseen ensembles (MAFT eq. 1, EBSeg) treat as seen: the dataset's published zero-shot split,
  # set by `engine.dataset_protocol`; empty: every class is unseen.
  seen_classes: tuple[str, ...] = ()

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
