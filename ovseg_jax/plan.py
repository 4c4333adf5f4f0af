r"""Per-device memory and FLOPs of a config's train step, for planning a pod slice, read from the compiled step.

  python -m ovseg_jax.plan --config=configs/sseg_cc12m.py --per_device_batch=256,64

Compiles the whole train step (pseudo masks, model, matching, losses, optimizer) on this machine for one
device's share of the global batch, with the state replicated as under pure data parallelism (an `fsdp` mesh
axis would divide the state further), and prints XLA's memory analysis (arguments = state + batch + the frozen
DINO; temporaries = activations and workspace) and cost analysis. The figures are the CPU compiler's; a TPU's
fusion and layouts differ, so treat them as estimates. Nothing is allocated or run.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags

from ovseg_jax import objective, optim, train, visualize
from ovseg_jax.models.sseg import build_sseg
from ovseg_jax.models.vit import dino_of_size

PER_DEVICE_BATCH = flags.DEFINE_list("per_device_batch", ["256", "64"], "Per-device batch sizes to compile for.")
GIB = 2.0 ** 30


def step_report(config: ml_collections.ConfigDict, per_device_batch: int) -> dict[str, float]:
  """Compiles the train step for one device at `per_device_batch`: memory in GiB, GFLOPs per step and image."""
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))
  model = build_sseg(config.model)
  tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
  _, state, shardings = train.abstract_state(train.sseg_init_params(model, config), tx, config, mesh)
  dino, dino_params = None, None
  if config.pseudo_masks.features == "dino":  # The released ViT-S/8's shapes: only shapes are needed.
    dino = dino_of_size("S/8")
    dino_params = jax.eval_shape(dino.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"]
  size, length = config.data.image_size, config.data.context_length
  batch = {"image": jax.ShapeDtypeStruct((per_device_batch, size, size, 3), jnp.uint8),
           "tokens": jax.ShapeDtypeStruct((per_device_batch, length), jnp.int32)}
  pseudo_mask_fn = objective.make_pseudo_mask_fn(config.pseudo_masks, size, dino)
  step = train.make_train_step(model, tx, schedule, config, pseudo_mask_fn, mesh, shardings)
  start = time.perf_counter()
  compiled = step.lower(state, batch, jax.random.key(0), dino_params).compile()
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
  print(visualize.markdown_table(rows, columns, float_fmt="{:.2f}"), flush=True)


if __name__ == "__main__":
  from ovseg_jax import cli
  cli.run(main, required=("config",))
