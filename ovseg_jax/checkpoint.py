"""Orbax checkpoints of the train state plus the input position, with resume from the latest one.

Saves are asynchronous (the step loop goes on while arrays are written); every host joins each save.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
  """A checkpoint that does not fit the model/optimizer built from the current config."""


class Checkpointer:
  """Keeps the last `keep` checkpoints under `directory`; `restore_latest` resumes into a template state."""

  def __init__(self, directory: str | Path, keep: int = 2, async_save: bool = True):
    self.directory = Path(directory).absolute()
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                             create=True),
        item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_position: dict[str, Any], force: bool = False) -> bool:
    return self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      data=ocp.args.JsonSave(data_position)), force=force)

  def restore(self, step: int, template_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores `step` with the shapes, dtypes and shardings of `template_state`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template_state)
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                        data=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointMismatchError(
          f"checkpoint {self.directory}/{step} does not match the model and optimizer of the current config "
          f"({e}). Use the config it was written with, or a new --workdir.") from e
    return restored["state"], dict(restored["data"] or {})

  def restore_latest(self, template_state: Any) -> tuple[Any, dict[str, Any]] | None:
    step = self.latest_step()
    return None if step is None else self.restore(step, template_state)

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
