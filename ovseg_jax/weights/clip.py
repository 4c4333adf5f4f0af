"""CLIP weights from OpenAI `.pt` archives, open_clip files and Hugging Face directories -> `models.clip` params.

All formats are first brought to OpenAI's state-dict layout (Hugging Face: renamed, q/k/v fused into
`in_proj`); the architecture is read from the weights (heads = width / 64, as OpenAI's `build_model`) or
from Hugging Face's config.json; every key and shape is checked before conversion.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

import jax.numpy as jnp

from ovseg_jax.models.clip import CLIP, ClipArchitecture
from ovseg_jax.models.layers import DType
import ovseg_jax.weights.convert as convert
import ovseg_jax.weights.torch_files as torch_files
from ovseg_jax.weights.hf_directory import read_hf_directory

# Buffers and metadata that TorchScript archives and Hugging Face files carry besides the weights.
_IGNORED = re.compile(r"(visual\.)?transformer\.resblocks\.\d+\.attn_mask$|input_resolution$|context_length$|"
                      r"vocab_size$|.*position_ids$|attn_mask$")


def read_clip(path: Path, activation: str | None = None) -> tuple[ClipArchitecture, dict[str, Any]]:
  if path.is_dir():
    return _read_hf_directory(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file or directory; expected an OpenAI CLIP .pt file, an open_clip "
                            ".bin/.pth/.safetensors file or a Hugging Face CLIPModel directory.")
  if torch_files.is_torchscript(path):
    state = torch_files.load_torchscript_state_dict(path)
    activation = activation or "quick_gelu"  # Every OpenAI release.
  else:
    state = _unwrap(torch_files.load_tensors(path), path)
    activation = activation or _open_clip_activation(path)
  architecture = _openai_architecture(state, path, activation)
  convert.check_keys(state, _openai_shapes(architecture), _IGNORED, path, "a CLIP ViT state dict (OpenAI layout)")
  return architecture, _openai_to_params(state, architecture)


def _unwrap(obj: Any, path: Path) -> dict[str, np.ndarray]:
  if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    raise ValueError(f"{path}: expected a CLIP state dict of tensors, found "
                     f"{list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__}.")
  return {k.removeprefix("module."): v for k, v in obj.items()}


def _open_clip_activation(path: Path) -> str:
  config = path.parent / "open_clip_config.json"
  if config.is_file():
    model_cfg = json.loads(config.read_text()).get("model_cfg", {})
    return "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
  raise ValueError(f"{path}: an open_clip state dict does not say which activation its model uses and no "
                   "open_clip_config.json lies beside it; pass activation='quick_gelu' (OpenAI-trained weights, "
                   "open_clip names ending in -quickgelu) or activation='gelu' (most LAION/DataComp weights).")


def _count(state: Mapping[str, np.ndarray], pattern: str) -> int:
  return len({m.group(1) for k in state if (m := re.match(pattern, k))})


def _openai_architecture(state: Mapping[str, np.ndarray], path: Path, activation: str) -> ClipArchitecture:
  needed = ("visual.conv1.weight", "visual.positional_embedding", "token_embedding.weight", "positional_embedding",
            "text_projection", "ln_final.weight")
  missing = [k for k in needed if k not in state]
  if missing:
    raise ValueError(f"{path}: expected a CLIP ViT checkpoint with keys {list(needed)}; missing {missing}, found "
                     f"keys like {sorted(state)[:6]}. Is this a CLIP file (not a DINO or ResNet CLIP one)?")
  vision_width, _, patch, _ = state["visual.conv1.weight"].shape
  grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
  text_width = state["ln_final.weight"].shape[0]
  return ClipArchitecture(
      embed_dim=state["text_projection"].shape[1], image_size=patch * grid, patch_size=patch,
      vision_width=vision_width, vision_layers=_count(state, r"visual\.transformer\.resblocks\.(\d+)\."),
      vision_heads=max(1, vision_width // 64), context_length=state["positional_embedding"].shape[0],
      vocab_size=state["token_embedding.weight"].shape[0], text_width=text_width,
      text_layers=_count(state, r"transformer\.resblocks\.(\d+)\."), text_heads=max(1, text_width // 64),
      activation=activation)


def _block_shapes(prefix: str, width: int) -> dict[str, tuple[int, ...]]:
  return {f"{prefix}.ln_1.weight": (width,), f"{prefix}.ln_1.bias": (width,), f"{prefix}.ln_2.weight": (width,),
          f"{prefix}.ln_2.bias": (width,), f"{prefix}.attn.in_proj_weight": (3 * width, width),
          f"{prefix}.attn.in_proj_bias": (3 * width,), f"{prefix}.attn.out_proj.weight": (width, width),
          f"{prefix}.attn.out_proj.bias": (width,), f"{prefix}.mlp.c_fc.weight": (4 * width, width),
          f"{prefix}.mlp.c_fc.bias": (4 * width,), f"{prefix}.mlp.c_proj.weight": (width, 4 * width),
          f"{prefix}.mlp.c_proj.bias": (width,)}


def _openai_shapes(a: ClipArchitecture) -> dict[str, tuple[int, ...]]:
  vw, tw, grid = a.vision_width, a.text_width, a.image_size // a.patch_size
  shapes = {"visual.conv1.weight": (vw, 3, a.patch_size, a.patch_size), "visual.class_embedding": (vw,),
            "visual.positional_embedding": (1 + grid * grid, vw), "visual.ln_pre.weight": (vw,),
            "visual.ln_pre.bias": (vw,), "visual.ln_post.weight": (vw,), "visual.ln_post.bias": (vw,),
            "visual.proj": (vw, a.embed_dim), "token_embedding.weight": (a.vocab_size, tw),
            "positional_embedding": (a.context_length, tw), "ln_final.weight": (tw,), "ln_final.bias": (tw,),
            "text_projection": (tw, a.embed_dim), "logit_scale": ()}
  for i in range(a.vision_layers):
    shapes.update(_block_shapes(f"visual.transformer.resblocks.{i}", vw))
  for i in range(a.text_layers):
    shapes.update(_block_shapes(f"transformer.resblocks.{i}", tw))
  return shapes


def _block_params(state: Mapping[str, np.ndarray], prefix: str) -> dict[str, Any]:
  return {"ln_1": convert.layer_norm(state, f"{prefix}.ln_1"), "ln_2": convert.layer_norm(state, f"{prefix}.ln_2"),
          "in_proj": {"kernel": convert.f32(state[f"{prefix}.attn.in_proj_weight"].T),
                      "bias": convert.f32(state[f"{prefix}.attn.in_proj_bias"])},
          "out_proj": convert.dense(state, f"{prefix}.attn.out_proj"),
          "c_fc": convert.dense(state, f"{prefix}.mlp.c_fc"), "c_proj": convert.dense(state, f"{prefix}.mlp.c_proj")}


def _openai_to_params(state: Mapping[str, np.ndarray], a: ClipArchitecture) -> dict[str, Any]:
  f32 = convert.f32
  visual = {"conv1": {"kernel": f32(state["visual.conv1.weight"].transpose(2, 3, 1, 0))},
            "class_embedding": f32(state["visual.class_embedding"]),
            "positional_embedding": f32(state["visual.positional_embedding"]),
            "ln_pre": convert.layer_norm(state, "visual.ln_pre"), "ln_post": convert.layer_norm(state, "visual.ln_post"),
            "proj": f32(state["visual.proj"])}
  visual.update({f"resblocks_{i}": _block_params(state, f"visual.transformer.resblocks.{i}")
                 for i in range(a.vision_layers)})
  text = {"token_embedding": {"embedding": f32(state["token_embedding.weight"])},
          "positional_embedding": f32(state["positional_embedding"]),
          "ln_final": convert.layer_norm(state, "ln_final"), "text_projection": f32(state["text_projection"])}
  text.update({f"resblocks_{i}": _block_params(state, f"transformer.resblocks.{i}") for i in range(a.text_layers)})
  return {"visual": visual, "text": text, "logit_scale": f32(state["logit_scale"])}


def _hf_to_openai(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Hugging Face CLIPModel keys -> OpenAI's (q/k/v fused in that order, projections transposed)."""
  out: dict[str, np.ndarray] = {}
  renames = [(r"^vision_model\.embeddings\.patch_embedding\.weight$", "visual.conv1.weight"),
             (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
             (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
             (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."), (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
             (r"^vision_model\.encoder\.layers\.", "visual.transformer.resblocks."),
             (r"^text_model\.embeddings\.token_embedding\.", "token_embedding."),
             (r"^text_model\.embeddings\.position_embedding\.weight$", "positional_embedding"),
             (r"^text_model\.final_layer_norm\.", "ln_final."), (r"^text_model\.encoder\.layers\.", "transformer.resblocks."),
             (r"\.layer_norm1\.", ".ln_1."), (r"\.layer_norm2\.", ".ln_2."), (r"\.mlp\.fc1\.", ".mlp.c_fc."),
             (r"\.mlp\.fc2\.", ".mlp.c_proj."), (r"\.self_attn\.out_proj\.", ".attn.out_proj.")]
  for key, value in state.items():
    if key in ("visual_projection.weight", "text_projection.weight"):
      out["visual.proj" if key.startswith("visual") else "text_projection"] = value.T
      continue
    for pattern, repl in renames:
      key = re.sub(pattern, repl, key)
    out[key] = value
  for prefix in {k.rsplit(".self_attn.", 1)[0] for k in out if ".self_attn.q_proj." in k}:
    for part in ("weight", "bias"):
      out[f"{prefix}.attn.in_proj_{part}"] = np.concatenate(
          [out.pop(f"{prefix}.self_attn.{p}_proj.{part}") for p in "qkv"], axis=0)
  return out


def _read_hf_directory(path: Path) -> tuple[ClipArchitecture, dict[str, Any]]:
  config, config_file, state, weights = read_hf_directory(path, "CLIPModel")
  if "vision_config" not in config or "text_config" not in config:
    raise ValueError(f"{config_file}: expected a CLIPModel config with vision_config and text_config, found keys "
                     f"{sorted(config)[:8]}.")
  v, t = config["vision_config"], config["text_config"]
  if v.get("hidden_act", "quick_gelu") != t.get("hidden_act", "quick_gelu"):
    raise ValueError(f"{config_file}: different activations in the towers are not supported.")
  architecture = ClipArchitecture(
      embed_dim=config.get("projection_dim", 512), image_size=v["image_size"], patch_size=v["patch_size"],
      vision_width=v["hidden_size"], vision_layers=v["num_hidden_layers"], vision_heads=v["num_attention_heads"],
      context_length=t.get("max_position_embeddings", 77), vocab_size=t.get("vocab_size", 49408),
      text_width=t["hidden_size"], text_layers=t["num_hidden_layers"], text_heads=t["num_attention_heads"],
      activation=v.get("hidden_act", "quick_gelu"), layer_norm_eps=v.get("layer_norm_eps", 1e-5))
  state = _hf_to_openai(state)
  convert.check_keys(state, _openai_shapes(architecture), _IGNORED, weights,
                     "Hugging Face CLIPModel weights matching its config.json")
  return architecture, _openai_to_params(state, architecture)


def load_clip(path: str | Path, *, activation: str | None = None,
              dtype: DType = jnp.float32) -> tuple[CLIP, dict]:
  """A CLIP and its params from an OpenAI `.pt` (TorchScript or state dict), an open_clip `.bin` /
  `.pth` / `.safetensors`, or a Hugging Face CLIPModel directory. Use as
  `module.apply({'params': params}, images, method='encode_image')`.

  open_clip state dicts do not record the activation: it is read from an `open_clip_config.json` beside the
  file, else must be given (`activation='quick_gelu'` for OpenAI-trained weights, 'gelu' for most others).
  """
  architecture, params = read_clip(Path(path), activation=activation)
  return CLIP(architecture, dtype), params
