"""SAM image-encoder weights from the files users have -> `ovseg_jax.models.sam.SamImageEncoder` and its params.

Reads Meta's checkpoints (`sam_vit_b_01ec64.pth`: the whole SAM state dict, the encoder under
`image_encoder.`; the prompt encoder and mask decoder are skipped), bare image-encoder state dicts (`.pth`,
`.bin` or `.safetensors`) and Hugging Face `SamModel` / `SamVisionModel` directories (config.json with
model.safetensors or pytorch_model.bin, possibly sharded; the encoder under `vision_encoder.`).

Meta's files hold no config: the architecture is read from the tensors. The window size and the global
blocks come from the relative-position tables (a windowed block's table has 2 * window - 1 rows, a global
block's 2 * grid - 1); a file without those tables must match a released size (ViT-B/L/H). Hugging Face
keys are renamed to Meta's, so one map leads to the Flax params; every key and shape is checked first and
all problems are reported at once.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from ovseg_jax.models.layers import DType
from ovseg_jax.models.sam import SAM_VARIANTS, SamImageEncoder
import ovseg_jax.weights.convert as convert
import ovseg_jax.weights.torch_files as torch_files
from ovseg_jax.weights.hf_directory import read_hf_directory

# Parts of a SAM checkpoint around the image encoder.
_META_IGNORED = re.compile(r"prompt_encoder\.|mask_decoder\.|pixel_(mean|std)$")
_HF_IGNORED = re.compile(r"prompt_encoder\.|mask_decoder\.|shared_image_embedding\.")
# SamVisionConfig's defaults (transformers), which config.json files may leave out.
_HF_VISION_DEFAULTS = dict(hidden_size=768, output_channels=256, num_hidden_layers=12, num_attention_heads=12,
                           num_channels=3, image_size=1024, patch_size=16, hidden_act="gelu", layer_norm_eps=1e-6,
                           qkv_bias=True, mlp_ratio=4.0, use_abs_pos=True, use_rel_pos=True, window_size=14,
                           global_attn_indexes=[2, 5, 8, 11], mlp_dim=None)


def load_sam_image_encoder(path: str | Path, *, dtype: DType = jnp.float32) -> tuple[SamImageEncoder, dict[str, Any]]:
  """SAM's image encoder and its params from a Meta SAM `.pth` (or a bare encoder state dict) or a Hugging
  Face SamModel directory. Use as `module.apply({'params': params}, images)` with NHWC images normalised
  with SAM's pixel mean and std."""
  path = Path(path).expanduser()
  if path.is_dir():
    module, state = _read_hf_directory(path)
  elif path.is_file():
    module, state = _read_meta_file(path)
  else:
    raise FileNotFoundError(f"{path}: no such file or directory; expected Meta's SAM checkpoint (e.g. "
                            "sam_vit_b_01ec64.pth) or a Hugging Face SamModel directory (e.g. facebook/sam-vit-base).")
  return module.clone(dtype=dtype), _to_params(state, module)


def _state_dict(obj: Any, path: Path) -> dict[str, np.ndarray]:
  if not isinstance(obj, Mapping) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    found = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
    raise ValueError(f"{path}: expected a SAM state dict of tensors, found {found}.")
  return dict(obj)


def _read_meta_file(path: Path) -> tuple[SamImageEncoder, dict[str, np.ndarray]]:
  state = _state_dict(torch_files.load_tensors(path), path)
  if any(k.startswith("vision_encoder.") for k in state):
    raise ValueError(f"{path}: holds Hugging Face SamModel weights; pass the directory that holds this file and "
                     "its config.json instead.")
  if any(k.startswith("image_encoder.") for k in state):  # A whole SAM: keep only the image encoder.
    state = {k.removeprefix("image_encoder."): v for k, v in state.items() if k.startswith("image_encoder.")}
  module = _infer_meta_architecture(state, path)
  convert.check_keys(state, _meta_shapes(module), _META_IGNORED, path, f"a SAM image encoder ({_describe(module)})")
  return module, state


