r"""CONCAT (Chen et al. 2024, arXiv 2402.13697): zero-shot panoptic segmentation with a Mask2Former whose queries are
classified in CLIP's text space, trained in up to three stages, each evaluated with sPQ / uPQ / hPQ.

  python -m ovseg_jax.main --config=configs/concat_demo.py --workdir=/tmp/concat_demo \
      --config.clip.checkpoint=/tmp/clip_demo
  python -m ovseg_jax.main --config=configs/concat_coco_panoptic.py --workdir=W --config.data.root=/data/coco \
      --config.clip.checkpoint=ViT-B-16.pt --config.model.backbone.checkpoint=R-50.pkl

Stages run in sub-workdirs WORKDIR/base, /cat, /union (each resumable, each starting from the previous one's
weights): the transductive setting runs all three; the inductive one (no unseen class names in training) runs
the base alone and adds `concat.unseen_logit_increment` to the unseen classes' logits at inference. Every stage is
evaluated on `eval.split` of the panoptic data; the rows go to WORKDIR/results.json and results.md.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipelines import coco_panoptic, demo_data
from data_pipelines.tokenizer import tokenize
from ovseg_jax.eval import engine, results
from ovseg_jax.eval.panoptic_engine import evaluate_panoptic
from ovseg_jax.eval.windows import WindowPredictor
from ovseg_jax.methods.clip import setup as clip_setup
from ovseg_jax.methods.concat import setup, stages
from ovseg_jax.methods.mask2former import data as m2f_data, trainer as m2f_trainer
from ovseg_jax.models.clip import CLIP
from ovseg_jax.ops.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize_images
from ovseg_jax.train import config_checks, fit, progress, sharding, workdir as workdirs
from ovseg_jax.weights import load_clip

NAME = "CONCAT"


def resolved(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config with the demo's panoptic scenes generated and named as a COCO-layout `data.root`."""
  if config.data.source != "demo_panoptic":
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.root = demo_data.panoptic_root_for_config(config.data, config.seed)
  config.data.source = "coco_panoptic"
  return config


