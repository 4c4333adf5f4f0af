"""PyTorch state-dict pieces -> Flax params, and the one key/shape check every weight reader runs first."""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np


def f32(x: np.ndarray) -> Any:
  return jnp.asarray(np.asarray(x, np.float32))


def dense(state: Mapping[str, np.ndarray], key: str, bias: bool = True) -> dict[str, Any]:
  """nn.Linear [out, in] -> nn.Dense kernel [in, out] (+ bias)."""
  out = {"kernel": f32(state[f"{key}.weight"].T)}
  return {**out, "bias": f32(state[f"{key}.bias"])} if bias else out


def layer_norm(state: Mapping[str, np.ndarray], key: str) -> dict[str, Any]:
  return {"scale": f32(state[f"{key}.weight"]), "bias": f32(state[f"{key}.bias"])}


def conv(state: Mapping[str, np.ndarray], key: str) -> dict[str, Any]:
  """nn.Conv2d OIHW -> nn.Conv HWIO (+ bias)."""
  return {"kernel": f32(state[f"{key}.weight"].transpose(2, 3, 1, 0)), "bias": f32(state[f"{key}.bias"])}


def check_keys(state: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], ignored: re.Pattern,
               path: Path, what: str) -> None:
  """Raises one error listing every missing key, unexpected key and wrong shape."""
  missing = [k for k in expected if k not in state]
  unexpected = [k for k in state if k not in expected and not ignored.match(k)]
  wrong = [f"{k} {tuple(state[k].shape)} (expected {expected[k]})"
           for k in expected if k in state and tuple(state[k].shape) != expected[k]]
  if missing or unexpected or wrong:
    listed = lambda items: ", ".join(items[:6]) + (f" and {len(items) - 6} more" if len(items) > 6 else "")
    parts = [f"{name}: {listed(items)}" for name, items in
             (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if items]
    raise ValueError(f"{path}: expected {what}; {'; '.join(parts)}. Check that the file is the checkpoint "
                     "of this model (e.g. a ViT-S file for a ViT-S config) and is complete.")
