"""Ensembles of two or three per-mask class-probability sources, as the CLIP-based papers define them.

All take probabilities [..., K] over the same K classes (the segmenter's own scores and CLIP's) and return
scores [..., K]: geometric means with class-dependent weights, not renormalised (only the argmax and the
background threshold read them). `seen` [K] marks the classes of the training vocabulary; an all-False
`seen` (S-Seg trains on captions, not on classes) makes every class "unseen".

- OVSeg (Liang et al. 2023, eq. in sec. 3.3): p_seg^(1-l) * p_clip^l for every class.
- MAFT / "frozen CLIP" decoupling (supplement eq. 1): seen p_seg^l * p_clip^(1-l); unseen p_clip^l.
- EBSeg (supplement eqs. 4-5): three sources A, B, D; seen P_A^a P_B^b P_D^(1-a-b), new P_A^g P_B^b
  P_D^(1-g-b); the seen columns come from the first, the new columns from the second.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
from jax import Array

# Probabilities are floored before the logarithm so p = 0 with weight 0 gives p^0 = 1, and p = 0 with a
# positive weight gives a score that loses to any real candidate.
_FLOOR = 1e-12


def _weighted_geometric_mean(probs: tuple[Array, ...], weights: tuple[Array | float, ...]) -> Array:
  log = sum(jnp.asarray(w, jnp.float32) * jnp.log(jnp.maximum(p.astype(jnp.float32), _FLOOR))
            for p, w in zip(probs, weights))
  return jnp.exp(log)


def _columns(seen: Array, seen_value, unseen_value) -> Array:
  return jnp.where(jnp.asarray(seen, bool), seen_value, unseen_value)


def ovseg(p_seg: Array, p_clip: Array, clip_weight: float) -> Array:
  """p_seg^(1 - l) * p_clip^l, l = `clip_weight`."""
  return _weighted_geometric_mean((p_seg, p_clip), (1.0 - clip_weight, clip_weight))


def maft(p_seg: Array, p_clip: Array, seen: Array, weight: float) -> Array:
  """Seen classes p_seg^l * p_clip^(1-l); unseen classes p_clip^l (l = `weight`)."""
  seen_scores = _weighted_geometric_mean((p_seg, p_clip), (weight, 1.0 - weight))
  unseen_scores = _weighted_geometric_mean((p_clip,), (weight,))
  return _columns(seen, seen_scores, unseen_scores)


def ebseg(p_a: Array, p_b: Array, p_d: Array, seen: Array, alpha: float, beta: float, gamma: float) -> Array:
  """Seen columns P_A^alpha P_B^beta P_D^(1-alpha-beta), new columns P_A^gamma P_B^beta P_D^(1-gamma-beta)."""
  train = _weighted_geometric_mean((p_a, p_b, p_d), (alpha, beta, 1.0 - alpha - beta))
  new = _weighted_geometric_mean((p_a, p_b, p_d), (gamma, beta, 1.0 - gamma - beta))
  return _columns(seen, train, new)


@dataclass(frozen=True)
class EnsembleSpec:
  """A named ensemble and its weights, as selected by `classifier='ensemble:NAME'` in configs."""
  method: str  # 'ovseg' | 'maft' | 'ebseg'
  weight: float = 0.0  # OVSeg's lambda (CLIP's share) or MAFT's lambda.
  alpha: float = 0.0
  beta: float = 0.0
  gamma: float = 0.0


# Published defaults. OVSeg appendix C: 0.7 for ADE-150/847, 0.6 for Pascal Context; VOC uses 0.45 here
# (the appendix lists 0.6 for PAS-20). MAFT: lambda "usually 0.6-0.8"; 0.7 taken. EBSeg: the weights its
# supplement's Table 1 selects on ADE-150 (alpha 0.2, beta 0.7, gamma 0.0).
PUBLISHED = {
    "ovseg_ade": EnsembleSpec("ovseg", weight=0.7),
    "ovseg_context": EnsembleSpec("ovseg", weight=0.6),
    "ovseg_voc": EnsembleSpec("ovseg", weight=0.45),
    "maft": EnsembleSpec("maft", weight=0.7),
    "ebseg": EnsembleSpec("ebseg", alpha=0.2, beta=0.7, gamma=0.0),
}
