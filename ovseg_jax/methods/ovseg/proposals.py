"""Mask proposals from any trained mask model workdir: a supervised Mask2Former (`trainer='mask2former'`, its K+1
head over the training classes) or S-Seg (`trainer='sseg'`, masks named by its text tower). The workdir's own
config.json rebuilds the model and its latest checkpoint is restored.

A model gives per-image soft masks (sigmoid of its last mask logits, at the image's size) for mining pairs, and
engine candidates in which any classifier (its own head, a CLIP's masked crops, OVSeg's ensemble) names its masks.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from ovseg_jax.eval import engine
from ovseg_jax.eval.open_vocabulary import ClipSetup, proposal_predictor
from ovseg_jax.methods.mask2former import data as mask2former_data, trainer as mask2former
from ovseg_jax.methods.sseg import trainer as sseg
from ovseg_jax.ops.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize_images
from ovseg_jax.train import workdir as workdirs

TRAINERS = ("mask2former", "sseg")


@dataclasses.dataclass(frozen=True)
class MaskModel:
  """A restored mask model: `input_size` is the square its images are resized to (its training crop);
  `own_classes` the classes of a fixed head (None: it names any class with its text tower)."""
  trainer: str
  config: ml_collections.ConfigDict
  model: Any
  params: Any
  step: int
  input_size: int
  own_classes: tuple[str, ...] | None


def load_mask_model(workdir: str | Path) -> MaskModel:
  """The latest checkpoint of a mask model's training workdir."""
  config = workdirs.read_config(workdir)
  if config.get("trainer") not in TRAINERS:
    raise ValueError(f"{workdir} holds a {config.get('trainer')!r} run; proposals come from a mask model's workdir "
                     f"(trainer one of {TRAINERS}).")
  if config.trainer == "mask2former":
    model, params, step = mask2former.restore_model(config, workdir)
    size, own = config.data.crop_size, tuple(mask2former_data.training_classes(config))
  else:
    model, params, step = sseg.restore_model(config, workdir)
    size, own = config.data.image_size, None
  return MaskModel(config.trainer, config, model, jax.device_get(params), step, size, own)


def mask_logits_fn(mask_model: MaskModel) -> Callable[[Any, jax.Array], jax.Array]:
  """`fn(params, images uint8 [B, S, S, 3]) -> mask logits [B, N, h, w]` of the model's last prediction."""
  model = mask_model.model
  if mask_model.trainer == "mask2former":
    return lambda p, x: model.apply({"params": p}, normalize_images(x, IMAGENET_MEAN, IMAGENET_STD))["pred_masks"]
  return lambda p, x: model.apply({"params": p}, normalize_images(x), method="encode_image")["pred_masks"][-1]


def head_outputs(mask_model: MaskModel) -> Callable[[Any, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]:
  """A fixed head's `fn(params, images uint8) -> (mask logits, class probabilities [B, N, K], no-object [B, N])`."""
  model = mask_model.model

  def fn(p, x):
    out = model.apply({"params": p}, normalize_images(x, IMAGENET_MEAN, IMAGENET_STD))
    probs = jax.nn.softmax(out["pred_logits"].astype(jnp.float32), axis=-1)
    return out["pred_masks"], probs[..., :-1], probs[..., -1]
  return fn


def soft_proposals(mask_model: MaskModel) -> Callable[[np.ndarray], np.ndarray]:
  """`fn(image uint8 [H, W, 3]) -> float32 [N, H, W]`: mask probabilities at the image's size (the image resized to
  the model's input square, the mask logits resized back bilinearly before the sigmoid)."""
  logits_fn = jax.jit(mask_logits_fn(mask_model))
  size = mask_model.input_size

  @functools.partial(jax.jit, static_argnums=1)
  def at_size(logits, hw):
    return jax.nn.sigmoid(jax.image.resize(logits.astype(jnp.float32), (logits.shape[0], *hw), "bilinear"))

  def fn(image: np.ndarray) -> np.ndarray:
    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    logits = logits_fn(mask_model.params, jnp.asarray(resized)[None])[0]
    return np.asarray(at_size(logits, image.shape[:2]))
  return fn


def binary_proposals(mask_model: MaskModel, threshold: float = 0.5) -> Callable[[np.ndarray], np.ndarray]:
  """`fn(image uint8 [H, W, 3]) -> bool [N, H, W]`: the soft masks above `threshold` (what pair mining crops)."""
  soft = soft_proposals(mask_model)
  return lambda image: soft(image) > threshold


def candidates(mask_model: MaskModel, rows: list[tuple[str, str, ClipSetup | None]]) -> list[engine.Candidate]:
  """Engine candidates, one per (row name, classifier, CLIP): the model's masks named by its own scores
  ('learned'), a CLIP's masked crops ('clip_crop') or an ensemble of both ('ensemble:NAME')."""
  out = []
  for name, classifier, clip in rows:
    if mask_model.own_classes is None:
      out += sseg.candidates(mask_model.model, mask_model.params, mask_model.config, (classifier,), clip, name)
      out[-1] = dataclasses.replace(out[-1], name=name)
      continue

    def make(info, protocol, classifier=classifier, clip=clip):
      return proposal_predictor(head_outputs(mask_model), mask_model.params, mask_model.own_classes,
                                info.class_names, info.background_index, protocol, classifier, clip)
    out.append(engine.Candidate(name, make))
  return out
