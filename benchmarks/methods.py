"""A train-step row per method beside its PyTorch eager peer (where a faithful one is installable): CLIP
fine-tuning (OVSeg's ViT-B/16 recipe), MAFT's IP-CLIP step and EBSeg's step (the embedded demo's configs).

Every step is the method's own `Trainable` (built through the registry), timed on random weights and a random
batch: the speed of the step does not depend on what the weights are.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import logging

from benchmarks import common


def compiled_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def peak_gib(compiled) -> float:
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes) / 2 ** 30


@dataclasses.dataclass(frozen=True)
class CompiledStep:
  """A compiled train step bound to its arguments: `run()` takes one step (donating and keeping its state)."""
  run: Callable[[], None]
  flops: float
  peak_gib: float
  compile_seconds: float


def compile_step(step, state, *args) -> CompiledStep:
  """Compiles `step(state, *args)` (which donates its state) and binds it to the arguments."""
  import jax
  start = time.perf_counter()
  compiled = step.lower(state, *args).compile()
  compile_seconds = time.perf_counter() - start
  holder = {"state": state}

  def run():
    holder["state"], metrics = compiled(holder["state"], *args)
    jax.block_until_ready(metrics)
  return CompiledStep(run, compiled_flops(compiled), peak_gib(compiled), compile_seconds)


def compile_trainable_step(trainable, host: dict[str, np.ndarray], frozen: Any) -> CompiledStep:
  """`trainable.step` compiled on one device for a host batch."""
  import jax
  from ovseg_jax.train import sharding
  return compile_step(trainable.step, trainable.state, sharding.host_batch_to_global(host, single_device_mesh()),
                      jax.random.key(0), frozen)


def single_device_mesh():
  import jax
  return jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))


def timed_row(step: CompiledStep, batch: int, what: str, repeats: int = 3) -> tuple[dict, float]:
  """A compiled step's row (median of `repeats` steps after two untimed ones) and its seconds per step."""
  seconds = common.median_seconds(step.run, repeats=repeats, warmup=2)
  return {"what": what, "img/s": batch / seconds, "GFLOP/step": step.flops / 1e9, "GFLOP/s": step.flops / seconds / 1e9,
          "peak GiB": step.peak_gib, "compile s": step.compile_seconds}, seconds


def step_row(trainable, host: dict[str, np.ndarray], frozen: Any, batch: int, what: str,
             repeats: int = 3) -> tuple[dict, float]:
  """Times `trainable.step` on a host batch; returns the row and the seconds per step."""
  return timed_row(compile_trainable_step(trainable, host, frozen), batch, what, repeats)


