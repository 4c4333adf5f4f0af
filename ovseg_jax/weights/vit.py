"""Pretrained plain-ViT weights (MAE, DINO, timm-style `.pth` / `.safetensors`) -> the params of
`ovseg_jax.models.vit.ViT`, the backbone of the self-training UperNet.

The file is read and checked by the DINO reader (the same VisionTransformer layout; MAE keeps it under
'model'). The class token is dropped: `ViT` attends over patch tokens only, so its patch position embeddings
are the checkpoint's without the class position, and the fused qkv projection is split into Flax's
query / key / value with heads as their own axis.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import ovseg_jax.weights.dino as dino
from ovseg_jax.models.dino import DinoViT


def read_vit_backbone(path: str | Path, num_heads: int | None = None) -> tuple[DinoViT, dict[str, Any]]:
  """(architecture, `ViT` params) from a ViT checkpoint; its state dict may sit under 'model' (MAE)."""
  architecture, source = dino.read_dino(Path(path).expanduser(), num_heads=num_heads, checkpoint_key="model")
  width, heads = architecture.width, architecture.num_heads
  grid = architecture.image_size // architecture.patch_size
  params = {"patch_embed": source["patch_embed"],
            "pos_embedding": np.asarray(source["pos_embed"])[:, 1:].reshape(1, grid, grid, width),
            "norm": source["norm"]}
  for i in range(architecture.depth):
    block = source[f"block_{i}"]
    qkv = block["attn"]["qkv"]
    kernels = np.asarray(qkv["kernel"]).reshape(width, 3, heads, width // heads)
    biases = np.asarray(qkv["bias"]).reshape(3, heads, width // heads)
    attention = {name: {"kernel": kernels[:, j], "bias": biases[j]} for j, name in enumerate(("query", "key", "value"))}
    proj = block["attn"]["proj"]
    attention["out"] = {"kernel": np.asarray(proj["kernel"]).reshape(heads, width // heads, width),
                        "bias": proj["bias"]}
    params[f"block_{i}"] = {"ln_1": block["norm1"], "ln_2": block["norm2"], "attn": attention, "mlp": block["mlp"]}
  return architecture, params
