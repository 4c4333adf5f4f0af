"""The rows of the open-vocabulary demo's table: which classifier names the proposal model's masks, with which
stage's CLIP. A CLIP-based method adds its stage to `demo.STAGES` (a function writing a CLIP training workdir in
the seed's directory) and its rows here; every row is evaluated on the same proposals, images and seeds."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  # 'learned' (the proposal model's own head), 'clip_crop' (the CLIP's masked crops alone) or 'ensemble' (the demo
  # config's `ensemble` of both, OVSeg's by default).
  classifier: str
  clip_stage: str = ""  # The stage whose CLIP workdir classifies (its directory name in the seed's directory).


ROWS: list[Row] = [
    Row("Mask2Former head (seen classes only)", "learned"),
    Row("frozen demo CLIP", "clip_crop", "clip"),
    Row("fine-tuned CLIP (masked crops)", "clip_crop", "finetune"),
    Row("fine-tuned CLIP + mask prompts", "clip_crop", "prompts"),
    Row("OVSeg ensemble, frozen demo CLIP", "ensemble", "clip"),
    Row("OVSeg ensemble, fine-tuned CLIP", "ensemble", "finetune"),
    Row("OVSeg ensemble, fine-tuned CLIP + mask prompts", "ensemble", "prompts"),
]


def clip_stages(rows: list[Row]) -> list[str]:
  """The stages whose CLIPs the rows use, in order of first use."""
  return list(dict.fromkeys(r.clip_stage for r in rows if r.clip_stage))
