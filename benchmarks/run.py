r"""Speed against the machine's limit and against the PyTorch way, measured in one run.

  python -m benchmarks.run [--sections=ceiling,vit,torch,demo,paper,matching,mask2former,methods,paper_pieces,...] \
      [--torch_python=/path/to/python-with-torch-and-timm] [--out=/tmp/benchmarks.json]

Sections: the float32 / bfloat16 matmul ceiling; a ViT-S/16 train step (batch 8, 224) and, given a Python with
torch and timm, the same step in PyTorch eager as the peer; the demo's full train step; the paper config's train step
(Swin-S MaskFormer + text tower + DINO ViT-S/8 pseudo masks) with pseudo masks computed online, read from storage
(`pseudo_masks.source='stored'`) and in bfloat16 compute at batch 2, the first two also at batch 8, each timed in
rounds interleaved with the ceiling (benchmarks/paper.py); the on-device Hungarian matching's share of the paper step
beside a scipy loop on the host; the Mask2Former R50 train step (ADE-150 config, batch 2, 512) and, given the PyTorch
Python, transformers' Mask2Former; the other methods' steps (benchmarks/methods.py: CLIP fine-tuning beside
transformers' CLIPModel, MAFT's IP-CLIP, EBSeg); `paper_pieces` (not by default): the paper step's pieces alone
(benchmarks/paper_profile.py); DINO + K-means pseudo masks per image and K-means beside sklearn's; the input pipeline;
evaluation with sliding windows. FLOPs come from XLA's cost analysis of the compiled programs (no `scan` in these
models, so every layer is counted); utilisation = achieved GFLOP/s / float32 matmul ceiling (for the paper rows, the
ceiling measured in the same rounds).

On CPU the allocator is most of the gap to PyTorch (see benchmarks/README.md): like the training commands, this
one re-executes itself with mimalloc (or tcmalloc) preloaded (`ovseg_jax/allocator.py`; `OVSEG_MALLOC=system`
to compare with glibc's), and the machine line says which allocator ran.
"""
from __future__ import annotations

import json
import subprocess

import numpy as np
from absl import app, flags, logging

from benchmarks import common, methods, paper, paper_profile
from ovseg_jax import allocator

def ceiling() -> list[dict]:
  import jax
  import jax.numpy as jnp
  rows = []
  for n in (2048, 4096):
    for name, dtype, accumulate in (("float32", jnp.float32, None), ("bfloat16", jnp.bfloat16, None),
                                    ("bfloat16 in, float32 accumulate", jnp.bfloat16, jnp.float32)):
      a = jnp.ones((n, n), dtype)
      f = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=accumulate))
      seconds = common.median_seconds(lambda: f(a, a).block_until_ready(), repeats=5)
      rows.append({"what": f"matmul {n} {name}", "GFLOP/s": 2 * n ** 3 / seconds / 1e9})
  return rows


def vit_step(batch: int = 8) -> dict:
  """ViT-S/16 classifier train step (mean-pooled tokens, 1000 classes, AdamW), batch 8 at 224."""
  import jax
  import jax.numpy as jnp
  import optax
  import flax.linen as nn
  from ovseg_jax.models.vit import ViT

  class Classifier(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(1000)(jnp.mean(ViT(16, 384, 12, 6, 1536)(x), axis=(1, 2)))

  model, tx = Classifier(), optax.adamw(1e-3)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(batch, 224, 224, 3)), jnp.float32)
  labels = jnp.arange(batch) % 1000
  params = model.init(jax.random.key(0), images[:1])["params"]

  def step(state, images, labels):
    params, opt_state = state
    def loss_fn(p):
      return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, images), labels).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  step = methods.compile_step(jax.jit(step, donate_argnums=0), (params, tx.init(params)), images, labels)
  return methods.timed_row(step, batch, "ViT-S/16 train step, batch 8, 224 (Flax)", repeats=5)[0]


TORCH_SCRIPT = r"""
import json, os, time, statistics, torch, timm
torch.set_num_threads(os.cpu_count())
model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=1000, global_pool="avg",
                          class_token=False)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x, y = torch.randn(8, 3, 224, 224), torch.arange(8)
def step():
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
for _ in range(2):
    step()
times = []
for _ in range(5):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
print(json.dumps({"seconds": statistics.median(times), "threads": torch.get_num_threads()}))
"""