def _infer_meta_architecture(state: Mapping[str, np.ndarray], path: Path) -> SamImageEncoder:
  needed = ("patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.lin1.weight", "neck.0.weight")
  if any(k not in state for k in needed):
    raise ValueError(f"{path}: not a SAM image encoder: expected keys {list(needed)} (or the same under "
                     f"'image_encoder.'), found keys {sorted(state)[:8]}{' ...' if len(state) > 8 else ''}.")
  width, _, patch, _ = state["patch_embed.proj.weight"].shape
  grid = state["pos_embed"].shape[1]
  depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
  fields = dict(width=width, depth=depth, patch_size=patch, image_size=grid * patch,
                mlp_dim=state["blocks.0.mlp.lin1.weight"].shape[0], out_channels=state["neck.0.weight"].shape[0],
                qkv_bias="blocks.0.attn.qkv.bias" in state)
  tables = [state.get(f"blocks.{i}.attn.rel_pos_h") for i in range(depth)]
  if tables[0] is None:
    variant = next((v for v in SAM_VARIANTS.values() if (v["width"], v["depth"]) == (width, depth)), None)
    if variant is None:
      raise ValueError(f"{path}: a SAM image encoder of width {width} and depth {depth} without relative-position "
                       "tables does not say its heads, window size or global blocks; only ViT-B/L/H are known.")
    return SamImageEncoder(**{**fields, **variant, "window_size": 14, "use_rel_pos": False})
  if any(t is None for t in tables):
    missing = [f"blocks.{i}.attn.rel_pos_h" for i, t in enumerate(tables) if t is None]
    raise ValueError(f"{path}: a SAM image encoder with relative-position tables in some blocks only; missing "
                     f"{missing[:6]}. The file is incomplete: download it again.")
  head_dim = tables[0].shape[1]
  windows = {(len(t) + 1) // 2 for t in tables if len(t) != 2 * grid - 1}
  if len(windows) > 1 or width % head_dim:
    raise ValueError(f"{path}: relative-position tables of shapes {sorted({t.shape for t in tables})} fit no "
                     f"SAM image encoder of width {width} on a {grid}x{grid} grid.")
  window = windows.pop() if windows else 0
  global_blocks = tuple(i for i, t in enumerate(tables) if len(t) == 2 * grid - 1) if window else ()
  return SamImageEncoder(**fields, num_heads=width // head_dim, window_size=window,
                         global_attn_indexes=global_blocks, use_rel_pos=True)


def _describe(m: SamImageEncoder) -> str:
  return (f"width {m.width}, depth {m.depth}, {m.num_heads} heads, {m.image_size}px images, window "
          f"{m.window_size}, global blocks {tuple(m.global_attn_indexes)}")


def _meta_shapes(m: SamImageEncoder) -> dict[str, tuple[int, ...]]:
  """Every key and shape of segment_anything's ImageEncoderViT state dict."""
  c, p, o, grid = m.width, m.patch_size, m.out_channels, m.image_size // m.patch_size
  shapes = {"patch_embed.proj.weight": (c, 3, p, p), "patch_embed.proj.bias": (c,), "neck.0.weight": (o, c, 1, 1),
            "neck.1.weight": (o,), "neck.1.bias": (o,), "neck.2.weight": (o, o, 3, 3), "neck.3.weight": (o,),
            "neck.3.bias": (o,)}
  if m.use_abs_pos:
    shapes["pos_embed"] = (1, grid, grid, c)
  for i in range(m.depth):
    block = {"norm1.weight": (c,), "norm1.bias": (c,), "attn.qkv.weight": (3 * c, c), "attn.proj.weight": (c, c),
             "attn.proj.bias": (c,), "norm2.weight": (c,), "norm2.bias": (c,), "mlp.lin1.weight": (m.mlp_dim, c),
             "mlp.lin1.bias": (m.mlp_dim,), "mlp.lin2.weight": (c, m.mlp_dim), "mlp.lin2.bias": (c,)}
    if m.qkv_bias:
      block["attn.qkv.bias"] = (3 * c,)
    if m.use_rel_pos:
      table = (2 * m.rel_pos_size(i) - 1, c // m.num_heads)
      block.update({"attn.rel_pos_h": table, "attn.rel_pos_w": table})
    shapes.update({f"blocks.{i}.{k}": v for k, v in block.items()})
  return shapes


def _hf_name(meta_key: str) -> str:
  """segment_anything image-encoder key -> Hugging Face SamModel key."""
  key = meta_key.replace("patch_embed.proj.", "patch_embed.projection.")
  key = re.sub(r"^blocks\.(\d+)\.norm([12])\.", r"layers.\1.layer_norm\2.", key)
  key = re.sub(r"^blocks\.", "layers.", key)
  for index, name in enumerate(("conv1", "layer_norm1", "conv2", "layer_norm2")):
    key = key.replace(f"neck.{index}.", f"neck.{name}.")
  return "vision_encoder." + key


def _read_hf_directory(path: Path) -> tuple[SamImageEncoder, dict[str, np.ndarray]]:
  config, config_file, state, weights = read_hf_directory(path, "SamModel")
  module = _hf_architecture(config, config_file)
  names = {_hf_name(k): k for k in _meta_shapes(module)}
  expected = {hf: _meta_shapes(module)[meta] for hf, meta in names.items()}
  convert.check_keys(state, expected, _HF_IGNORED, weights,
                     f"Hugging Face SamModel weights matching {config_file.name} ({_describe(module)})")
  return module, {meta: state[hf] for hf, meta in names.items()}


def _hf_architecture(config: Mapping[str, Any], config_file: Path) -> SamImageEncoder:
  """The encoder a SamConfig's vision_config (or a SamVisionConfig) describes, with transformers' defaults."""
  model_type = config.get("model_type")
  if model_type not in ("sam", "sam_vision_model"):
    raise ValueError(f"{config_file}: model_type {model_type!r} is not a Hugging Face SAM ('sam' or "
                     "'sam_vision_model'); pass a SamModel directory such as facebook/sam-vit-base.")
  vision = (config.get("vision_config") or {}) if model_type == "sam" else config
  get = lambda key: vision.get(key, _HF_VISION_DEFAULTS[key])
  problems = []
  if get("hidden_act") != "gelu":
    problems.append(f"hidden_act {get('hidden_act')!r} (expected 'gelu')")
  if get("num_channels") != 3:
    problems.append(f"num_channels {get('num_channels')} (expected 3)")
  if not all(isinstance(get(k), int) for k in ("image_size", "patch_size")):
    problems.append(f"image_size {get('image_size')} and patch_size {get('patch_size')} (expected square sizes)")
  if get("hidden_size") % get("num_attention_heads"):
    problems.append(f"hidden_size {get('hidden_size')} not divisible by num_attention_heads "
                    f"{get('num_attention_heads')}")
  if problems:
    raise ValueError(f"{config_file}: not a supported SAM vision config: {'; '.join(problems)}.")
  width = get("hidden_size")
  return SamImageEncoder(
      width=width, depth=get("num_hidden_layers"), num_heads=get("num_attention_heads"),
      mlp_dim=get("mlp_dim") or int(width * get("mlp_ratio")), out_channels=get("output_channels"),
      patch_size=get("patch_size"), image_size=get("image_size"), window_size=get("window_size"),
      global_attn_indexes=tuple(get("global_attn_indexes")), use_abs_pos=get("use_abs_pos"),
      use_rel_pos=get("use_rel_pos"), qkv_bias=get("qkv_bias"), layer_norm_eps=get("layer_norm_eps"))


def _to_params(state: Mapping[str, np.ndarray], m: SamImageEncoder) -> dict[str, Any]:
  """Checked, Meta-named state dict -> `SamImageEncoder` params (float32): Linear [out, in] -> Dense
  [in, out], Conv OIHW -> HWIO."""
  norm = lambda key: convert.layer_norm(state, key)
  kernel = lambda key: {"kernel": convert.f32(state[key].transpose(2, 3, 1, 0))}
  params = {"patch_embed": convert.conv(state, "patch_embed.proj"), "neck_conv1": kernel("neck.0.weight"),
            "neck_norm1": norm("neck.1"), "neck_conv2": kernel("neck.2.weight"), "neck_norm2": norm("neck.3")}
  if m.use_abs_pos:
    params["pos_embed"] = convert.f32(state["pos_embed"])
  for i in range(m.depth):
    b = f"blocks.{i}"
    attn = {"qkv": convert.dense(state, f"{b}.attn.qkv", bias=m.qkv_bias),
            "proj": convert.dense(state, f"{b}.attn.proj")}
    if m.use_rel_pos:
      attn.update({name: convert.f32(state[f"{b}.attn.{name}"]) for name in ("rel_pos_h", "rel_pos_w")})
    params[f"block_{i}"] = {"norm1": norm(f"{b}.norm1"), "norm2": norm(f"{b}.norm2"), "attn": attn,
                            "mlp": {"dense_0": convert.dense(state, f"{b}.mlp.lin1"),
                                    "dense_1": convert.dense(state, f"{b}.mlp.lin2")}}
  return params