def segmentation_batch(trainable, config, batch: int, targets: int) -> dict[str, np.ndarray]:
  """Random images with blocky labels of `targets` training classes, as Mask2Former-style targets."""
  from ovseg_jax.methods.mask2former import data
  size = config.data.crop_size
  cell = max(size // 8, 1)
  blocks = np.random.default_rng(0).integers(0, targets, (batch, -(-size // cell), -(-size // cell)))
  labels = blocks.repeat(cell, 1).repeat(cell, 2)[:, :size, :size]
  segments, classes = zip(*(data.semantic_targets(label, config.data.max_targets) for label in labels))
  return {"image": common.random_batch(trainable, batch)["image"], "segments": np.stack(segments),
          "target_classes": np.stack(classes)}


def run_peer(python: str, script: str, args: list[str], what: str) -> float | None:
  """Seconds per step of a PyTorch peer script (prints {"seconds": ...} last), or None without one."""
  if not python:
    return None
  out = subprocess.run([python, "-c", script, *args], capture_output=True, text=True, timeout=3600)
  if out.returncode:
    logging.warning("PyTorch peer for %s failed: %s", what, out.stderr[-500:])
    return None
  return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


TORCH_CLIP_SCRIPT = r"""
import json, os, sys, time, statistics, torch
from transformers import CLIPConfig, CLIPModel
torch.set_num_threads(os.cpu_count())
batch, size = int(sys.argv[1]), int(sys.argv[2])
config = CLIPConfig(
    text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                     max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu"),
    vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=size, patch_size=16, hidden_act="quick_gelu"),
    projection_dim=512)
model = CLIPModel(config).train()
for p in model.text_model.parameters():  # --lock-text.
    p.requires_grad_(False)
for p in model.text_projection.parameters():
    p.requires_grad_(False)
decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and "embedding" not in n]
rest = [p for n, p in model.named_parameters() if p.requires_grad and not (p.ndim >= 2 and "embedding" not in n)]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.2}, {"params": rest, "weight_decay": 0.0}],
                        lr=5e-6, betas=(0.9, 0.98), eps=1e-6)
x = torch.randn(batch, 3, size, size)
tokens = torch.zeros(batch, 77, dtype=torch.long)
tokens[:, :4] = torch.tensor([49406, 320, 1929, 49407])
def step():
    opt.zero_grad(set_to_none=True)
    model(input_ids=tokens, pixel_values=x, return_loss=True).loss.backward()
    opt.step()
for _ in range(2):
    step()
times = []
for _ in range(3):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
print(json.dumps({"seconds": statistics.median(times), "threads": torch.get_num_threads()}))
"""


def clip_finetune_rows(python: str, batch: int = 8) -> list[dict]:
  """OVSeg's CLIP fine-tuning step (configs/ovseg_finetune.py:B/16: ViT-B/16 at 224, text locked, open_clip's AdamW)
  from random weights; the peer is transformers' CLIPModel of the same shape with the text tower locked."""
  from configs import ovseg_finetune
  from ovseg_jax.methods import registry
  config = ovseg_finetune.get_config("B/16")
  config.batch_size, config.init.required = batch, False
  trainable = registry.get(config).build(config, single_device_mesh())
  row, seconds = step_row(trainable, common.random_batch(trainable, batch), None, batch,
                          f"CLIP fine-tuning step (OVSeg ViT-B/16, text locked), batch {batch}, 224 px")
  rows = [row]
  peer = run_peer(python, TORCH_CLIP_SCRIPT, [str(batch), "224"], "CLIP fine-tuning")
  if peer:
    row["vs PyTorch"] = peer / seconds
    rows.append({"what": f"CLIP fine-tuning step, batch {batch}, 224 px (PyTorch eager, transformers CLIPModel)",
                 "img/s": batch / peer})
  return rows


def _random_like(tree: Any, seed: int = 0) -> Any:
  """Arrays of the shapes of `tree` (ShapeDtypeStructs), normal(0, 0.02) for floats."""
  import jax
  import jax.numpy as jnp
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten([0.02 * jax.random.normal(k, leaf.shape, leaf.dtype) if jnp.issubdtype(leaf.dtype, jnp.floating)
                            else jnp.zeros(leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)])


def maft_row(batch: int = 16, targets: int = 6) -> dict:
  """MAFT's IP-CLIP fine-tuning step of configs/maft_demo.py (demo CLIP as IP-CLIP, demo Mask2Former proposals,
  batch 16) with random weights: the abstract build gives the step and the frozen inputs' shapes."""
  import jax
  from configs import maft_demo, mask2former_demo
  from ovseg_jax.methods import registry
  from ovseg_jax.methods.clip import setup as clip_setup
  from ovseg_jax.train import workdir as workdirs
  from ovseg_jax.train.state import create_sharded_state
  config = maft_demo.get_config()
  config.batch_size = batch
  mesh = single_device_mesh()
  with tempfile.TemporaryDirectory() as tmp:
    workdirs.write_config(workdirs.as_workdir(tmp), mask2former_demo.get_config())
    config.init.mask2former = tmp
    trainable = registry.get(config).build(config, mesh, abstract=True)
  state, _ = create_sharded_state(clip_setup.init_params(trainable.model), trainable.tx, config, mesh)
  frozen = {**_random_like(trainable.frozen), "teacher": jax.tree.map(lambda x: x.copy(), state.params["visual"])}
  trainable = dataclasses.replace(trainable, state=state)
  row, _ = step_row(trainable, segmentation_batch(trainable, config, batch, targets), frozen, batch,
                    f"MAFT IP-CLIP step (demo config: demo CLIP + Mask2Former proposals), batch {batch}, "
                    f"{config.data.crop_size} px")
  row["vs PyTorch"] = "no peer: MAFT's release needs detectron2 + its own CLIP, not installable here"
  return row


def ebseg_row(batch: int = 32, targets: int = 6) -> dict:
  """EBSeg's step of configs/ebseg_demo.py (SAM-architecture encoder trained, CLIP frozen, AdaB, SSC) from
  random weights."""
  from configs import ebseg_demo
  from ovseg_jax.methods import registry
  config = ebseg_demo.get_config()
  config.batch_size, config.init.clip, config.init.required = batch, "", False
  trainable = registry.get(config).build(config, single_device_mesh())
  row, _ = step_row(trainable, segmentation_batch(trainable, config, batch, targets), trainable.frozen, batch,
                    f"EBSeg step (demo config: SAM-arch encoder, CLIP, AdaB, SSC), batch {batch}, "
                    f"{config.data.crop_size} px")
  row["vs PyTorch"] = "no peer: EBSeg's release needs detectron2 + open_clip, not installable here"
  return row


def method_rows(python: str) -> list[dict]:
  return [*clip_finetune_rows(python), maft_row(), ebseg_row()]