def torch_vit_step(python: str) -> dict | None:
  if not python:
    return None
  out = subprocess.run([python, "-c", TORCH_SCRIPT], capture_output=True, text=True, timeout=600)
  if out.returncode:
    logging.warning("PyTorch peer failed: %s", out.stderr[-500:])
    return None
  seconds = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
  return {"what": "ViT-S/16 train step, batch 8, 224 (PyTorch eager, timm)", "img/s": 8 / seconds}


def method_step(config, batch: int, label: str) -> tuple[dict, float]:
  """A config's full train step (as its method builds it) on a random batch; also returns seconds per step."""
  from ovseg_jax.methods import registry
  config.batch_size = batch
  trainable = registry.get(config).build(config, methods.single_device_mesh())
  return methods.step_row(trainable, common.random_batch(trainable, batch), trainable.frozen, batch,
                          f"{label} train step, batch {batch}, {config.data.image_size} px")


TORCH_MASK2FORMER_SCRIPT = r"""
import json, os, sys, time, statistics, torch
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, ResNetConfig
torch.set_num_threads(os.cpu_count())
batch, size, classes, targets = (int(a) for a in sys.argv[1:5])
backbone = ResNetConfig(out_features=["stage1", "stage2", "stage3", "stage4"])  # R50.
model = Mask2FormerForUniversalSegmentation(Mask2FormerConfig(backbone_config=backbone, num_labels=classes))
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
x = torch.randn(batch, 3, size, size)
g = torch.Generator().manual_seed(0)
blocks = torch.randint(0, targets, (batch, size // 32, size // 32), generator=g)
segments = blocks.repeat_interleave(32, 1).repeat_interleave(32, 2)
mask_labels = [torch.stack([(s == t).float() for t in range(targets)]) for s in segments]
class_labels = [torch.arange(targets) for _ in range(batch)]
def step():
    opt.zero_grad(set_to_none=True)
    model(pixel_values=x, mask_labels=mask_labels, class_labels=class_labels).loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
    opt.step()
step()
times = []
for _ in range(3):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
print(json.dumps({"seconds": statistics.median(times), "threads": torch.get_num_threads()}))
"""


def mask2former_rows(python: str, batch: int = 2, targets: int = 10) -> list[dict]:
  """The Mask2Former R50 train step of configs/mask2former_ade150.py (512 crops, 100 queries, 12544 points, 10
  supervised predictions, on-device matching) on blocky labels with `targets` classes per image; beside it,
  transformers' Mask2Former (R50 backbone, the same losses, scipy matching) in PyTorch eager."""
  from configs import mask2former_ade150
  from ovseg_jax.methods import registry
  config = mask2former_ade150.get_config()
  config.batch_size, size = batch, config.data.crop_size
  trainable = registry.get(config).build(config, methods.single_device_mesh())
  row, seconds = methods.step_row(trainable, methods.segmentation_batch(trainable, config, batch, targets), None,
                                  batch, f"Mask2Former R50 train step (ADE-150 config), batch {batch}, {size} px")
  rows = [row]
  peer = methods.run_peer(python, TORCH_MASK2FORMER_SCRIPT, [str(batch), str(size), "150", str(targets)],
                          "Mask2Former")
  if peer:
    row["vs PyTorch"] = peer / seconds
    rows.append({"what": f"Mask2Former R50 train step, batch {batch}, {size} px (PyTorch eager, transformers)",
                 "img/s": batch / peer})
  return rows


def matching_rows(paper_step_seconds: float | None, batch: int = 2, layers: int = 6) -> list[dict]:
  """The paper step matches 64 queries to 8 pseudo masks for every image and decoder layer."""
  import jax
  import jax.numpy as jnp
  from scipy.optimize import linear_sum_assignment
  from ovseg_jax.ops import matching
  cost = np.random.default_rng(0).random((batch * layers, 64, 8)).astype(np.float32)
  f = jax.jit(matching.hungarian_matching)
  device = common.median_seconds(lambda: f(jnp.asarray(cost)).block_until_ready(), repeats=5)
  host = common.median_seconds(lambda: [linear_sum_assignment(c) for c in cost], repeats=5)
  rows = [{"what": f"Hungarian on device, {batch * layers} matrices 64x8", "ms": 1e3 * device},
          {"what": f"scipy linear_sum_assignment loop on the host, {batch * layers} matrices", "ms": 1e3 * host}]
  if paper_step_seconds:
    rows[0]["share of paper step"] = device / paper_step_seconds
  return rows


