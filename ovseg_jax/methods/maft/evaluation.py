"""MAFT's inference as engine candidates: the frozen Mask2Former's proposals classified by IP-CLIP over any class
names, with IP-CLIP's scores alone (the released eval.yaml, CLIP_ENSEMBLE_WEIGHT 0.0) and with the supplement's
eq. 1 ensemble (seen classes p_seg^l p_clip^(1-l), unseen p_clip^l, l = 0.8); then MaskFormer's semantic
inference (sum over proposals of class score x mask probability).

The same candidates with the original CLIP weights are the frozen-CLIP baseline, so a run's table shows what the
fine-tuning changed. The Mask2Former's head knows only its training classes: for eq. 1 its probabilities fill the
seen columns, and unseen columns use CLIP alone."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ovseg_jax.eval import classify, engine, ensembles, mask_scores, prompts
from ovseg_jax.eval.windows import WindowPredictor
from ovseg_jax.ops.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize_images

ENSEMBLE = ensembles.PUBLISHED["maft_ipclip_ensemble"]


@dataclasses.dataclass(frozen=True)
class Proposals:
  """The frozen proposal generator and its training classes (the columns of its K+1 head)."""
  model: Any
  params: Any
  classes: tuple[str, ...]


def proposal_scores(proposals: Proposals, windows: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(class probabilities without no-object [B, Q, K_train], mask logits [B, Q, h, w]) of uint8 windows."""
  out = proposals.model.apply({"params": proposals.params},
                              normalize_images(windows, IMAGENET_MEAN, IMAGENET_STD))
  return jax.nn.softmax(out["pred_logits"].astype(jnp.float32), axis=-1)[..., :-1], out["pred_masks"]


def _semantic(cls: jax.Array, mask_logits: jax.Array, hw: tuple[int, int]) -> jax.Array:
  masks = jax.image.resize(mask_logits.astype(jnp.float32), (*mask_logits.shape[:2], *hw), "bilinear")
  return jnp.einsum("bqk,bqhw->bkhw", cls, jax.nn.sigmoid(masks))


def candidates(proposals: Proposals, clip: Any, clip_params: Any, start_layers: int, input_size: int,
               templates: str | tuple[str, ...], name: str) -> list[engine.Candidate]:
  """'NAME: IP-CLIP' and 'NAME: eq. 1' rows over any dataset's classes (background, where the dataset has it, is
  a class like any other: the protocol's background rule is replaced by 'none')."""
  def make(ensemble: bool):
    def build(info, protocol):
      class_ids = list(range(len(info.class_names)))
      prompt_names, groups = mask_scores.expand_synonyms(list(info.class_names), protocol.synonyms)
      text = mask_scores.class_text_embeddings(clip, clip_params, prompt_names, prompts.templates(templates),
                                               clip.architecture.context_length)
      groups = jnp.asarray(groups)
      seen = np.asarray([n in proposals.classes for n in info.class_names])
      columns = np.asarray([proposals.classes.index(n) if n in proposals.classes else 0 for n in info.class_names])

      def score(params, windows):
        p_seg, mask_logits = proposal_scores(dataclasses.replace(proposals, params=params[0]), windows)
        images = normalize_images(windows)
        p_clip = classify.ipclip_class_probs(clip, params[1], images, mask_logits, params[2], start_layers,
                                             input_size) @ groups
        if ensemble:
          valid = jnp.any(classify.binary_masks(mask_logits, windows.shape[1:3], 0.5), axis=(-2, -1))
          p_seg = jnp.where(jnp.asarray(seen), p_seg[..., columns], 0.0)
          p_clip = ensembles.maft_frozen_clip(p_seg, p_clip, jnp.asarray(seen), ENSEMBLE.weight, valid)
        return _semantic(p_clip, mask_logits, windows.shape[1:3])
      return WindowPredictor(jax.jit(score), ((proposals.params, clip_params, text),), class_ids,
                             info.background_index, dataclasses.replace(protocol, background="none"))
    return build
  return [engine.Candidate(f"{name}: IP-CLIP", make(False)),
          engine.Candidate(f"{name}: eq. 1 (lambda {ENSEMBLE.weight})", make(True))]
