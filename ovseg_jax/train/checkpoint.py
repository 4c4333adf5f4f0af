"""Orbax checkpoints of the train state plus the input position, with resume from the latest one.

Saves are asynchronous (the step loop goes on while arrays are written); every host joins each save.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


class CheckpointMismatchError(ValueError):
  """A checkpoint that does not fit the model/optimizer built from the current config."""


class Checkpointer:
  """Keeps the last `keep` checkpoints under `directory`; `restore_latest` resumes into a template state."""

  def __init__(self, directory: str | Path, keep: int = 2, async_save: bool = True):
    # Local directories or gs:// (and other tf.io.gfile) URIs; orbax writes both.
    directory = epath.Path(directory)
    self.directory = directory if "://" in str(directory) else directory.resolve()
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                             create=True),
        item_names=("state", "data"),
        item_handlers={"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_position: dict[str, Any], force: bool = False) -> bool:
    return self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      data=ocp.args.JsonSave(data_position)), force=force)

  def restore(self, step: int, template_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores `step` with the shapes, dtypes and shardings of `template_state`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template_state)
    self._check_shapes(step, abstract)
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                        data=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointMismatchError(
          f"checkpoint {self.directory}/{step} does not match the model and optimizer of the current config "
          f"({e}). Use the config it was written with, or a new --workdir.") from e
    return restored["state"], dict(restored["data"] or {})

  def _check_shapes(self, step: int, abstract: Any) -> None:
    """Compares stored shapes with the template first, so a mismatch fails before any array is read."""
    stored = _shapes_by_path(self._manager.item_metadata(step)["state"])
    expected = _shapes_by_path(abstract)
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    differ = [f"{p}: checkpoint {stored[p]} vs config {expected[p]}"
              for p in sorted(set(stored) & set(expected)) if stored[p] != expected[p]]
    if missing or unexpected or differ:
      details = "; ".join(filter(None, [
          f"missing in checkpoint: {missing[:5]}" if missing else "",
          f"not in current model: {unexpected[:5]}" if unexpected else "",
          f"different shapes: {differ[:5]}" if differ else ""]))
      raise CheckpointMismatchError(
          f"checkpoint {self.directory}/{step} does not match the model and optimizer of the current config "
          f"({details}). Use the config it was written with, or a new --workdir.")

  def restore_latest(self, template_state: Any) -> tuple[Any, dict[str, Any]] | None:
    step = self.latest_step()
    return None if step is None else self.restore(step, template_state)

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
  def name(key):
    for attr in ("name", "key", "idx"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  return {"/".join(name(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
