r"""Supervised Mask2Former (Cheng et al. 2022) trained with pixel labels on the seen classes, through the shared
loop, and evaluated by the shared engine.

  python -m ovseg_jax.main --config=configs/mask2former_demo.py --workdir=/tmp/m2f_demo
  python -m ovseg_jax.main --config=configs/mask2former_coco_stuff.py --workdir=W --config.data.root=/data/coco \
      --config.model.backbone.checkpoint=R-50.pkl

Inference is MaskFormer's semantic inference: per-pixel class scores = sum over queries of softmax(class logits)
without "no object" times sigmoid(mask), masks bilinearly upsampled to the window. With the K+1 head
(`model.classifier.kind='head'`) classes held out of training (unseen) get no score and are never predicted, so
their IoU is 0 by construction; a text classifier (`kind='text'`) scores every class of the evaluated dataset
by the text embeddings of its name.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ovseg_jax.eval import engine
from ovseg_jax.eval.windows import WindowPredictor
from ovseg_jax.methods.mask2former import classifier, data, setup
from ovseg_jax.ops.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize_images
from ovseg_jax.train import config_checks, fit, sharding, workdir as workdirs

NAME = "Mask2Former"


def scores_from_outputs(class_logits: jax.Array, mask_logits: jax.Array, size: tuple[int, int]) -> jax.Array:
  """MaskFormer's semantic inference: class logits [B, Q, K+1] and mask logits [B, Q, h, w] -> class scores
  [B, K, *size] (softmax without "no object" times the sigmoid of the bilinearly resized masks)."""
  probs = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)[..., :-1]
  masks = mask_logits.astype(jnp.float32)
  masks = jax.nn.sigmoid(jax.image.resize(masks, (*masks.shape[:2], *size), "bilinear"))
  return jnp.einsum("bqk,bqhw->bkhw", probs, masks)


def semantic_scores(model: Any, params: Any, windows: jax.Array, class_embeddings: jax.Array | None = None
                    ) -> jax.Array:
  """uint8 windows [B, S, S, 3] -> class scores [B, K, S, S] (K: the head's classes, or the rows of
  `class_embeddings` for a text classifier)."""
  outputs = model.apply({"params": params}, normalize_images(windows, IMAGENET_MEAN, IMAGENET_STD),
                        class_embeddings=class_embeddings)
  return scores_from_outputs(outputs["pred_logits"], outputs["pred_masks"], windows.shape[1:3])


def candidates(model: Any, params: Any, config: ml_collections.ConfigDict, name: str = NAME) -> list[engine.Candidate]:
  """The trained classifier as an engine candidate (the protocol's background rule is replaced by 'none':
  background, where trained, is a class like any other). The head: a dataset's classes that are training classes
  compete by argmax; a text classifier: all of its classes, by their names' text embeddings."""
  if classifier.classifier_section(config.model.get("classifier"))["kind"] == "text":
    return [_text_candidate(model, params, config, name)]
  trained = data.training_classes(config)

  def make(info, protocol):
    class_ids = [i for i, n in enumerate(info.class_names) if n in trained]
    if not class_ids:
      raise ValueError(f"{name} was trained on {trained[:5]}..., none of {info.name}'s classes.")
    columns = jnp.asarray([trained.index(info.class_names[i]) for i in class_ids])
    score = jax.jit(lambda p, windows: semantic_scores(model, p, windows)[:, columns])
    return WindowPredictor(score, (params,), class_ids, info.background_index,
                           dataclasses.replace(protocol, background="none"))
  return [engine.Candidate(name, make)]


def _text_candidate(model: Any, params: Any, config: ml_collections.ConfigDict, name: str) -> engine.Candidate:
  embed = classifier.TextEmbedder(config.model.classifier, sharding.make_mesh(config.mesh.axes))
  score = jax.jit(lambda p, text, windows: semantic_scores(model, p, windows, text))

  def make(info, protocol):
    return WindowPredictor(score, (params, embed(info.class_names)), list(range(len(info.class_names))),
                           info.background_index, dataclasses.replace(protocol, background="none"))
  return engine.Candidate(name, make)


def evaluate(config: ml_collections.ConfigDict, workdir: Path, model: Any, params: Any, step: int
             ) -> list[dict[str, Any]]:
  """The eval suite of `config.eval` on the model (`engine.evaluate_run`)."""
  return engine.evaluate_run(config, candidates(model, params, config), workdir, f"{NAME} at step {step}", step)


def train_on_labels(config: ml_collections.ConfigDict, workdir: str | Path, build: Callable, evaluate_fn: Callable
                    ) -> list[dict[str, Any]]:
  """Trains the `Trainable` that `build(config, mesh)` makes on the labelled crops of `data.host_data`
  (resuming from the latest checkpoint in `workdir`), then `evaluate_fn(config, workdir, model, params, step)`."""
  config_checks.check_loop(config)
  workdir = workdirs.as_workdir(workdir)
  mesh = fit.checked_mesh(config)
  trainable = build(config, mesh)
  state = fit.fit(config, workdir, mesh, trainable,
                  lambda position, start_step: data.host_data(config, workdir, position, start_step))
  return evaluate_fn(config, workdir, trainable.model, state.params, int(state.step))


def restore(config: ml_collections.ConfigDict, workdir: str | Path, build: Callable) -> tuple[Any, Any, int]:
  """(model, params, step) of the latest checkpoint in `workdir`, the model from `build(config, mesh, abstract)`."""
  trainable = build(config, sharding.make_mesh(config.mesh.axes), abstract=True)
  state, step = workdirs.restore_latest(workdir, trainable.state, config)
  return trainable.model, state.params, step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> list[dict[str, Any]]:
  """Trains (resuming from the latest checkpoint in `workdir`) and evaluates; returns the results rows."""
  return train_on_labels(config, workdir, setup.build, evaluate)


def restore_model(config: ml_collections.ConfigDict, workdir: str | Path) -> tuple[Any, Any, int]:
  """(model, params, step) of the latest checkpoint in `workdir`, built from `config`."""
  return restore(config, workdir, setup.build)


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str | Path) -> list[dict[str, Any]]:
  """Evaluates the latest checkpoint in `workdir` (the `ovseg_jax.evaluate --workdir` command)."""
  model, params, step = restore_model(config, workdir)
  return evaluate(config, workdirs.as_workdir(workdir), model, params, step)