SKLEARN_SCRIPT = r"""
import json, sys, time, statistics, numpy as np
from sklearn.cluster import KMeans
tokens = np.load(sys.argv[1])
def run():
    for x in tokens:
        KMeans(n_clusters=8, n_init=1, max_iter=10, random_state=0).fit(x)
run()
times = []
for _ in range(3):
    t = time.perf_counter(); run(); times.append(time.perf_counter() - t)
print(json.dumps({"seconds_per_image": statistics.median(times) / len(tokens)}))
"""


def pseudo_mask_rows(python: str, batch: int = 8) -> list[dict]:
  """DINO ViT-S/8 (random weights) + K-means K=8 per 224-px image, and K-means alone beside sklearn's on the
  same L2-normalised tokens (sklearn run by `python`, when given)."""
  import tempfile
  import jax
  import jax.numpy as jnp
  from ovseg_jax.ops import pseudo_masks
  from ovseg_jax.models.dino import random_dino
  module, params = random_dino("S/8")
  images = jnp.asarray(np.random.default_rng(0).normal(size=(batch, 224, 224, 3)), jnp.float32)
  tokens = jax.jit(lambda p, x: module.apply({"params": p}, x))(params, images)
  tokens = tokens / jnp.linalg.norm(tokens, axis=-1, keepdims=True)
  kmeans = jax.jit(lambda t: pseudo_masks.generate_pseudo_masks(
      t, num_clusters=8, num_iters=10, key=jax.random.key(0), feature_fn=lambda x: x, grid_hw=(28, 28)))
  both = jax.jit(lambda p, x: pseudo_masks.generate_pseudo_masks(
      x, num_clusters=8, num_iters=10, key=jax.random.key(0), feature_fn=lambda y: module.apply({"params": p}, y),
      grid_hw=(28, 28), normalize=True))
  rows = [{"what": "pseudo masks: DINO ViT-S/8 forward + K-means K=8, per image", "ms": 1e3 * common.median_seconds(
              lambda: jax.block_until_ready(both(params, images)), repeats=3) / batch},
          {"what": "K-means K=8 on 784 DINO tokens, on device, per image", "ms": 1e3 * common.median_seconds(
              lambda: jax.block_until_ready(kmeans(tokens)), repeats=3) / batch}]
  if python:
    with tempfile.NamedTemporaryFile(suffix=".npy") as f:
      np.save(f.name, np.asarray(tokens))
      out = subprocess.run([python, "-c", SKLEARN_SCRIPT, f.name], capture_output=True, text=True, timeout=600)
    if out.returncode == 0:
      seconds = json.loads(out.stdout.strip().splitlines()[-1])["seconds_per_image"]
      rows.append({"what": "sklearn KMeans K=8 (n_init=1, 10 iterations) on the same tokens, per image",
                   "ms": 1e3 * seconds})
    else:
      logging.warning("sklearn reference failed: %s", out.stderr[-500:])
  return rows


def eval_row(config, num_images: int = 4) -> dict:
  """Demo-size model (random weights) evaluated at short side 448 with 64-px windows, stride 32."""
  import jax
  import jax.numpy as jnp
  from ovseg_jax.eval.open_vocabulary import open_vocabulary_predictor
  from ovseg_jax.eval.protocol import Protocol
  from ovseg_jax.eval import prompts
  from ovseg_jax.models.sseg import build_sseg
  model = build_sseg(config.model)
  params = model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)}, jnp.zeros((1, 64, 64, 3)),
                      jnp.zeros((1, config.data.context_length), jnp.int32), train=False)["params"]
  protocol = Protocol(448, 64, 32, prompts.SINGLE, "none", 0.0, 0.0, "winner", 32, {})
  evaluator = open_vocabulary_predictor(model, params, ("cat", "dog", "grass"), None, protocol,
                                          config.data.context_length)
  images = np.random.default_rng(0).integers(0, 256, (num_images, 480, 640, 3), dtype=np.uint8)
  evaluator.predict(images[0], 0.0)  # Compile.
  seconds = common.median_seconds(lambda: [evaluator.predict(x, 0.0) for x in images], repeats=1, warmup=0)
  return {"what": "evaluation, 640x480 images at short side 448, 64-px windows stride 32 (demo model)",
          "img/s": num_images / seconds}


