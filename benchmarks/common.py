"""What every benchmark here shares: timing medians after warm-up, the machine's load, the table and JSON."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ovseg_jax import allocator


def median_seconds(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> float:
  """Median wall time of `fn()` over `repeats` calls after `warmup` untimed calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def interleaved_seconds(fns: dict[str, Callable[[], Any]], rounds: int = 5, warmup: int = 1) -> dict[str, list[float]]:
  """Wall time of every call of each function, the functions called in turn, round after round, after `warmup`
  untimed rounds. A shared machine's speed drifts under its neighbours; interleaved, every function meets the
  same drift, so ratios taken within a round compare like with like."""
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times


def machine() -> dict[str, Any]:
  """Cores and load, printed beside the figures: these machines are shared and noisy."""
  return {"cpus": os.cpu_count(), "load_1min": os.getloadavg()[0], "python": platform.python_version(),
          "malloc": allocator.active()}


def report(title: str, rows: list[dict[str, Any]], out: str | Path | None) -> str:
  """Prints a markdown table (and the machine line); writes rows + machine as JSON to `out` if given."""
  from ovseg_jax.eval.tables import markdown_table
  info = machine()
  text = (f"## {title}\n\n{markdown_table(rows, list(rows[0]), float_fmt='{:.2f}')}\n\n"
          f"machine: {info}\n")
  print(text, flush=True)
  if out:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"title": title, "rows": rows, "machine": info}, indent=2, default=str))
  return text


def random_batch(trainable, batch: int) -> dict[str, np.ndarray]:
  """Random uint8 images (and labels) and a short caption's tokens, in the shapes of `trainable.batch_spec`."""
  rng = np.random.default_rng(0)
  out = {}
  for name, spec in trainable.batch_spec(batch).items():
    if name == "tokens":
      tokens = np.zeros(spec.shape, np.int32)
      tokens[..., :4] = [49406, 320, 1929, 49407]  # SOT "a photo" EOT.
      out[name] = tokens
    elif name == "pseudo_labels":  # Stored K-means maps: cluster ids of the paper's K = 8.
      out[name] = rng.integers(0, 8, spec.shape).astype(spec.dtype)
    else:
      high = 256 if spec.dtype == np.uint8 else 2
      out[name] = rng.integers(0, high, spec.shape).astype(spec.dtype)
  return out
