"""Orbax checkpoints of the train state plus the input position, with resume from the latest readable one.

Saves are asynchronous (the step loop goes on while arrays are written); every host joins each save. A checkpoint
that does not fit the current config (CheckpointMismatchError) is a user error and stops the start; one whose
files cannot be read (CheckpointCorruptError: a truncated or emptied array file) is moved aside and the previous
checkpoint restored instead.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint._src.metadata import array_metadata_store

from ovseg_jax.train import progress


class CheckpointMismatchError(ValueError):
  """A checkpoint that does not fit the model/optimizer built from the current config."""


class CheckpointCorruptError(RuntimeError):
  """A checkpoint whose metadata fits the config but whose files cannot be read (truncated, emptied, missing)."""


@functools.cache  # Once per process: orbax logs a warning at every registration.
def _save_replicas_in_parallel_only_across_hosts() -> None:
  """Orbax's default handler for jax.Array, with replica-parallel saving only when there are several hosts.

  Replica-parallel saving splits each replicated array into one slice per replica, each cut by its own small
  device program, so that hosts share the writing; on one host all replicas are local and the slices only cost
  time (about 7 s for the first save of a small model on 8 devices). Either way restores the same arrays."""
  ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(
      use_replica_parallel=jax.process_count() > 1, array_metadata_store=array_metadata_store.Store()),
      override=True)


class Checkpointer:
  """Keeps the last `keep` checkpoints under `directory`; `restore_latest` resumes into a template state."""

  def __init__(self, directory: str | Path, keep: int = 2, async_save: bool = True):
    _save_replicas_in_parallel_only_across_hosts()
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
    try:
      metadata = self._manager.item_metadata(step)["state"]
    except Exception as e:  # noqa: BLE001  Any failure to read the metadata is a damaged checkpoint.
      raise CheckpointCorruptError(f"checkpoint {self.directory}/{step}: metadata unreadable ({_first_line(e)})") from e
    self._check_shapes(step, metadata, abstract)
    try:  # The shapes fit, so a failure now is in the files themselves.
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                        data=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001  tensorstore reports damaged files as ValueError or RuntimeError.
      raise CheckpointCorruptError(f"checkpoint {self.directory}/{step}: files unreadable ({_first_line(e)})") from e
    return restored["state"], dict(restored["data"] or {})

  def _check_shapes(self, step: int, metadata: Any, abstract: Any) -> None:
    """Compares stored shapes with the template first, so a mismatch fails before any array is read."""
    if metadata is None:
      raise CheckpointCorruptError(f"checkpoint {self.directory}/{step}: no state metadata")
    stored = _shapes_by_path(metadata)
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
    """The newest readable checkpoint (None without any). Unreadable newer ones are renamed `STEP.corrupt` (so
    the resumed run can save that step again) and named in the log; a config mismatch raises at once."""
    damaged = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        restored = self.restore(step, template_state)
      except CheckpointCorruptError as e:
        progress.log(f"{e}: falling back to the previous checkpoint.")
        damaged.append(step)
        continue
      self._set_aside(damaged)
      if damaged:
        progress.log(f"resuming from checkpoint {step} instead of the damaged {damaged} (kept as STEP.corrupt in "
                     f"{self.directory}).")
      return restored
    if damaged:
      raise CheckpointCorruptError(f"no readable checkpoint in {self.directory} (damaged: {damaged}); move the "
                                   "directory away to start from scratch.")
    return None

  def _set_aside(self, steps: list[int]) -> None:
    if not steps:
      return
    if jax.process_index() == 0:
      for step in steps:
        (self.directory / str(step)).rename(self.directory / f"{step}.corrupt")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("damaged checkpoints set aside")
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _first_line(error: Exception) -> str:
  return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}"


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
  def name(key):
    for attr in ("name", "key", "idx"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  return {"/".join(name(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
