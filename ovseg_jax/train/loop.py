"""The training loop every trainer shares: steps, metrics, checkpoints, preemption and the time budget.

A trainer supplies its jitted step and its host batches; the loop turns them into global arrays, logs
averaged metrics every `log_every_steps`, checkpoints every `checkpoint.every_steps`, on SIGTERM (TPU
maintenance, scheduler preemption: checkpoint and exit 0, the relaunched job resumes) and when
`max_train_minutes` runs out (checkpoint and stop early).
"""
from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from clu import parameter_overview

from ovseg_jax.train import checkpoint
from ovseg_jax.train import progress
from ovseg_jax.train import sharding


class Preemption:
  """Turns SIGTERM into a checkpoint-and-exit at the next step."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def run(config: ml_collections.ConfigDict, workdir: Path, mesh: jax.sharding.Mesh, train_step: Callable,
        state: Any, batches: Iterator[dict[str, np.ndarray]], ckpt: checkpoint.Checkpointer, start_step: int,
        extra_scalars: Callable[[], dict[str, float]] = dict, data_position: Callable[[], dict] = dict) -> Any:
  """Runs `state, metrics = train_step(state, global_batch, key)` from `start_step + 1` to
  `config.total_steps`; returns the last state. `extra_scalars()` adds host-side figures to each log line;
  `data_position()` (called on every host) is saved beside each checkpoint's state."""
  logger = progress.MetricLogger(workdir, start_step)
  meter = progress.Progress(config.total_steps, config.batch_size, start_step)
  preemption = Preemption()
  key = jax.random.key(config.seed + 1)
  history: list[tuple[int, Any]] = []
  deadline = time.monotonic() + 60 * config.max_train_minutes if config.get("max_train_minutes") else None
  try:
    for step in range(start_step + 1, config.total_steps + 1):
      batch = sharding.host_batch_to_global(next(batches), mesh)
      state, step_metrics = train_step(state, batch, key)
      history.append((step, step_metrics))
      last = step == config.total_steps
      out_of_time = deadline is not None and time.monotonic() > deadline
      if step % config.log_every_steps == 0 or last or out_of_time or preemption.requested:
        fetched = jax.device_get(history)
        progress.check_finite(fetched)
        scalars = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[-1][1]}
        scalars.update(meter.report(step))
        scalars.update(extra_scalars())
        logger.write(step, scalars)
        progress.log(progress.format_line(step, config.total_steps, scalars))
        history.clear()
      if step % config.checkpoint.every_steps == 0 or last or out_of_time or preemption.requested:
        ckpt.save(step, state, {"step": step, **data_position()}, force=True)
      if preemption.requested:
        progress.log(f"SIGTERM: checkpoint saved at step {step}; exiting. Re-run the command to resume.")
        ckpt.close()
        raise SystemExit(0)
      if out_of_time:
        progress.log(f"max_train_minutes={config.max_train_minutes} reached at step {step}: stopping training "
                     "early (re-run the command to continue from the checkpoint).")
        break
  finally:
    preemption.restore()
    logger.close()
  return state


def describe_parameters(params: Any, workdir: Path) -> None:
  """Logs the parameter count and writes the per-tensor table (clu's parameter overview) to the workdir."""
  (workdir / "parameter_overview.txt").write_text(
      parameter_overview.get_parameter_overview(params, include_stats=False) + "\n")
  progress.log(f"model: {int(parameter_overview.count_parameters(params)):,} parameters "
               f"(per-tensor table in {workdir / 'parameter_overview.txt'})")


def resume(config: ml_collections.ConfigDict, workdir: Path,
           state: Any) -> tuple[checkpoint.Checkpointer, Any, dict[str, Any] | None]:
  """The workdir's checkpointer and the state restored from its latest checkpoint (or `state` as given),
  with the data position saved beside it (None without a checkpoint)."""
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=config.checkpoint.keep,
                                 async_save=config.checkpoint.async_save)
  restored = ckpt.restore_latest(state)
  if restored is None:
    return ckpt, state, None
  progress.log(f"resumed from {ckpt.directory} at step {int(restored[0].step)}")
  return ckpt, restored[0], restored[1]
