"""Metric writing (TensorBoard + console + JSON lines) and step-loop progress (steps/s, img/s, ETA)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from clu import metric_writers
from etils import epath


class MetricLogger:
  """Writes scalars to TensorBoard and `metrics.jsonl` in the workdir (local or gs://); only host 0 writes.

  Cloud storage has no append, so the JSON lines are kept and the file rewritten at each write (a few
  hundred kB for a long run), through a temporary file renamed over it so a kill never leaves half a file; a
  resumed run keeps the lines of steps before its start, and drops (with a message) a line cut by an older
  writer or by hand.
  """

  def __init__(self, workdir: str | Path, start_step: int = 0):
    # Console lines come from `format_line`; clu's logging writer would repeat them.
    self._writer = metric_writers.SummaryWriter(str(workdir)) if jax.process_index() == 0 else None
    self._jsonl = epath.Path(workdir) / "metrics.jsonl"
    self._lines: list[str] = []
    if self._writer is not None and self._jsonl.exists():
      self._lines = [line for line in _readable_lines(self._jsonl) if json.loads(line).get("step", 0) <= start_step]

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    if self._writer is None:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._writer.write_scalars(step, scalars)
    self._lines.append(json.dumps({"step": step, **scalars}))
    tmp = self._jsonl.with_name(f".{self._jsonl.name}.tmp")
    tmp.write_text("\n".join(self._lines) + "\n")
    tmp.replace(self._jsonl)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.flush()
      self._writer.close()


def _readable_lines(path: epath.Path) -> list[str]:
  lines, dropped = [], []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      record = None
    if isinstance(record, dict):
      lines.append(line)
    else:
      dropped.append(number)
  if dropped:
    log(f"{path}: dropped unreadable line(s) {dropped[:5]} (cut by a kill or an edit); the other lines are kept.")
  return lines


class Progress:
  """Measures throughput between reports; the first report after (re)start excludes compilation.

  `input_wait_fraction` is the share of the window's wall time the loop spent waiting for its next host batch:
  near 0 when the input pipeline keeps ahead of the step, the cause when steps/s drops and it is high."""

  def __init__(self, total_steps: int, batch_size: int, start_step: int):
    self.total_steps, self.batch_size = total_steps, batch_size
    self._last_step, self._last_time = start_step, None
    self._input_wait = 0.0

  def add_input_wait(self, seconds: float) -> None:
    """Seconds the loop was blocked fetching one batch."""
    self._input_wait += seconds

  def report(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    waited, self._input_wait = self._input_wait, 0.0
    if self._last_time is None:
      self._last_step, self._last_time = step, now
      return {}
    elapsed = max(now - self._last_time, 1e-9)
    steps_per_sec = (step - self._last_step) / elapsed
    self._last_step, self._last_time = step, now
    return {"steps_per_sec": steps_per_sec, "img_per_sec": steps_per_sec * self.batch_size,
            "eta_min": (self.total_steps - step) / max(steps_per_sec, 1e-9) / 60,
            "input_wait_fraction": min(waited / elapsed, 1.0)}


def format_line(step: int, total_steps: int, scalars: dict[str, float]) -> str:
  keys = ("loss", "mask_loss", "contrastive_loss", "contrastive_accuracy", "learning_rate",
          "steps_per_sec", "img_per_sec", "input_wait_fraction", "eta_min")
  parts = [f"{k}={scalars[k]:.4g}" for k in keys if k in scalars]
  return f"step {step}/{total_steps} " + " ".join(parts)


class NonFiniteError(FloatingPointError):
  pass


def check_finite(history: list[tuple[int, dict[str, Any]]]) -> None:
  """Raises naming the first step and metric that is NaN/Inf (history holds fetched per-step metrics)."""
  for step, metrics in history:
    for name, value in metrics.items():
      if not math.isfinite(float(np.asarray(value))):
        raise NonFiniteError(f"non-finite {name}={float(np.asarray(value))} at step {step}; training stopped. "
                             "Lower optimizer.lr or check the input data.")


def log(message: str) -> None:
  """Console output of host 0 (other hosts stay quiet)."""
  if jax.process_index() == 0:
    print(message, flush=True)
