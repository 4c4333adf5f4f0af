"""Ensembles of per-mask class probabilities as the released code of OVSeg, MAFT and EBSeg computes them.

All take probabilities [..., K] over the same K classes and return per-mask class scores [..., K] in [0, 1].
`seen` [K] marks the classes of the training vocabulary (a dataset's published zero-shot split by default,
`eval.protocol`); `valid` [...] marks masks with at least one pixel above the mask threshold.

- OVSeg (facebookresearch/ov-seg, `open_vocab_seg/ovseg_model.py`, `semantic_inference`): p_seg^(1-l) p_clip^l
  for every class, p_clip = 1 for empty masks (no crop to classify).
- MAFT: the released eval config (`configs/coco-stuff-164k-156/eval.yaml`, CLIP_ENSEMBLE_WEIGHT 0.0) classifies
  with IP-CLIP's scores alone (`maft_ipclip`; IP-CLIP when the CLIP is a MAFT checkpoint, `models.ipclip`). The
  supplement's eq. 1, the "frozen CLIP" baseline it improves on, is `maft_frozen_clip`: seen p_seg^l p_clip^(1-l),
  unseen p_clip^l; `maft_ipclip_ensemble` is eq. 1 over the fine-tuned IP-CLIP's scores. (The released code's
  branch for a positive weight differs for unseen classes, p_seg^(1-l) p_clip^l; it is not the published baseline.)
- EBSeg (slonetime/EBSeg, `ebseg/model/EBSeg.py`, inference branch of `forward`), in the released notation: A the
  segmenter's own class probabilities, B its CLIP head's, D mask-pooled CLIP features'; seen
  A^(1-a-g) D^a B^g, unseen A^(1-b-g) D^b B^g; log(1e-8 + .), softmax over classes, times (1 - A's no-object
  probability). The supplement's eqs. 4-5 name the weights differently (alpha, beta, gamma on A, B, D).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import Array

# EBSeg adds 1e-8 before its logarithm (EBSeg.py), which also keeps the softmax defined when every score is 0.
_EBSEG_EPS = 1e-8


def _weighted_geometric_mean(probs: tuple[Array, ...], weights: tuple[float, ...]) -> Array:
  """prod_i p_i^w_i with torch.pow's zeros (0^0 = 1, 0^w = 0 for w > 0), as the released code multiplies them."""
  out = jnp.ones_like(probs[0], jnp.float32)
  for p, w in zip(probs, weights):
    out = out * jnp.power(p.astype(jnp.float32), jnp.float32(w))
  return out


def _columns(seen: Array, seen_value, unseen_value) -> Array:
  return jnp.where(jnp.asarray(seen, bool), seen_value, unseen_value)


def _mapped_back(p_clip: Array, valid: Array | None) -> Array:
  """CLIP's probabilities with 1 for masks that have no pixel to classify (OVSeg's and MAFT's `map_back`)."""
  return p_clip if valid is None else jnp.where(jnp.asarray(valid, bool)[..., None], p_clip, 1.0)


def ovseg(p_seg: Array, p_clip: Array, clip_weight: float, valid: Array | None = None) -> Array:
  """p_seg^(1 - l) * p_clip^l, l = `clip_weight`; empty masks (valid False) keep p_seg^(1 - l)."""
  return _weighted_geometric_mean((p_seg, _mapped_back(p_clip, valid)), (1.0 - clip_weight, clip_weight))


def maft_frozen_clip(p_seg: Array, p_clip: Array, seen: Array, weight: float, valid: Array | None = None) -> Array:
  """MAFT supplement eq. 1: seen classes p_seg^l * p_clip^(1-l); unseen classes p_clip^l (l = `weight`)."""
  p_clip = _mapped_back(p_clip, valid)
  seen_scores = _weighted_geometric_mean((p_seg, p_clip), (weight, 1.0 - weight))
  unseen_scores = _weighted_geometric_mean((p_clip,), (weight,))
  return _columns(seen, seen_scores, unseen_scores)


