"""Swin backbone weights from the files users have -> params of `ovseg_jax.models.swin.Swin`.

Reads the released Swin checkpoints (`swin_small_patch4_window7_224.pth`: weights under `model`, patch
merging at the end of stages 0-2), timm's layout (patch merging at the start of stages 1-3) and MaskFormer
checkpoints (`backbone.` prefix, with per-stage output norms `norm0..3`), as `.pth`, `.bin` or `.safetensors`.
Classifier parts (`head`, the final `norm`) and derived buffers (position indices, masks) are skipped; output
norms absent from the file keep their initial values, as when MaskFormer starts from an ImageNet checkpoint.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ovseg_jax.models.swin import VARIANTS
import ovseg_jax.weights.convert as convert
import ovseg_jax.weights.torch_files as torch_files

_IGNORED = re.compile(r"head\.|norm\.|layers\.\d+\.blocks\.\d+\.(attn_mask|attn\.relative_position_index)$")


def _unwrap(obj: Any, path: Path) -> dict[str, np.ndarray]:
  for key in ("model", "state_dict"):
    if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
      obj = obj[key]
  if not isinstance(obj, Mapping) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    raise ValueError(f"{path}: expected a Swin state dict of tensors (possibly under 'model'), found "
                     f"{list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__}.")
  state = {}
  for key, value in obj.items():
    if key.startswith("sem_seg_head.") or key.startswith("criterion."):
      continue  # The rest of a MaskFormer checkpoint.
    state[key.removeprefix("module.").removeprefix("backbone.")] = value
  return state


def _expected(embed_dim: int, depths: tuple[int, ...], window: int, merge_offset: int,
              heads: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
  """Every key of a backbone with patch merging stored under stage `s + merge_offset` (0: released, 1: timm)."""
  shapes = {"patch_embed.proj.weight": (embed_dim, 3, 4, 4), "patch_embed.proj.bias": (embed_dim,),
            "patch_embed.norm.weight": (embed_dim,), "patch_embed.norm.bias": (embed_dim,)}
  for s, (depth, h) in enumerate(zip(depths, heads)):
    c = embed_dim * 2 ** s
    for b in range(depth):
      p = f"layers.{s}.blocks.{b}"
      shapes.update({f"{p}.norm1.weight": (c,), f"{p}.norm1.bias": (c,), f"{p}.norm2.weight": (c,),
                     f"{p}.norm2.bias": (c,), f"{p}.attn.qkv.weight": (3 * c, c), f"{p}.attn.qkv.bias": (3 * c,),
                     f"{p}.attn.proj.weight": (c, c), f"{p}.attn.proj.bias": (c,),
                     f"{p}.attn.relative_position_bias_table": ((2 * window - 1) ** 2, h),
                     f"{p}.mlp.fc1.weight": (4 * c, c), f"{p}.mlp.fc1.bias": (4 * c,),
                     f"{p}.mlp.fc2.weight": (c, 4 * c), f"{p}.mlp.fc2.bias": (c,)})
    if s < len(depths) - 1:
      d = f"layers.{s + merge_offset}.downsample"
      shapes.update({f"{d}.norm.weight": (4 * c,), f"{d}.norm.bias": (4 * c,), f"{d}.reduction.weight": (2 * c, 4 * c)})
  return shapes


def read_swin(path: str | Path, embed_dim: int, depths: tuple[int, ...], heads: tuple[int, ...],
              window: int = 7) -> dict[str, Any]:
  """Params for `models.swin.Swin(embed_dim, depths, heads, window)` (`VARIANTS` holds the released sizes);
  output norms only if the file has them (`norm0..3`)."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file; expected a Swin checkpoint (.pth, .bin or .safetensors).")
  state = _unwrap(torch_files.load_tensors(path), path)
  what = next((f"{name} " for name, v in VARIANTS.items() if v == (embed_dim, tuple(depths), tuple(heads))), "")
  return _read(path, state, embed_dim, tuple(depths), tuple(heads), window, f"{what}(embed {embed_dim}, depths "
               f"{tuple(depths)})")


def _read(path: Path, state: Mapping[str, np.ndarray], embed_dim: int, depths: tuple[int, ...],
          heads: tuple[int, ...], window: int, what: str) -> dict[str, Any]:
  merge_offset = 1 if f"layers.{len(depths) - 1}.downsample.reduction.weight" in state else 0
  output_norms = {f"norm{i}.{p}" for i in range(len(depths)) for p in ("weight", "bias")}
  expected = _expected(embed_dim, depths, window, merge_offset, heads)
  present_norms = {k: (embed_dim * 2 ** int(k[4]),) for k in output_norms if k in state}
  convert.check_keys(state, {**expected, **present_norms}, _IGNORED, path, f"a {what} Swin state dict")
  params = {"patch_embed_proj": convert.conv(state, "patch_embed.proj"),
            "patch_embed_norm": convert.layer_norm(state, "patch_embed.norm")}
  for s, depth in enumerate(depths):
    for b in range(depth):
      p = f"layers.{s}.blocks.{b}"
      params[f"layers_{s}_blocks_{b}"] = {
          "norm1": convert.layer_norm(state, f"{p}.norm1"), "norm2": convert.layer_norm(state, f"{p}.norm2"),
          "attn": {"qkv": convert.dense(state, f"{p}.attn.qkv"), "proj": convert.dense(state, f"{p}.attn.proj"),
                   "relative_position_bias_table": convert.f32(state[f"{p}.attn.relative_position_bias_table"])},
          "mlp": {"dense_0": convert.dense(state, f"{p}.mlp.fc1"), "dense_1": convert.dense(state, f"{p}.mlp.fc2")}}
    if s < len(depths) - 1:
      d = f"layers.{s + merge_offset}.downsample"
      params[f"layers_{s}_downsample"] = {"norm": convert.layer_norm(state, f"{d}.norm"),
                                          "reduction": convert.dense(state, f"{d}.reduction", bias=False)}
    if f"norm{s}.weight" in state:
      params[f"norm{s}"] = convert.layer_norm(state, f"norm{s}")
  return params
