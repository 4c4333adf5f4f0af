"""Hugging Face model directories: `config.json` beside the weights (one file, or shards named by an index),
read without torch."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

import ovseg_jax.weights.torch_files as torch_files

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")


def _state_dict(obj: Any, path: Path) -> dict[str, np.ndarray]:
  if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    raise ValueError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}.")
  return obj


def _read_weights(weights: Path) -> dict[str, np.ndarray]:
  """A single weights file, or every shard an `*.index.json` names."""
  if not weights.name.endswith(".index.json"):
    return _state_dict(torch_files.load_tensors(weights), weights)
  try:
    shards = sorted(set(json.loads(weights.read_text())["weight_map"].values()))
  except (json.JSONDecodeError, KeyError, AttributeError) as e:
    raise ValueError(f"{weights}: not a Hugging Face shard index with a 'weight_map' ({e}).") from e
  state = {}
  for shard in shards:
    state.update(_state_dict(torch_files.load_tensors(weights.parent / shard), weights.parent / shard))
  return state


def read_hf_directory(path: Path, what: str) -> tuple[dict[str, Any], Path, dict[str, np.ndarray], Path]:
  """(config, its file, state dict, the weights file) of a Hugging Face `what` directory (e.g. 'SamModel')."""
  config_file = path / "config.json"
  weights = next((path / name for name in WEIGHT_FILES if (path / name).is_file()), None)
  if not config_file.is_file() or weights is None:
    raise FileNotFoundError(f"{path}: expected a Hugging Face {what} directory with config.json and "
                            f"model.safetensors or pytorch_model.bin (or their shard index); found "
                            f"{sorted(p.name for p in path.iterdir())}.")
  try:
    config = json.loads(config_file.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{config_file}: not valid JSON ({e}).") from e
  return config, config_file, _read_weights(weights), weights
