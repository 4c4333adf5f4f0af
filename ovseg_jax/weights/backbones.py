"""Pretrained weights for a config's backbone (`model.backbone.checkpoint`)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ovseg_jax.models import swin
from ovseg_jax.weights.swin import read_swin


def read_backbone_checkpoint(cfg: Mapping[str, Any]) -> dict[str, Any] | None:
  """Backbone params read from `model.backbone.checkpoint` (released / timm / MaskFormer Swin files), or None."""
  path, name = cfg.get("checkpoint"), cfg.get("name")
  if not path:
    return None
  if name not in swin.VARIANTS:
    raise ValueError(f"model.backbone.checkpoint is supported for Swin backbones {sorted(swin.VARIANTS)}, not "
                     f"{name!r}; drop the checkpoint or choose a Swin.")
  return read_swin(Path(path).expanduser(), *swin.VARIANTS[name])
