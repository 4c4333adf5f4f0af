r"""Per-device memory and FLOPs of a config's train step, for planning a pod slice, read from the compiled step.

  python -m ovseg_jax.plan_memory --config=configs/sseg_cc12m.py --per_device_batch=256,64

Compiles the whole train step of the config's method (for S-Seg: pseudo masks, model, matching, losses, optimizer) on this machine for one
device's share of the global batch, with the state replicated as under pure data parallelism (an `fsdp` mesh
axis would divide the state further), and prints XLA's memory analysis (arguments = state + batch + the frozen
DINO; temporaries = activations and workspace) and cost analysis. The figures are the CPU compiler's; a TPU's
fusion and layouts differ, so treat them as estimates. Nothing is allocated or run.
"""
from __future__ import annotations

import time

import jax
import ml_collections
import numpy as np
from absl import flags

from ovseg_jax.eval.tables import markdown_table
from ovseg_jax.methods import registry

PER_DEVICE_BATCH = flags.DEFINE_list("per_device_batch", ["256", "64"], "Per-device batch sizes to compile for.")
GIB = 2.0 ** 30


def step_report(config: ml_collections.ConfigDict, per_device_batch: int) -> dict[str, float]:
  """Compiles the method's train step for one device at `per_device_batch`: memory in GiB, GFLOPs per step and
  per image."""
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))
  trainable = registry.get(config).build(config, mesh, abstract=True)
  batch = trainable.batch_spec(per_device_batch)
  start = time.perf_counter()
  compiled = trainable.step.lower(trainable.state, batch, jax.random.key(0), trainable.frozen).compile()
  memory, cost = compiled.memory_analysis(), compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan")))
  return {"per-device batch": per_device_batch,
          "arguments GiB": memory.argument_size_in_bytes / GIB,
          "temporaries GiB": memory.temp_size_in_bytes / GIB,
          "outputs GiB": memory.output_size_in_bytes / GIB,
          "aliased GiB": memory.alias_size_in_bytes / GIB,
          "peak estimate GiB": (memory.argument_size_in_bytes + memory.temp_size_in_bytes
                                + memory.output_size_in_bytes - memory.alias_size_in_bytes) / GIB,
          "GFLOP/step": flops / 1e9, "GFLOP/image": flops / 1e9 / per_device_batch,
          "compile s": time.perf_counter() - start}


def main(argv: list[str]) -> None:
  del argv
  from ovseg_jax import cli
  config = cli.CONFIG.value
  rows = [step_report(config, int(b)) for b in PER_DEVICE_BATCH.value]
  columns = list(rows[0])
  print(markdown_table(rows, columns, float_fmt="{:.2f}"), flush=True)


if __name__ == "__main__":
  from ovseg_jax import cli
  cli.run(main, required=("config",))
