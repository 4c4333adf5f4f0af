"""DINO ViT weights: original `.pth` state dicts and Hugging Face `facebook/dino-*` directories -> the
architecture and the params of `ovseg_jax.models.dino.DinoViT`; `load_dino` builds both.

Hugging Face keys are first renamed to DINO's (query/key/value fused into qkv), so a single DINO -> Flax
map follows. Every key and shape is checked before conversion and all problems are reported at once.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from ovseg_jax.models.dino import DinoViT
from ovseg_jax.models.layers import DType
import ovseg_jax.weights.convert as convert
import ovseg_jax.weights.torch_files as torch_files
from ovseg_jax.weights.hf_directory import read_hf_directory

# Keys that belong to heads around the backbone (DINO's projection head, HF's pooler and classifier);
# DINO and Hugging Face also skip them when they load a backbone.
_DINO_IGNORED = re.compile(r"head\.")
_HF_IGNORED = re.compile(r"pooler\.|classifier\.|embeddings\.mask_token$")


def read_dino(path: str | Path, *, num_heads: int | None = None,
              checkpoint_key: str = "teacher") -> tuple[DinoViT, dict[str, Any]]:
  """(the `DinoViT` the file describes, its params) from a DINO `.pth` (or `.safetensors`) file or a Hugging Face
  directory."""
  path = Path(path)
  if path.is_dir():
    return _read_hf_directory(path)
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such file or directory; expected a DINO .pth file "
                            "(e.g. dino_deitsmall8_pretrain.pth) or a Hugging Face facebook/dino-* directory.")
  state = _unwrap(torch_files.load_tensors(path), path, checkpoint_key)
  if any(k.startswith("embeddings.") for k in state):
    raise ValueError(f"{path}: holds Hugging Face ViTModel weights; pass the directory that holds this file "
                     "and its config.json instead.")
  architecture = _infer_dino_architecture(state, path, num_heads)
  convert.check_keys(state, _dino_shapes(architecture), _DINO_IGNORED, path, "a DINO VisionTransformer state dict")
  return architecture, _dino_to_params(state, architecture.depth)


def _unwrap(obj: Any, path: Path, checkpoint_key: str) -> dict[str, np.ndarray]:
  """The backbone state dict, as DINO's `load_pretrained_weights` finds it: under `checkpoint_key` if
  present, with `module.` (DistributedDataParallel) and `backbone.` (MultiCropWrapper) prefixes removed."""
  if isinstance(obj, Mapping) and isinstance(obj.get(checkpoint_key), Mapping):
    obj = obj[checkpoint_key]
  if not isinstance(obj, Mapping) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    found = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
    raise ValueError(f"{path}: expected a state dict of tensors (or one under {checkpoint_key!r}), found "
                     f"{found}; pass checkpoint_key= naming the entry that holds the weights.")
  state = {}
  for key, value in obj.items():
    for prefix in ("module.", "backbone."):
      key = key.removeprefix(prefix)
    state[key] = value
  return state


def _infer_dino_architecture(state: Mapping[str, np.ndarray], path: Path,
                             num_heads: int | None) -> DinoViT:
  needed = ("patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.fc1.weight")
  if any(k not in state for k in needed):
    raise ValueError(f"{path}: expected a DINO VisionTransformer state dict with keys {list(needed)}, found "
                     f"keys {sorted(state)[:8]}{' ...' if len(state) > 8 else ''}.")
  width, _, patch, _ = state["patch_embed.proj.weight"].shape
  grid = math.isqrt(state["pos_embed"].shape[1] - 1)
  if num_heads is None:
    if width % 64:
      raise ValueError(f"{path}: width {width} is not a multiple of DINO's 64-wide heads; pass num_heads=.")
    num_heads = width // 64
  if width % num_heads:
    raise ValueError(f"{path}: width {width} is not divisible by num_heads={num_heads}.")
  depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
  return DinoViT(patch_size=patch, width=width, depth=depth, num_heads=num_heads,
                          mlp_dim=state["blocks.0.mlp.fc1.weight"].shape[0], image_size=grid * patch,
                          layer_norm_eps=1e-6, dino_interpolation=True)


def _dino_shapes(a: DinoViT) -> dict[str, tuple[int, ...]]:
  """Every key and shape of a DINO VisionTransformer state dict."""
  c, m, p = a.width, a.mlp_dim, a.patch_size
  tokens = 1 + (a.image_size // p) ** 2
  shapes = {"cls_token": (1, 1, c), "pos_embed": (1, tokens, c), "patch_embed.proj.weight": (c, 3, p, p),
            "patch_embed.proj.bias": (c,), "norm.weight": (c,), "norm.bias": (c,)}
  for i in range(a.depth):
    block = {"norm1.weight": (c,), "norm1.bias": (c,), "attn.qkv.weight": (3 * c, c), "attn.qkv.bias": (3 * c,),
             "attn.proj.weight": (c, c), "attn.proj.bias": (c,), "norm2.weight": (c,), "norm2.bias": (c,),
             "mlp.fc1.weight": (m, c), "mlp.fc1.bias": (m,), "mlp.fc2.weight": (c, m), "mlp.fc2.bias": (c,)}
    shapes.update({f"blocks.{i}.{k}": v for k, v in block.items()})
  return shapes


def _hf_renames(depth: int) -> dict[str, str]:
  """Hugging Face ViTModel key -> DINO key, except query/key/value (fused separately)."""
  names = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
           "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
  for suffix in ("weight", "bias"):
    names[f"embeddings.patch_embeddings.projection.{suffix}"] = f"patch_embed.proj.{suffix}"
    for i in range(depth):
      hf, dino = f"encoder.layer.{i}.", f"blocks.{i}."
      names.update({hf + f"attention.output.dense.{suffix}": dino + f"attn.proj.{suffix}",
                    hf + f"layernorm_before.{suffix}": dino + f"norm1.{suffix}",
                    hf + f"layernorm_after.{suffix}": dino + f"norm2.{suffix}",
                    hf + f"intermediate.dense.{suffix}": dino + f"mlp.fc1.{suffix}",
                    hf + f"output.dense.{suffix}": dino + f"mlp.fc2.{suffix}"})
  return names


def _hf_shapes(a: DinoViT) -> dict[str, tuple[int, ...]]:
  """Every key and shape of a Hugging Face ViTModel state dict (pooler aside)."""
  dino = _dino_shapes(a)
  shapes = {hf: dino[d] for hf, d in _hf_renames(a.depth).items()}
  for i in range(a.depth):
    for name in ("query", "key", "value"):
      prefix = f"encoder.layer.{i}.attention.attention.{name}"
      shapes.update({f"{prefix}.weight": (a.width, a.width), f"{prefix}.bias": (a.width,)})
  return shapes


def _hf_to_dino(state: Mapping[str, np.ndarray], depth: int) -> dict[str, np.ndarray]:
  dino = {d: state[hf] for hf, d in _hf_renames(depth).items()}
  for i in range(depth):
    prefix = f"encoder.layer.{i}.attention.attention"
    for suffix in ("weight", "bias"):
      dino[f"blocks.{i}.attn.qkv.{suffix}"] = np.concatenate(
          [state[f"{prefix}.{name}.{suffix}"] for name in ("query", "key", "value")])
  return dino


def _read_hf_directory(path: Path) -> tuple[DinoViT, dict[str, Any]]:
  config, config_file, state, weights = read_hf_directory(path, "ViTModel")
  architecture = _hf_architecture(config, config_file)
  state = {k.removeprefix("vit."): v for k, v in state.items()}
  convert.check_keys(state, _hf_shapes(architecture), _HF_IGNORED, weights,
              f"a Hugging Face ViTModel matching {config_file.name}")
  return architecture, _dino_to_params(_hf_to_dino(state, architecture.depth), architecture.depth)


def _hf_architecture(config: Mapping[str, Any], config_file: Path) -> DinoViT:
  """The architecture a ViTConfig describes (absent fields take ViTConfig's defaults, as in transformers)."""
  get = lambda key, default: config.get(key, default)
  problems = []
  if get("model_type", "vit") != "vit":
    problems.append(f"model_type {config['model_type']!r} (expected 'vit')")
  if get("hidden_act", "gelu") != "gelu":
    problems.append(f"hidden_act {config['hidden_act']!r} (expected 'gelu')")
  if not get("qkv_bias", True):
    problems.append("qkv_bias false (expected true)")
  if get("num_channels", 3) != 3:
    problems.append(f"num_channels {config['num_channels']} (expected 3)")
  width, heads = get("hidden_size", 768), get("num_attention_heads", 12)
  if width % heads:
    problems.append(f"hidden_size {width} not divisible by num_attention_heads {heads}")
  if problems:
    raise ValueError(f"{config_file}: not a DINO-style ViT config: {'; '.join(problems)}.")
  return DinoViT(patch_size=get("patch_size", 16), width=width, depth=get("num_hidden_layers", 12),
                          num_heads=heads, mlp_dim=get("intermediate_size", 3072),
                          image_size=get("image_size", 224), layer_norm_eps=get("layer_norm_eps", 1e-12),
                          dino_interpolation=False)


def _dino_to_params(state: Mapping[str, np.ndarray], depth: int) -> dict[str, Any]:
  """DINO state dict -> `DinoViT` params (float32): Linear [out, in] -> Dense [in, out], Conv OIHW -> HWIO."""
  dense = lambda key: convert.dense(state, key)
  norm = lambda key: convert.layer_norm(state, key)
  params = {"patch_embed": convert.conv(state, "patch_embed.proj"),
            "cls_token": convert.f32(state["cls_token"]), "pos_embed": convert.f32(state["pos_embed"]),
            "norm": norm("norm")}
  for i in range(depth):
    b = f"blocks.{i}"
    params[f"block_{i}"] = {"norm1": norm(f"{b}.norm1"), "norm2": norm(f"{b}.norm2"),
                            "attn": {"qkv": dense(f"{b}.attn.qkv"), "proj": dense(f"{b}.attn.proj")},
                            "mlp": {"dense_0": dense(f"{b}.mlp.fc1"), "dense_1": dense(f"{b}.mlp.fc2")}}
  return params


def load_dino(path: str | Path, *, num_heads: int | None = None, checkpoint_key: str = "teacher",
              dtype: DType = jnp.float32) -> tuple[DinoViT, dict]:
  """A DINO ViT and its params from a DINO `.pth` file or a Hugging Face `facebook/dino-*` directory.

  `.pth` files do not record the number of heads: it defaults to width / 64 (every released DINO ViT);
  pass `num_heads` for others. Full training checkpoints use their `checkpoint_key` ('teacher' as in
  DINO's own evaluation, or 'student'). Use as `module.apply({'params': params}, images)`.
  """
  module, params = read_dino(path, num_heads=num_heads, checkpoint_key=checkpoint_key)
  return module.clone(dtype=dtype), params
