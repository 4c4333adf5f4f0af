"""Open-vocabulary prediction with a mask-classification model that has a text tower (S-Seg): class names are
embedded by the model's own text tower, masks are classified by them (or by a CLIP classifier or ensemble,
`ovseg_jax.eval.classify`), and the per-pixel scores are slid over images by a `WindowPredictor`. A mask model with
a fixed class head (supervised Mask2Former) proposes masks the same way for CLIP classifiers (`proposal_predictor`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ovseg_jax.eval import classify, mask_scores
from ovseg_jax.eval.protocol import Protocol, text_classes
from ovseg_jax.eval.windows import WindowPredictor
from ovseg_jax.ops.normalize import normalize_images
from ovseg_jax.weights import load_clip


@dataclass(frozen=True)
class ClipSetup:
  """A loaded CLIP and how it classifies masks (`ovseg_jax.eval.classify`)."""
  module: Any
  params: Any
  crop_size: int
  mask_threshold: float = 0.5
  # The classes the seen/unseen ensembles treat as seen; empty: the dataset's published zero-shot split if it has
  # one (`Protocol.seen_classes`), else none. S-Seg trains on captions, so its "seen" is the benchmark's split.
  seen_classes: tuple[str, ...] = ()
  no_object_logit: float | None = None  # A fixed "no object" class for CLIP's softmax (None: off).
  ipclip: tuple[int, int] | None = None  # A MAFT IP-CLIP's (start_layers, input_size); None: a plain CLIP.


def load_clip_setup(cfg: ml_collections.ConfigDict) -> ClipSetup | None:
  """An eval config's `clip` section -> a loaded CLIP, or None without a checkpoint."""
  if not cfg.get("checkpoint"):
    return None
  module, params = load_clip(Path(cfg.checkpoint).expanduser(), activation=cfg.get("activation") or None)
  no_object = cfg.get("no_object_logit", -1.0)
  return ClipSetup(module, params, cfg.get("crop_size") or module.architecture.image_size,
                   cfg.get("mask_threshold", 0.5), tuple(cfg.get("seen_classes", ())),
                   None if no_object < 0 else no_object)


def open_vocabulary_predictor(model: Any, params: Any, class_names: tuple[str, ...], background_id: int | None,
                              protocol: Protocol, context_length: int, classifier: str = "learned",
                              clip: ClipSetup | None = None) -> WindowPredictor:
  """A window predictor over `class_names` for a model with `encode_image` (masks and mask embeddings),
  `encode_text` and `logit_scale` methods."""
  if classifier != "learned" and clip is None:
    raise ValueError(f"classifier {classifier!r} needs a CLIP: set clip.checkpoint in the eval config "
                     "(pseudo_labels.clip.checkpoint in a self-training config).")
  class_ids = text_classes(class_names, background_id, protocol)
  names = [class_names[i] for i in class_ids]
  prompt_names, groups = mask_scores.expand_synonyms(names, protocol.synonyms)
  text = mask_scores.class_text_embeddings(model, params, prompt_names, protocol.templates, context_length)
  groups = jnp.asarray(groups)
  reclassify, details = None, {}
  if classifier != "learned":
    clip_text = mask_scores.class_text_embeddings(clip.module, clip.params, prompt_names, protocol.templates,
                                                  clip.module.architecture.context_length)
    seen_names = set(clip.seen_classes or protocol.seen_classes)
    seen = jnp.asarray([n in seen_names for n in names])
    reclassify = classify.make_reclassifier(classifier, clip.module, clip.params, clip_text, groups, seen,
                                            clip.crop_size, clip.mask_threshold, no_object_logit=clip.no_object_logit,
                                            ipclip=clip.ipclip)
    details = _classifier_details(classifier, [n for n in names if n in seen_names], clip.seen_classes, protocol)
  segmenter = mask_scores.make_segmenter(model, protocol.decode, reclassify)
  return WindowPredictor(lambda p, t, g, windows: segmenter(p, windows, t, g), (params, text, groups), class_ids,
                         background_id, protocol, details)


def _classifier_details(classifier: str, seen: list[str], configured: tuple[str, ...], protocol: Protocol,
                        configured_source: str = "clip.seen_classes of the eval config") -> dict[str, Any]:
  """Results-row entries saying what a CLIP classifier's row stands for and which classes it counted as seen."""
  details = {"classifier_note": classify.classifier_note(classifier)} if classify.classifier_note(classifier) else {}
  if classify.uses_seen_classes(classifier):
    source = (configured_source if configured else
              "the dataset's published zero-shot split" if protocol.seen_classes else "none: every class unseen")
    details.update(ensemble_seen_classes=seen, ensemble_seen_source=source)
  return details


def proposal_predictor(outputs: Any, params: Any, own_classes: tuple[str, ...], class_names: tuple[str, ...],
                       background_id: int | None, protocol: Protocol, classifier: str = "learned",
                       clip: ClipSetup | None = None) -> WindowPredictor:
  """A window predictor over `class_names` for a mask model with a fixed class head (a supervised Mask2Former's
  K+1 head over `own_classes`): `outputs(params, windows uint8 [B,S,S,3]) -> (mask_logits [B,N,h,w], class
  probabilities [B,N,K] over own_classes, no-object probability [B,N])`.

  Alone ('learned') the head never names a class it was not trained on. For the ensembles its score of such a
  class is its no-object probability shared evenly among those classes (the mass it gives to "none of my
  classes"), so OVSeg's geometric ensemble can still name a held-out class by CLIP; the seen/unseen ensembles count
  the model's own classes as seen."""
  if classifier != "learned" and clip is None:
    raise ValueError(f"classifier {classifier!r} needs a CLIP: give a CLIP file or CLIP training workdir.")
  class_ids = text_classes(class_names, background_id, protocol)
  names = [class_names[i] for i in class_ids]
  known = jnp.asarray([n in own_classes for n in names])
  num_unknown = max(len(names) - int(known.sum()), 1)
  columns = jnp.asarray([own_classes.index(n) if n in own_classes else 0 for n in names])
  reclassify, details = None, {}
  if classifier != "learned":
    prompt_names, groups = mask_scores.expand_synonyms(names, protocol.synonyms)
    clip_text = mask_scores.class_text_embeddings(clip.module, clip.params, prompt_names, protocol.templates,
                                                  clip.module.architecture.context_length)
    reclassify = classify.make_reclassifier(classifier, clip.module, clip.params, clip_text, jnp.asarray(groups),
                                            known, clip.crop_size, clip.mask_threshold,
                                            no_object_logit=clip.no_object_logit, ipclip=clip.ipclip)
    details = _classifier_details(classifier, [n for n in names if n in own_classes], own_classes, protocol,
                                  "the proposal model's training classes")
    if classifier.startswith("ensemble:"):
      details["classifier_note"] = (details.get("classifier_note", "") + "; the proposal model's score of a class "
                                    "it was not trained on is its no-object probability shared evenly")

  def score(p, windows):
    mask_logits, probs, no_object = outputs(p, windows)
    unknown_share = 0.0 if reclassify is None else no_object[..., None] / num_unknown
    class_prob = jnp.where(known, probs[..., columns], unknown_share)
    if reclassify is not None:
      class_prob = reclassify(class_prob, normalize_images(windows), mask_logits)
    return mask_scores.pixel_scores(mask_logits, class_prob, windows.shape[1:3], protocol.decode)
  return WindowPredictor(jax.jit(score), (params,), class_ids, background_id, protocol, details)