def frozen_clip(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> tuple[Any, dict[str, Any]]:
  """(CLIP module, {'clip': params, 'text': text embeddings [K, C] of `data.class_names` with the prompt})."""
  source = config.clip.checkpoint
  if not source:
    raise ValueError("clip.checkpoint is empty: CONCAT classifies queries in CLIP's text space; give a CLIP file "
                     "(ViT-B/16 in the papers), a Hugging Face CLIPModel directory or a CLIP training workdir "
                     "(the demo: python -m ovseg_jax.main --config=configs/clip_demo.py --workdir=/tmp/clip_demo).")
  path = Path(source).expanduser()
  if (path / "config.json").is_file():
    arch, params, _ = clip_setup.restore_params(path, mesh)
    model = CLIP(arch)
  else:
    model, params = load_clip(path, activation=config.clip.get("activation") or None)
  prompts = [config.concat.prompt.format(n) for n in config.data.class_names]
  tokens = tokenize(prompts, context_length=model.architecture.context_length)
  text = model.apply({"params": params}, jnp.asarray(tokens), method="encode_text")
  return model, {"clip": params, "text": jnp.asarray(text, jnp.float32)}


def stage_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  setting = config.concat.setting
  if setting not in ("inductive", "transductive"):
    raise ValueError(f"concat.setting={setting!r}: use 'inductive' or 'transductive'.")
  return ("base",) if setting == "inductive" else setup.STAGES


def stage_config(config: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(config.to_dict())
  c.total_steps = int(config.stages[f"{stage}_steps"])
  return c


def query_predictor(models: setup.Models, params: Any, text: jax.Array, config: ml_collections.ConfigDict):
  """image -> (class logits [Q, K+1] over `data.class_names`, mask logits [Q, H, W]); images padded to a
  multiple of 32; inductive runs add the increment to the unseen classes' logits."""
  increment = logit_increment(config)

  @jax.jit
  def forward(params, image):
    outputs = models.mask2former.apply({"params": params["mask2former"]},
                                       normalize_images(image[None], IMAGENET_MEAN, IMAGENET_STD))
    outputs = setup.with_text_logits(models, params, outputs, text, config.concat.tau)
    masks = outputs["pred_masks"][0]
    return outputs["pred_logits"][0] + increment, jax.image.resize(masks, (masks.shape[0], *image.shape[:2]),
                                                                  "bilinear")

  def predict(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    padded = np.zeros((-(-h // 32) * 32, -(-w // 32) * 32, 3), np.uint8)
    padded[:h, :w] = image
    logits, masks = forward(params, padded)
    return np.asarray(logits), np.asarray(masks)[:, :h, :w]
  return predict


def logit_increment(config: ml_collections.ConfigDict) -> np.ndarray:
  """[K+1] added to the class logits at inference: `concat.unseen_logit_increment` on the unseen classes in the
  inductive setting (supplement sec. 1), nothing in the transductive one."""
  increment = np.zeros(len(config.data.class_names) + 1, np.float32)
  if config.concat.setting == "inductive":
    increment[stages.class_columns(config)[1]] = config.concat.unseen_logit_increment
  return increment


def semantic_candidate(models: setup.Models, params: Any, text: jax.Array, config: ml_collections.ConfigDict,
                       name: str) -> engine.Candidate:
  """The model as a semantic-segmentation engine candidate over `data.class_names` (MaskFormer's semantic
  inference on the text logits)."""
  names, increment = list(config.data.class_names), logit_increment(config)

  def make(info, protocol):
    class_ids = [i for i, n in enumerate(info.class_names) if n in names]
    columns = jnp.asarray([names.index(info.class_names[i]) for i in class_ids])

    def score(p, windows):
      outputs = models.mask2former.apply({"params": p["mask2former"]},
                                         normalize_images(windows, IMAGENET_MEAN, IMAGENET_STD))
      outputs = setup.with_text_logits(models, p, outputs, text, config.concat.tau)
      return m2f_trainer.scores_from_outputs(outputs["pred_logits"] + increment, outputs["pred_masks"],
                                             windows.shape[1:3])[:, columns]
    return WindowPredictor(jax.jit(score), (params,), class_ids, info.background_index,
                           dataclasses.replace(protocol, background="none"))
  return engine.Candidate(name, make)


def evaluate(config: ml_collections.ConfigDict, workdir: Path, models: setup.Models, params: Any, text: jax.Array,
             stage: str, step: int) -> list[dict[str, Any]]:
  """Panoptic data: one row (PQ, sPQ / uPQ / hPQ) on `eval.split`; semantic data: the engine's eval suite."""
  name = f"{NAME} {stage} (step {step})"
  if config.data.get("targets") != "panoptic":
    return engine.evaluate_run(config, [semantic_candidate(models, params, text, config, name)], workdir / stage,
                               name, step)
  e = config.eval
  dataset = coco_panoptic.CocoPanoptic(config.data.root, e.split)
  return [evaluate_panoptic(query_predictor(models, params, text, config), dataset, list(config.data.class_names),
                            list(config.data.unseen_classes), e.name, name, e.object_mask_threshold,
                            e.overlap_threshold, e.max_images)]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> list[dict[str, Any]]:
  """Runs the stages of `concat.setting` (each resuming in its sub-workdir) and evaluates after each."""
  config_checks.check_loop(config)
  config = resolved(config)
  workdir = workdirs.as_workdir(workdir)
  mesh = fit.checked_mesh(config)
  clip, frozen = frozen_clip(config, mesh)
  rows, params = [], None
  for stage in stage_names(config):
    c = stage_config(config, stage)
    trainable = stages.build(c, mesh, stage, clip, frozen)
    progress.log(f"{NAME}: stage {stage}, {c.total_steps} steps")
    initialise = None if params is None else (
        lambda state, p=params, t=trainable: jax.device_put(state.replace(params=p), t.state_shardings))
    state = fit.fit(c, workdir / stage, mesh, trainable,
                    lambda _, start, c=c: fit.HostData(m2f_data.host_batches(c, start)), initialise)
    params = state.params
    rows += evaluate(config, workdir, trainable.model, params, frozen["text"], stage, int(state.step))
    results.write_results(rows, workdir, f"{NAME} ({config.concat.setting})")
  return rows


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str | Path) -> list[dict[str, Any]]:
  """Re-evaluates the latest checkpoint of every finished stage in `workdir`."""
  config = resolved(config)
  workdir = workdirs.as_workdir(workdir)
  mesh = sharding.make_mesh(config.mesh.axes)
  clip, frozen = frozen_clip(config, mesh)
  rows = []
  for stage in stage_names(config):
    if not (workdir / stage).exists():
      break
    trainable = stages.build(stage_config(config, stage), mesh, stage, clip, frozen, abstract=True)
    state, step = workdirs.restore_latest(workdir / stage, trainable.state, config)
    rows += evaluate(config, workdir, trainable.model, state.params, frozen["text"], stage, step)
  results.write_results(rows, workdir, f"{NAME} ({config.concat.setting})")
  return rows


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, abstract: bool = False):
  """The base stage's `Trainable` (for the memory planner)."""
  config = resolved(config)
  clip, frozen = frozen_clip(config, mesh)
  return stages.build(stage_config(config, "base"), mesh, "base", clip, frozen, abstract)