def ebseg(p_a: Array, p_b: Array, p_d: Array, seen: Array, a: float, b: float, g: float,
          no_object_a: Array | None = None) -> Array:
  """EBSeg's released combination: seen A^(1-a-g) D^a B^g, unseen A^(1-b-g) D^b B^g, then softmax over classes
  of log(1e-8 + .) and times (1 - `no_object_a`), A's no-object probability [...] (None: A has no such class)."""
  seen_scores = _weighted_geometric_mean((p_a, p_d, p_b), (1.0 - a - g, a, g))
  unseen_scores = _weighted_geometric_mean((p_a, p_d, p_b), (1.0 - b - g, b, g))
  scores = jax.nn.softmax(jnp.log(_EBSEG_EPS + _columns(seen, seen_scores, unseen_scores)), axis=-1)
  return scores if no_object_a is None else scores * (1.0 - no_object_a.astype(jnp.float32))[..., None]


@dataclass(frozen=True)
class EnsembleSpec:
  """A named ensemble and its weights, as selected by `classifier='ensemble:NAME'` in configs."""
  method: str  # 'ovseg' | 'clip_only' | 'maft_frozen_clip' | 'ebseg'
  weight: float = 0.0  # OVSeg's lambda (CLIP's share) or MAFT eq. 1's lambda.
  a: float = 0.0  # EBSeg's released (alpha, beta, gamma): D's share for seen, D's share for unseen, B's share.
  b: float = 0.0
  g: float = 0.0
  note: str = ""  # Shown beside the results row: what the row stands for, and any stand-in it uses.
  ipclip: bool = False  # CLIP scores from IP-CLIP when the CLIP is a MAFT checkpoint.


_EBSEG_B_STAND_IN = ("on another segmenter, masked-crop CLIP scores are a stand-in for B (EBSeg's own CLIP head) and D "
                     "is mask-pooled dense CLIP; an EBSeg checkpoint uses its own A, B and D (methods/ebseg/inference.py)")

PUBLISHED = {
    # OVSeg appendix C: lambda 0.7 for A-150 and A-847 (also CLIP_ENSEMBLE_WEIGHT of the released configs).
    "ovseg_ade": EnsembleSpec("ovseg", weight=0.7, note="OVSeg ensemble, lambda 0.7 (appendix C, ADE-150/847)"),
    # OVSeg appendix C: lambda 0.6 for PC-59 and PC-459.
    "ovseg_context": EnsembleSpec("ovseg", weight=0.6, note="OVSeg ensemble, lambda 0.6 (appendix C, PC-59/459)"),
    # OVSeg appendix C: lambda 0.6 for PAS-20.
    "ovseg_voc": EnsembleSpec("ovseg", weight=0.6, note="OVSeg ensemble, lambda 0.6 (appendix C, PAS-20)"),
    # MAFT's released eval.yaml: CLIP_ENSEMBLE_WEIGHT 0.0, the class scores are IP-CLIP's alone.
    "maft_ipclip": EnsembleSpec("clip_only", ipclip=True,
                                note="MAFT as released: CLIP scores alone (eval.yaml weight 0.0), from IP-CLIP when "
                                "clip.checkpoint is a MAFT workdir, else from masked crops of a frozen CLIP"),
    # Eq. 1 over the fine-tuned IP-CLIP (lambda 0.8 as for the frozen baseline below).
    "maft_ipclip_ensemble": EnsembleSpec("maft_frozen_clip", weight=0.8, ipclip=True,
                                         note="MAFT supplement eq. 1 over IP-CLIP's scores, lambda 0.8 (masked "
                                         "crops of a frozen CLIP unless clip.checkpoint is a MAFT workdir)"),
    # MAFT supplement eq. 1 ("lambda usually 0.6-0.8"); 0.8 is the released code's default CLIP_ENSEMBLE_WEIGHT
    # (freeseg/config.py).
    "maft_frozen_clip": EnsembleSpec("maft_frozen_clip", weight=0.8,
                                     note="MAFT supplement eq. 1, the frozen-CLIP baseline, lambda 0.8"),
    # EBSeg.py: (alpha, beta, gamma) = (0.09, 0.3, 0.7) with CLIP ViT-B/16.
    "ebseg_vitb": EnsembleSpec("ebseg", a=0.09, b=0.3, g=0.7,
                               note=f"EBSeg released weights for ViT-B/16 (0.09, 0.3, 0.7); {_EBSEG_B_STAND_IN}"),
    # EBSeg.py: (alpha, beta, gamma) = (0.12, 0.4, 0.6) with CLIP ViT-L/14 at 336.
    "ebseg_vitl": EnsembleSpec("ebseg", a=0.12, b=0.4, g=0.6,
                               note=f"EBSeg released weights for ViT-L/14-336 (0.12, 0.4, 0.6); {_EBSEG_B_STAND_IN}"),
}
