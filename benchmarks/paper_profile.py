r"""Where the paper S-Seg step's time goes (configs/sseg_cc12m.py's model at 224, batch 2, DINO S/8 random weights).

  python -m benchmarks.paper_profile [--dtype=float32] [--trace_dir=/tmp/paper_trace]

Two views: each piece jitted alone (forward + backward as the step differentiates it: a vector-Jacobian product
with an all-ones cotangent) with its FLOPs from XLA's cost analysis and its GFLOP/s; and the whole compiled step
traced once with `jax.profiler`, its executed XLA operations summed by the model part their metadata names
(DINO, backbone, FPN, ...; forward or backward) and by kind (matmul fusions against everything else).
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import re
from pathlib import Path

from absl import app, flags

from benchmarks import common, methods, paper
from ovseg_jax import allocator

PARTS = ("DinoViT", "kmeans", "backbone", "pixel_decoder", "decoder", "mask_head", "text_encoder", "projection")


def _fwd_bwd(apply_fn):
  import jax
  import jax.numpy as jnp

  def run(params, *inputs):
    out, vjp = jax.vjp(apply_fn, params, *inputs)
    return vjp(jax.tree.map(jnp.ones_like, out))
  return run


def _measure(name: str, fn, *args) -> dict:
  import jax
  compiled = jax.jit(fn).lower(*args).compile()
  seconds = common.median_seconds(lambda: jax.block_until_ready(compiled(*args)), repeats=3)
  flops = methods.compiled_flops(compiled)
  return {"what": f"paper step piece: {name}", "ms": 1e3 * seconds, "GFLOP/step": flops / 1e9,
          "GFLOP/s": flops / seconds / 1e9}


def _paper_trainable(dtype: str, batch: int):
  from ovseg_jax.methods import registry
  config = paper.paper_config(batch, {"model.dtype": dtype})
  return config, registry.get(config).build(config, methods.single_device_mesh())


def piece_rows(dtype: str = "float32", batch: int = 2) -> list[dict]:
  """One row per piece: Swin-S, FPN, transformer decoder, mask head + matching + mask losses, text tower."""
  import jax
  import jax.numpy as jnp
  from ovseg_jax.methods.sseg import objective
  from ovseg_jax.ops import pseudo_masks
  from ovseg_jax.ops.normalize import normalize_images
  config, trainable = _paper_trainable(dtype, batch)
  model, params = trainable.model, trainable.state.params
  host = common.random_batch(trainable, batch)
  images, tokens = normalize_images(jnp.asarray(host["image"])), jnp.asarray(host["tokens"])
  rngs = {"dropout": jax.random.key(0)}
  bound = model.bind({"params": params}, rngs=rngs)
  part = lambda name: getattr(bound, name).clone(parent=None)
  features = bound.backbone(images, train=True)
  pixel_embeddings, memory = bound.pixel_decoder(features)
  queries = bound.decoder(memory, train=True)
  size = config.data.image_size
  labels = jax.random.randint(jax.random.key(1), (batch, size // 8, size // 8), 0, 8).astype(jnp.uint8)
  targets, valid = pseudo_masks.masks_from_labels(labels, 8)

  def mask_losses(p, q, e):
    pred = part("mask_head").apply({"params": p}, q, e)
    return objective.mask_losses(pred, pseudo_masks.resize_masks(targets, pred.shape[-2:]), valid, config.loss)["loss"]

  return [
      _measure("Swin-S backbone fwd+bwd", _fwd_bwd(lambda p, x: model.backbone.apply(
          {"params": p}, x, train=True, rngs=rngs)), params["backbone"], images),
      _measure("FPN pixel decoder fwd+bwd", _fwd_bwd(lambda p, f: part("pixel_decoder").apply({"params": p}, f)),
               params["pixel_decoder"], features),
      _measure("transformer decoder fwd+bwd", _fwd_bwd(lambda p, m: part("decoder").apply(
          {"params": p}, m, train=True, rngs=rngs)), params["decoder"], memory),
      _measure("mask head + matching + mask losses fwd+bwd", _fwd_bwd(mask_losses), params["mask_head"], queries,
               pixel_embeddings),
      _measure("text tower fwd+bwd", lambda p: _fwd_bwd(lambda p, t: part("text_encoder").apply(
          {"params": p}, t))(p, tokens)[0], params["text_encoder"]),
  ]


def summarise_trace(trace_dir: str | Path, hlo_text: str) -> dict[str, dict[str, float]]:
  """{'part': {part (fwd|bwd): ms}, 'kind': {'matmul (ynn/dot fusions)'|'other': ms}} from a jax.profiler trace
  of one compiled program whose HLO text is `hlo_text`."""
  path = sorted(glob.glob(f"{trace_dir}/**/*perfetto_trace.json.gz", recursive=True))[-1]
  events = json.load(gzip.open(path))
  events = events["traceEvents"] if isinstance(events, dict) else events
  op_names = {}
  for m in re.finditer(r"^\s*(?:ROOT )?%([\w.\-]+) = [^\n]*", hlo_text, re.M):
    found = re.search(r'op_name="([^"]*)"', m.group(0))
    op_names[m.group(1)] = found.group(1) if found else ""
  parts, kinds = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") != "X" or e["name"] not in op_names:
      continue
    op = op_names[e["name"]]
    name = next((p for p in PARTS if p in op), "losses, matching, optimizer, rest")
    parts[f"{name} ({'bwd' if 'transpose(' in op else 'fwd'})"] += e["dur"] / 1e3
    kinds["matmul (ynn / dot fusions)" if e["name"].startswith(("ynn_fusion", "dot")) else "other"] += e["dur"] / 1e3
  return {"part": dict(parts), "kind": dict(kinds)}


def trace_rows(trace_dir: str, dtype: str = "float32", batch: int = 2) -> list[dict]:
  """The whole step traced once: each part's share of the executed operations' time."""
  import jax
  from ovseg_jax.train import sharding
  _, trainable = _paper_trainable(dtype, batch)
  batch_arrays = sharding.host_batch_to_global(common.random_batch(trainable, batch), methods.single_device_mesh())
  args = (batch_arrays, jax.random.key(0), trainable.frozen)
  compiled = trainable.step.lower(trainable.state, *args).compile()
  state = trainable.state
  for _ in range(2):
    state, metrics = compiled(state, *args)
    jax.block_until_ready(metrics)
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    state, metrics = compiled(state, *args)
    jax.block_until_ready(metrics)
  summary = summarise_trace(trace_dir, compiled.as_text())
  total = sum(summary["part"].values())
  return [{"what": f"paper step ops: {k}", "ms": v, "share": v / total}
          for section in ("part", "kind") for k, v in sorted(summary[section].items(), key=lambda kv: -kv[1])]


def main(argv) -> None:
  del argv
  allocator.reexec_with_fast_allocator("benchmarks.paper_profile")
  f = flags.FLAGS
  rows = piece_rows(f.dtype) + trace_rows(f.trace_dir, f.dtype)
  common.report("The paper step by piece and by part", rows, None)


if __name__ == "__main__":
  flags.DEFINE_string("dtype", "float32", "Compute dtype of the model.")
  flags.DEFINE_string("trace_dir", "/tmp/paper_step_trace", "Where the profiler writes the step's trace.")
  app.run(main)
