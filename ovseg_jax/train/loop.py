"""The training loop every trainer shares: steps, metrics, checkpoints, preemption and the time budget.

A trainer supplies its jitted step and its host batches; the loop turns them into global arrays, logs
averaged metrics every `log_every_steps`, checkpoints every `checkpoint.every_steps`, on SIGTERM (TPU
maintenance, scheduler preemption: checkpoint and exit with PREEMPTED_EXIT_STATUS, the relaunched job resumes)
and when `max_train_minutes` runs out (checkpoint and stop early, then evaluate as after the last step).

On several hosts the SIGTERM flag and the clock are per host while saves are collective, so every host's flags
are combined (any host stopping stops all) at each step boundary: all hosts checkpoint the same step. A state
with a NaN or Inf anywhere is never saved; the run stops with NonFiniteError and the last good checkpoint stays.
"""
from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import parameter_overview
from jax.experimental import multihost_utils

from ovseg_jax.train import checkpoint
from ovseg_jax.train import progress
from ovseg_jax.train import sharding

# "Stopped early, checkpoint saved: run the same command again" (EX_TEMPFAIL), distinct from 0 (finished) and
# from 1 (failed). launch/README.md documents it for wrappers that relaunch preempted jobs.
PREEMPTED_EXIT_STATUS = 75


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


def any_host(flags: list[bool]) -> list[bool]:
  """Each flag OR-ed over all hosts: the same answer on every host (a tiny all-gather; free on one host)."""
  if jax.process_count() == 1:
    return list(flags)
  gathered = multihost_utils.process_allgather(np.asarray(flags, np.int32))
  return [bool(x) for x in np.asarray(gathered).reshape(-1, len(flags)).any(axis=0)]


def _all_finite(tree: Any) -> jax.Array:
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.array(True)


def run(config: ml_collections.ConfigDict, workdir: Path, mesh: jax.sharding.Mesh, train_step: Callable,
        state: Any, batches: Iterator[dict[str, np.ndarray]], ckpt: checkpoint.Checkpointer, start_step: int,
        extra_scalars: Callable[[], dict[str, float]] = dict, data_position: Callable[[], dict] = dict) -> Any:
  """Runs `state, metrics = train_step(state, global_batch, key)` from `start_step + 1` to
  `config.total_steps`; returns the last state. `extra_scalars()` adds host-side figures to each log line;
  `data_position()` (called on every host) is saved beside each checkpoint's state. Raises
  SystemExit(PREEMPTED_EXIT_STATUS) after the checkpoint on SIGTERM and `progress.NonFiniteError` (pending saves
  finished) on a NaN/Inf metric or state."""
  logger = progress.MetricLogger(workdir, start_step)
  meter = progress.Progress(config.total_steps, config.batch_size, start_step)
  preemption = Preemption()
  key = jax.random.key(config.seed + 1)
  history: list[tuple[int, Any]] = []
  deadline = time.monotonic() + 60 * config.max_train_minutes if config.get("max_train_minutes") else None
  all_finite = jax.jit(_all_finite, out_shardings=sharding.replicated(mesh))
  saved_step, preempted = ckpt.latest_step(), False
  try:
    for step in range(start_step + 1, config.total_steps + 1):
      fetch_start = time.perf_counter()
      host_batch = next(batches)
      meter.add_input_wait(time.perf_counter() - fetch_start)
      batch = sharding.host_batch_to_global(host_batch, mesh)
      state, step_metrics = train_step(state, batch, key)
      history.append((step, step_metrics))
      last = step == config.total_steps
      preempted, out_of_time = any_host([preemption.requested, deadline is not None and time.monotonic() > deadline])
      stopping = last or out_of_time or preempted
      if step % config.log_every_steps == 0 or stopping:
        fetched = jax.device_get(history)
        progress.check_finite(fetched)
        scalars = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[-1][1]}
        scalars.update(meter.report(step))
        scalars.update(extra_scalars())
        logger.write(step, scalars)
        progress.log(progress.format_line(step, config.total_steps, scalars))
        history.clear()
      if step % config.checkpoint.every_steps == 0 or stopping:
        progress.check_finite(jax.device_get(history))  # Steps since the last log line.
        if not bool(all_finite(state)):
          raise progress.NonFiniteError(
              f"the train state holds NaN/Inf after step {step}; it was not saved (latest checkpoint: "
              f"{saved_step}). Lower optimizer.lr or check the input data.")
        ckpt.save(step, state, {"step": step, **data_position()}, force=True)
        saved_step = step
      if preempted:
        progress.log(f"SIGTERM: checkpoint saved at step {step}; exiting with status {PREEMPTED_EXIT_STATUS}. "
                     "Re-run the command to resume.")
        ckpt.close()
        raise SystemExit(PREEMPTED_EXIT_STATUS)
      if out_of_time:
        progress.log(f"max_train_minutes={config.max_train_minutes} reached at step {step}: stopping training "
                     "early (re-run the command to continue from the checkpoint).")
        break
  except Exception:
    ckpt.wait()  # Pending saves finish before the process ends, so the error is the last thing printed.
    raise
  finally:
    preemption.restore()
    if preempted:  # The checkpoint is written: a late SIGTERM (another host's, a second one) must not turn the
      signal.signal(signal.SIGTERM, signal.SIG_IGN)  # exit status into "killed".
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
