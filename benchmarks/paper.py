"""The paper S-Seg train step in its modes, timed side by side with the float32 matmul ceiling.

Modes: pseudo masks computed in the step (DINO ViT-S/8 + K-means K=8, the paper's way), read from storage
(`pseudo_masks.source='stored'`: no DINO, no K-means), and bfloat16 compute. These 2-core machines are shared and
their speed drifts by tens of percent within minutes, more than two modes differ when timed apart; so every round
times the ceiling and each mode once, each figure is the median over rounds of a ratio taken within its round, and
the rows give the range over rounds beside it.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable

import numpy as np

from benchmarks import common, methods

MODES = {
    "online": ("paper config (Swin-S, N=64, DINO S/8), online pseudo masks", {}),
    "stored": ("paper config, stored pseudo masks (no DINO, no K-means)", {"pseudo_masks.source": "stored"}),
    "bfloat16": ("paper config, online pseudo masks, bfloat16 compute", {"model.dtype": "bfloat16"}),
}
CEILING_SIZE = 2048
CEILING_CALLS = 3  # Per round: one 2048 matmul takes about 0.1 s, too short to time alone on a noisy machine.


def paper_config(batch: int, overrides: dict | None = None):
  """configs/sseg_cc12m.py's model and step at 224 px (random DINO weights) with `overrides` ('a.b': value)."""
  from configs import sseg_cc12m
  config = sseg_cc12m.get_config("runlocal")
  config.batch_size = batch
  config.update_from_flattened_dict(overrides or {})
  return config


def compile_mode(mode: str, batch: int) -> methods.CompiledStep:
  from ovseg_jax.methods import registry
  config = paper_config(batch, MODES[mode][1])
  trainable = registry.get(config).build(config, methods.single_device_mesh())
  return methods.compile_trainable_step(trainable, common.random_batch(trainable, batch), trainable.frozen)


def ceiling_program() -> tuple[Callable[[], None], float]:
  """(run, FLOPs of one run): CEILING_CALLS float32 matmuls of CEILING_SIZE, the ceiling that `ceiling()` reports."""
  import jax
  import jax.numpy as jnp
  a = jnp.ones((CEILING_SIZE, CEILING_SIZE), jnp.float32)
  matmul = jax.jit(jnp.matmul)

  def run():
    for _ in range(CEILING_CALLS):
      matmul(a, a).block_until_ready()
  return run, CEILING_CALLS * 2.0 * CEILING_SIZE ** 3


def dino_flops(batch: int) -> float:
  """FLOPs of the frozen DINO ViT-S/8 forward that the online step runs on its batch."""
  import jax
  from ovseg_jax.methods.sseg import setup
  config = paper_config(batch)
  module, params = setup.pseudo_mask_dino(config.pseudo_masks)
  size = config.data.image_size
  images = np.zeros((batch, size, size, 3), np.float32)
  return methods.compiled_flops(jax.jit(lambda p, x: module.apply({"params": p}, x)).lower(params, images).compile())


def _span(values: np.ndarray) -> str:
  return f"{values.min():.2f}-{values.max():.2f}"


def summarise(times: dict[str, list[float]], steps: dict[str, methods.CompiledStep], batch: int,
              ceiling_flops: float) -> list[dict]:
  """One row per mode from interleaved `times` ('ceiling' and each mode, seconds per round): per round, the step's
  GFLOP/s over that round's ceiling, and the online step's time over the mode's (its speed-up per image)."""
  ceiling = ceiling_flops / np.asarray(times["ceiling"])
  online = np.asarray(times["online"])
  size = paper_config(batch).data.image_size
  rows = []
  for mode, step in steps.items():
    seconds = np.asarray(times[mode])
    fraction = step.flops / seconds / ceiling
    row = {"what": f"{MODES[mode][0]}, batch {batch}, {size} px", "img/s": statistics.median(batch / seconds),
           "GFLOP/step": step.flops / 1e9, "GFLOP/s": statistics.median(step.flops / seconds) / 1e9,
           "of f32 ceiling": statistics.median(fraction), "peak GiB": step.peak_gib, "compile s": step.compile_seconds,
           "ceiling in its rounds GFLOP/s": statistics.median(ceiling) / 1e9}
    ranges = [f"of ceiling {_span(fraction)}"]
    if mode != "online":
      speedup = online / seconds
      row["img/s vs online f32"] = statistics.median(speedup)
      ranges.append(f"vs online {_span(speedup)}")
    row["range over rounds"] = "; ".join(ranges)
    rows.append(row)
  return rows


def mode_rows(batch: int, modes: tuple[str, ...] = ("online", "stored", "bfloat16"), rounds: int = 7
              ) -> tuple[list[dict], float]:
  """The paper step in `modes` (the first must be 'online') at `batch`, timed in interleaved rounds with the
  ceiling; also returns the online step's median seconds."""
  if modes[0] != "online":
    raise ValueError(f"modes={modes}: the online step comes first, the others are compared with it.")
  steps = {mode: compile_mode(mode, batch) for mode in modes}
  ceiling_run, ceiling_flops = ceiling_program()
  times = common.interleaved_seconds({"ceiling": ceiling_run, **{m: s.run for m, s in steps.items()}}, rounds,
                                     warmup=2)
  rows = summarise(times, steps, batch, ceiling_flops)
  rows[0]["DINO share of FLOPs"] = dino_flops(batch) / steps["online"].flops
  return rows, statistics.median(times["online"])