def main(argv) -> None:
  del argv
  f = flags.FLAGS
  allocator.reexec_with_fast_allocator("benchmarks.run")
  logging.set_verbosity(logging.WARNING)
  from configs import sseg_demo
  sections, rows = set(f.sections), []
  ceiling_gflops = None
  if "ceiling" in sections:
    rows += ceiling()
    ceiling_gflops = max(r["GFLOP/s"] for r in rows if "float32" in r["what"] and "accumulate" not in r["what"])
  if "vit" in sections:
    rows.append(vit_step())
  if "torch" in sections and (peer := torch_vit_step(f.torch_python)):
    flax_row = next((r for r in rows if r["what"].startswith("ViT-S/16") and "Flax" in r["what"]), None)
    if flax_row:
      flax_row["vs PyTorch"] = flax_row["img/s"] / peer["img/s"]
    rows.append(peer)
  if "demo" in sections:
    rows.append(method_step(sseg_demo.get_config(), 32, "demo config")[0])
  paper_seconds = None
  if "paper" in sections:
    # Batch 8 is nearer training's per-device batch (the paper's is larger still): the speed-up per image depends on
    # the batch.
    batch_2, paper_seconds = paper.mode_rows(2)
    rows += batch_2 + paper.mode_rows(8, ("online", "stored"))[0]
  if "matching" in sections:
    rows += matching_rows(paper_seconds)
  if "mask2former" in sections:
    rows += mask2former_rows(f.torch_python)
  if "methods" in sections:
    rows += methods.method_rows(f.torch_python)
  if "paper_pieces" in sections:
    rows += paper_profile.piece_rows()
  if "pseudo_masks" in sections:
    rows += pseudo_mask_rows(f.torch_python)
  if "pipeline" in sections:
    import tempfile
    from pathlib import Path
    from benchmarks import input_pipeline
    with tempfile.TemporaryDirectory() as tmp:
      paths = input_pipeline.write_shards(Path(tmp), 1000)
      rows.append({"what": "input pipeline, 224 px crops (tf.data)", "img/s": input_pipeline.tfdata_rate(paths, 64, 1000)})
      rates = input_pipeline.supervised_rates(Path(tmp), 64, 8)
      rows.append({"what": "supervised segmentation input, 640 px crops + targets (tf.data, prepared dataset)",
                   "img/s": rates["tf.data"], "vs Python/PIL": rates["tf.data"] / rates["python"]})
      rows.append({"what": "supervised segmentation input, 640 px crops + targets (Python/PIL loop)",
                   "img/s": rates["python"]})
  if "eval" in sections:
    rows.append(eval_row(sseg_demo.get_config()))
  if ceiling_gflops:
    for r in rows:
      if "GFLOP/s" in r and "of f32 ceiling" not in r and not r["what"].startswith("matmul"):
        r["of f32 ceiling"] = r["GFLOP/s"] / ceiling_gflops
  columns = []
  for r in rows:
    columns += [k for k in r if k not in columns]
  rows = [{c: r.get(c, "") for c in columns} for r in rows]
  common.report("Benchmarks (medians after warm-up)", rows, f.out or None)


if __name__ == "__main__":
  flags.DEFINE_list("sections", ["ceiling", "vit", "torch", "demo", "paper", "matching", "mask2former",
                                 "methods", "pseudo_masks", "pipeline", "eval"],
                    "Which measurements to run.")
  flags.DEFINE_string("torch_python", "", "A Python with torch and timm for the PyTorch peer.")
  flags.DEFINE_string("out", "", "JSON output path.")
  app.run(main)
