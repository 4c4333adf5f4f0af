"""A training workdir's records: the resolved config beside the checkpoints, and the latest state restored."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_collections
from etils import epath

from ovseg_jax.train import checkpoint


def as_workdir(path: str | Path) -> epath.Path:
  """The workdir for a path given by a user: the workdir itself or its `checkpoints/` (local or gs://)."""
  path = epath.Path(path).expanduser()
  return path.parent if path.name == "checkpoints" else path


def write_config(workdir: epath.Path, config: ml_collections.ConfigDict) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))


def read_config(workdir: str | Path) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (its config.json)."""
  config_file = as_workdir(workdir) / "config.json"
  if not config_file.is_file():
    raise FileNotFoundError(f"{config_file} is missing: expected a training workdir (with config.json and "
                            "checkpoints/) written by `python -m ovseg_jax.main`.")
  return ml_collections.ConfigDict(json.loads(config_file.read_text()))


def restore_latest(workdir: str | Path, state: Any, config: ml_collections.ConfigDict) -> tuple[Any, int]:
  """(state, step) of the latest checkpoint in `workdir`, restored into `state`'s structure."""
  workdir = as_workdir(workdir)
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=config.checkpoint.keep, async_save=False)
  restored = ckpt.restore_latest(state)
  ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}: train first with "
                            f"`python -m ovseg_jax.main --config=... --workdir={workdir}`.")
  state, _ = restored
  return state, int(state.step)
