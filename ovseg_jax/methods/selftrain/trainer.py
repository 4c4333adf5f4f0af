r"""S-Seg+ self-training (paper sec. 3.3.4): pseudo-label the target images with a trained S-Seg, then train a
ViT UperNet on them.

  python -m ovseg_jax.main --config=configs/selftrain_demo.py --workdir=/tmp/sseg_plus \
      --config.teacher_workdir=/tmp/sseg_demo
  python -m ovseg_jax.main --config=configs/selftrain_voc.py --workdir=W --config.teacher_workdir=SSEG \
      --config.data.root=VOCdevkit/VOC2012 --config.init.vit_checkpoint=mae_pretrain_vit_base.pth

Stage 1 writes pseudo labels (`workdir/pseudo_labels/`, resumable, each host its share) with the teacher's
evaluation protocol (vocabulary, synonyms, background rule; optionally a CLIP classifier or ensemble). Stage 2
trains the UperNet (`setup`) on random crops through the shared loop, initialised from a pretrained ViT (MAE)
file or, on the demo, from the teacher's ViT. S-Seg+ is then evaluated by the shared engine with `config.eval`:
beside its teacher on the demo (`demo_source`), on the dataset's validation split otherwise (`dataset_source`).
Re-running resumes.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
from jax.experimental import multihost_utils

from ovseg_jax.eval import engine
from ovseg_jax.eval.windows import WindowPredictor
from ovseg_jax.methods.selftrain import setup
from ovseg_jax.methods.selftrain.dataset_source import DatasetSource
from ovseg_jax.methods.selftrain.demo_source import DemoSource
from ovseg_jax.methods.sseg import trainer as sseg
from ovseg_jax.ops.normalize import normalize_images
from ovseg_jax.train import config_checks, fit, progress, sharding, workdir as workdirs
from ovseg_jax.train.state import overlay_params
from ovseg_jax.weights.vit import read_vit_backbone

NAME = "S-Seg+ (self-trained UperNet)"


class Source(Protocol):
  """Where the second stage's images, pseudo labels and evaluation come from."""
  num_classes: int

  def pseudo_label(self, output: Path) -> dict[str, Any]:
    ...

  def host_data(self, output: Path, data_position: dict[str, Any] | None, start_step: int) -> fit.HostData:
    """The second stage's batches of crops of the images labelled under `output`."""
    ...

  def eval_roots(self) -> dict[str, str]:
    ...

  def teacher_candidates(self) -> list[engine.Candidate]:
    ...


def make_source(config: ml_collections.ConfigDict) -> Source:
  return DatasetSource(config) if config.data.get("dataset") else DemoSource(config)


def initial_backbone(config: ml_collections.ConfigDict) -> tuple[Any, str] | None:
  """(backbone params, description) from `init.vit_checkpoint` (MAE / DINO / timm ViT) or, with
  `init.from_teacher`, the teacher's ViT; None for a random initialisation."""
  if config.init.vit_checkpoint:
    path = Path(config.init.vit_checkpoint).expanduser()
    _, params = read_vit_backbone(path, num_heads=config.model.backbone.num_heads)
    return params, f"ViT checkpoint {path}"
  if config.init.from_teacher:
    _, teacher_params, _ = sseg.restore_model(config.teacher, workdirs.as_workdir(config.teacher_workdir))
    return teacher_params["backbone"]["vit"], f"the teacher's ViT ({config.teacher_workdir})"
  return None


def initialise_backbone(params: Any, backbone: Any, what: str) -> Any:
  """The UperNet params with every backbone leaf taken from `backbone` (position embeddings of another grid
  resized); raises naming the first parameter that is missing or does not fit."""
  return {**params, "backbone": overlay_params(params["backbone"], backbone, what, resize_position_embeddings=True,
                                               strict=True)}


def train_stage(config: ml_collections.ConfigDict, workdir: Path, source: Source) -> tuple[Any, Any, int]:
  mesh = fit.checked_mesh(config)
  trainable = setup.build(config, mesh, classes=source.num_classes)

  def initialise(state):
    if (initial := initial_backbone(config)) is None:
      return state
    backbone, what = initial
    progress.log(f"second stage: backbone initialised from {what}")
    return jax.device_put(state.replace(params=initialise_backbone(state.params, backbone, what)),
                          trainable.state_shardings)

  def host_data(data_position, start_step):
    return source.host_data(workdir / "pseudo_labels", data_position, start_step)

  state = fit.fit(config, workdir, mesh, trainable, host_data, initialise)
  return trainable.model, state.params, int(state.step)


def upernet_candidate(model: Any, params: Any) -> engine.Candidate:
  """S-Seg+ as an engine candidate: softmax over the dataset's classes, every class competing by argmax."""
  def score_windows(p, windows):
    logits = model.apply({"params": p}, normalize_images(windows)).astype(jnp.float32)
    logits = jax.image.resize(logits, (*windows.shape[:3], logits.shape[-1]), "bilinear")
    return jnp.moveaxis(jax.nn.softmax(logits), -1, 1)

  def make(info, protocol):
    return WindowPredictor(jax.jit(score_windows), (params,), list(range(info.num_classes)), info.background_index,
                           dataclasses.replace(protocol, background="none"))
  return engine.Candidate(NAME, make)


def evaluate(config: ml_collections.ConfigDict, workdir: Path, source: Source, model: Any, params: Any,
             step: int) -> list[dict[str, Any]]:
  return engine.evaluate_suite(config.eval, source.teacher_candidates() + [upernet_candidate(model, params)],
                               workdir, f"S-Seg+ at step {step}", source.eval_roots(), extra={"step": step})


def check_config(config: ml_collections.ConfigDict) -> None:
  """The values the second stage's loop and crops read, checked before anything is built."""
  config_checks.check_loop(config)
  config_checks.check_int(config, "data.crop_size")
  config_checks.check_pair(config, "data.ratio_range", 0.0)
  config_checks.check_number(config, "pseudo_labels.min_confidence", 0.0)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> list[dict[str, Any]]:
  check_config(config)
  workdir = workdirs.as_workdir(workdir)
  source = make_source(config)
  if config.total_steps > 0 and not (workdir / "checkpoints").exists():
    progress.log(f"pseudo labels: {source.pseudo_label(workdir / 'pseudo_labels')}")
    multihost_utils.sync_global_devices("pseudo labels written")  # Every host trains on every host's labels.
  model, params, step = train_stage(config, workdir, source)
  return evaluate(config, workdir, source, model, params, step)


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str | Path) -> list[dict[str, Any]]:
  """The `ovseg_jax.evaluate --workdir` command for a self-training workdir."""
  source = make_source(config)
  mesh = sharding.make_mesh(config.mesh.axes)
  trainable = setup.build(config, mesh, abstract=True, classes=source.num_classes)
  state, step = workdirs.restore_latest(workdir, trainable.state, config)
  return evaluate(config, workdirs.as_workdir(workdir), source, trainable.model, state.params, step)
