"""The rows of the open-vocabulary demo's table: which classifier names the proposal model's masks, with which
stage's CLIP, or which stage segments by itself. A method adds its stage to `demo.STAGES` and its rows here; every
row is evaluated on the same images and seeds, and every row but a self-segmenting method's on the same
proposals."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  # 'learned' (the proposal model's own head), 'clip_crop' (the CLIP's masked crops alone), 'ensemble' (the demo
  # config's `ensemble` of both, OVSeg's by default) or a named classifier ('ensemble:maft_ipclip'; for a
  # segmenting stage, one of its own classifiers).
  classifier: str
  clip_stage: str = ""  # The stage whose CLIP workdir classifies (its directory name in the seed's directory).
  segmenter: str = "proposals"  # Whose masks: the proposal model's, or a stage that segments by itself (EBSeg).


ROWS: list[Row] = [
    Row("Mask2Former head (seen classes only)", "learned"),
    Row("frozen demo CLIP", "clip_crop", "clip"),
    Row("fine-tuned CLIP (masked crops)", "clip_crop", "finetune"),
    Row("fine-tuned CLIP + mask prompts", "clip_crop", "prompts"),
    Row("OVSeg ensemble, frozen demo CLIP", "ensemble", "clip"),
    Row("OVSeg ensemble, fine-tuned CLIP", "ensemble", "finetune"),
    Row("OVSeg ensemble, fine-tuned CLIP + mask prompts", "ensemble", "prompts"),
    # MAFT: the frozen-CLIP baseline of its supplement (eq. 1), then its IP-CLIP as released (scores alone) and
    # in eq. 1.
    Row("eq. 1 (lambda 0.8), frozen demo CLIP", "ensemble:maft_frozen_clip", "clip"),
    Row("MAFT IP-CLIP", "ensemble:maft_ipclip", "maft"),
    Row("MAFT IP-CLIP, eq. 1 (lambda 0.8)", "ensemble:maft_ipclip_ensemble", "maft"),
    # EBSeg names its own masks: its released three-way combination and its segmenter's embedding A alone.
    Row("EBSeg, its own masks (A, B, D combined)", "learned", segmenter="ebseg"),
    Row("EBSeg, its own masks (embedding A)", "embedding_a", segmenter="ebseg"),
]


def clip_stages(rows: list[Row]) -> list[str]:
  """The stages whose CLIPs the rows use, in order of first use."""
  return list(dict.fromkeys(r.clip_stage for r in rows if r.clip_stage))
