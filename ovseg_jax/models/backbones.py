"""Image backbones by name (`model.backbone` of a config): Swin-T/S/B, ViT S/16 ... L/14, or a custom ViT.

Every backbone maps NHWC images to `{stride: NHWC map}`, so decoders do not care which one they get.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ovseg_jax.models import swin
from ovseg_jax.models.vit import ViTBackbone

# name -> (patch_size, width, depth, num_heads); MLP width 4x. ViT-S/B/L as released (DeiT/CLIP/DINO sizes).
VIT_VARIANTS = {
    "S/16": (16, 384, 12, 6), "S/8": (8, 384, 12, 6), "B/16": (16, 768, 12, 12), "B/8": (8, 768, 12, 12),
    "L/14": (14, 1024, 24, 16),
}
_CUSTOM_VIT = ("patch_size", "width", "depth", "num_heads", "mlp_dim")
_CUSTOM_VIT = ("patch_size", "width", "depth", "num_heads", "mlp_dim")


def checked_section(section: Mapping[str, Any], where: str, required: tuple[str, ...],
                    optional: Mapping[str, Any]) -> dict[str, Any]:
  """The config section as a dict with defaults filled in; missing or unknown keys are refused by name."""
  section = dict(section)
  missing = [k for k in required if k not in section]
  unknown = sorted(set(section) - set(required) - set(optional))
  if missing or unknown:
    raise ValueError(f"{where}: missing keys {missing}, unknown keys {unknown}; expected {list(required)} "
                     f"and optionally {list(optional)}.")
  return {**optional, **section}


def build_backbone(cfg: Mapping[str, Any], conv_dim: int, dtype: Any = jnp.float32) -> nn.Module:
  """`model.backbone`: {name: 'Swin-T'|'Swin-S'|'Swin-B'|'S/16'|'S/8'|'B/16'|'B/8'|'L/14'} (+ drop_path_rate for
  Swin), or a custom ViT {patch_size, width, depth, num_heads, mlp_dim}; optional `checkpoint` (pretrained
  weights, `ovseg_jax.weights.backbones.read_backbone_checkpoint` reads them)."""
  cfg = dict(cfg)
  name = cfg.pop("name", None)
  cfg.pop("checkpoint", None)
  if name in swin.VARIANTS:
    b = checked_section(cfg, f"model.backbone ({name})", (), {"drop_path_rate": 0.0})
    return swin.swin(name, drop_path_rate=b["drop_path_rate"], dtype=dtype)
  if name in VIT_VARIANTS:
    checked_section(cfg, f"model.backbone ({name})", (), {})
    patch, width, depth, heads = VIT_VARIANTS[name]
    return ViTBackbone(patch, width, depth, heads, 4 * width, out_dim=conv_dim, dtype=dtype)
  if name is not None:
    raise ValueError(f"model.backbone.name={name!r}: use one of {sorted(swin.VARIANTS) + sorted(VIT_VARIANTS)}, "
                     f"or no name and the custom ViT keys {list(_CUSTOM_VIT)}.")
  b = checked_section(cfg, "model.backbone", _CUSTOM_VIT, {})
  return ViTBackbone(b["patch_size"], b["width"], b["depth"], b["num_heads"], b["mlp_dim"], out_dim=conv_dim,
                     dtype=dtype)
