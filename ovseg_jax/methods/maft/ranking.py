"""What MAFT trains for, measured on labelled held-out images: for every ground-truth class segment, how IP-CLIP's
probabilities of that class over the frozen proposals rank them against their IoU with the segment (Spearman's
rho per segment, averaged), and the mask-aware loss itself (`objective.mask_aware_loss`). Seen and unseen
classes are reported apart."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from ovseg_jax.eval import classify, mask_scores, prompts
from ovseg_jax.methods.maft import objective
from ovseg_jax.methods.maft.evaluation import Proposals
from ovseg_jax.models.ipclip import ipclip_embeddings


def _targets(labels: np.ndarray, max_targets: int) -> tuple[np.ndarray, np.ndarray]:
  """Label maps [B, H, W] -> (segment-index maps, classes [B, M] padded with -1): one target per class present."""
  segments = np.full(labels.shape, -1, np.int32)
  classes = np.full((len(labels), max_targets), -1, np.int32)
  for i, label in enumerate(labels):
    for t, c in enumerate(np.unique(label)[:max_targets]):
      segments[i][label == c] = t
      classes[i, t] = c
  return segments, classes


def proposal_ranking(proposals: Proposals, clip: Any, clip_params: Any, images: np.ndarray, labels: np.ndarray,
                     class_names: list[str], seen: set[str], settings: objective.MaftSettings,
                     templates: str | tuple[str, ...], batch: int = 32) -> dict[str, float]:
  """Mean Spearman rho (class probability vs IoU over the proposals, per segment) overall / seen / unseen, and the
  mask-aware loss, of uint8 images [n, S, S, 3] with label maps [n, S, S] (ids into `class_names`)."""
  text = mask_scores.class_text_embeddings(clip, clip_params, class_names, prompts.templates(templates),
                                           clip.architecture.context_length)

  @jax.jit
  def score(images, segments, classes):
    masks = objective.proposal_masks(proposals.model, proposals.params, images)
    emb = ipclip_embeddings(settings.architecture, clip_params["visual"],
                            objective.clip_input(images, settings.input_size), masks, settings.start_layers)
    probs = classify.class_probs(emb, text)
    loss, ious = objective.mask_aware_loss(probs, masks, segments, classes)
    return loss, jnp.swapaxes(probs, 1, 2), ious

  rhos, is_seen, losses, counts = [], [], [], []
  max_targets = int(max(len(np.unique(label)) for label in labels))
  for start in range(0, len(images), batch):
    segments, classes = _targets(labels[start:start + batch], max_targets)
    loss, probs, ious = (np.asarray(a) for a in score(jnp.asarray(images[start:start + batch]),
                                                      jnp.asarray(segments), jnp.asarray(classes)))
    losses.append(float(loss) * np.sum(classes >= 0))
    counts.append(np.sum(classes >= 0))
    for i, t in zip(*np.nonzero(classes >= 0)):
      prob, iou = probs[i, classes[i, t]], ious[i, t]
      if np.ptp(prob) > 0 and np.ptp(iou) > 0:  # Spearman's rho is undefined for a constant ranking.
        rhos.append(stats.spearmanr(prob, iou).statistic)
        is_seen.append(class_names[classes[i, t]] in seen)
  rhos, is_seen = np.asarray(rhos), np.asarray(is_seen, bool)
  return {"spearman": float(np.mean(rhos)), "spearman_seen": float(np.mean(rhos[is_seen])),
          "spearman_unseen": float(np.mean(rhos[~is_seen])) if np.any(~is_seen) else float("nan"),
          "mask_aware_loss": float(np.sum(losses) / np.sum(counts)), "segments": int(len(rhos))}
