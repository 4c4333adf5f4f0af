r"""S-Seg+ self-training: pseudo-label the target images with a trained S-Seg, then train UperNet on them.

  python -m ovseg_jax.selftrain --config=configs/selftrain_demo.py --workdir=/tmp/sseg_plus
  python -m ovseg_jax.selftrain --config=configs/selftrain_voc.py --workdir=W --config.teacher_workdir=SSEG \
      --config.data.root=VOCdevkit/VOC2012 --config.init.vit_checkpoint=mae_pretrain_vit_base.pth

Stage 1 writes pseudo labels (`workdir/pseudo_labels/`, resumable, each host its share) with the teacher's
evaluation protocol (vocabulary, synonyms, background rule; optionally a CLIP classifier or ensemble). Stage 2
trains a ViT UperNet with per-pixel cross-entropy, layer-wise lr decay and a poly schedule on random crops,
through the same loop, checkpoints and metrics as S-Seg training, initialised from a pretrained ViT (MAE) file
or, on the demo, from the teacher's ViT. Then S-Seg+ is evaluated: beside its teacher on the demo
(`selftrain_demo`), on the dataset's validation split otherwise (`selftrain_dataset`). Re-running resumes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from ovseg_jax import checkpoint, loop, optim, progress, pseudo_label, segmentation_data, sharding, train
from ovseg_jax.models.upernet import UperNetViT
from ovseg_jax.preprocessing import normalize_images
from ovseg_jax.selftrain_dataset import DatasetSource
from ovseg_jax.selftrain_demo import DemoSource
from ovseg_jax.weights.vit import read_vit_backbone


class Source(Protocol):
  """Where the second stage's images, pseudo labels and evaluation come from."""
  num_classes: int

  def pseudo_label(self, output: Path) -> dict[str, Any]:
    ...

  def training_samples(self, output: Path) -> tuple[int, Any]:
    ...

  def evaluate(self, workdir: Path, model: Any, params: Any, step: int) -> dict[str, Any]:
    ...


def make_source(config: ml_collections.ConfigDict) -> Source:
  return DatasetSource(config) if config.data.get("dataset") else DemoSource(config)


def build_upernet(cfg: ml_collections.ConfigDict, num_classes: int) -> UperNetViT:
  b = cfg.backbone
  return UperNetViT(num_classes=num_classes, patch_size=b.patch_size, width=b.width, depth=b.depth,
                    num_heads=b.num_heads, mlp_dim=b.mlp_dim, channels=cfg.channels,
                    feature_blocks=tuple(cfg.get("feature_blocks", ())), dropout_rate=cfg.dropout_rate,
                    dtype=jnp.dtype(cfg.get("dtype", "float32")))


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int, params: Any,
                   depth: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW on a warmup + poly schedule, each backbone layer's lr scaled by layer_decay^(distance to the top)."""
  schedule = optim.poly_schedule(cfg.lr, total_steps, cfg.warmup_steps, power=cfg.poly_power)
  tx = optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip_norm) if cfg.grad_clip_norm else optax.identity(),
      optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=optim.decay_mask),
      optim.scale_updates_by(optim.layer_decay_multipliers(params, depth, cfg.layer_decay)))
  return tx, schedule


def segmentation_loss(logits: jax.Array, labels: jax.Array, ignore_index: int) -> tuple[jax.Array, dict]:
  """Mean per-pixel cross-entropy over labelled pixels, logits bilinearly upsampled to the label size."""
  b, h, w = labels.shape
  logits = jax.image.resize(logits.astype(jnp.float32), (b, h, w, logits.shape[-1]), "bilinear")
  valid = labels != ignore_index
  safe = jnp.where(valid, labels, 0)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), safe[..., None], axis=-1)[..., 0]
  count = jnp.maximum(jnp.sum(valid), 1)
  loss = jnp.sum(jnp.where(valid, nll, 0.0)) / count
  accuracy = jnp.sum(valid & (jnp.argmax(logits, -1) == labels)) / count
  return loss, {"loss": loss, "pixel_accuracy": accuracy, "labelled_fraction": jnp.mean(valid)}


def _resized_position_embedding(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """A [1, h, w, c] position embedding resized bicubically to another grid (as BEiT/MAE fine-tuning does)."""
  return np.asarray(jax.image.resize(jnp.asarray(value, jnp.float32), shape, "bicubic"))


def _copy_backbone(params: Any, source: Any, what: str) -> Any:
  """The UperNet params with every backbone leaf taken from `source` (same tree; the position embedding may
  come from another grid); raises naming the first leaf that does not fit."""
  def take(path, leaf):
    names = [str(getattr(k, "key", k)) for k in path]
    value = source
    try:
      for name in names:
        value = value[name]
    except KeyError:
      raise checkpoint.CheckpointMismatchError(
          f"{what} has no parameter {'/'.join(names)}: make model.backbone match it.") from None
    value = np.asarray(value)
    if names[-1] == "pos_embedding" and value.shape != leaf.shape and value.shape[-1] == leaf.shape[-1]:
      value = _resized_position_embedding(value, leaf.shape)
    if value.shape != leaf.shape:
      raise checkpoint.CheckpointMismatchError(
          f"{what}: parameter {'/'.join(names)} has shape {value.shape}, the UperNet backbone expects {leaf.shape}: "
          "make model.backbone match it.")
    return jnp.asarray(value, leaf.dtype)
  return {**params, "backbone": jax.tree_util.tree_map_with_path(take, params["backbone"])}


def initial_backbone(config: ml_collections.ConfigDict) -> tuple[Any, str] | None:
  """(backbone params, description) from `init.vit_checkpoint` (MAE / DINO / timm ViT) or, with
  `init.from_teacher`, the teacher's ViT; None for a random initialisation."""
  if config.init.vit_checkpoint:
    path = Path(config.init.vit_checkpoint).expanduser()
    _, params = read_vit_backbone(path, num_heads=config.model.backbone.num_heads)
    return params, f"ViT checkpoint {path}"
  if config.init.from_teacher:
    _, teacher_params, _ = train.restore_model(config.teacher, Path(config.teacher_workdir).expanduser())
    return teacher_params["backbone"]["vit"], f"the teacher's ViT ({config.teacher_workdir})"
  return None


def crop_spec(config: ml_collections.ConfigDict, num_classes: int) -> segmentation_data.CropSpec:
  d = config.data
  return segmentation_data.CropSpec(d.crop_size, tuple(d.scale), tuple(d.ratio_range), d.cat_max_ratio,
                                    pseudo_label.ignore_index(num_classes))


class _Stage2:
  """The second-stage model, its optimizer and its sharded state, built from the config."""

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int):
    self.mesh = sharding.make_mesh(config.mesh.axes)
    size = config.data.crop_size
    self.model = build_upernet(config.model, num_classes)

    def init_params(key):
      return self.model.init({"params": key, "dropout": key}, jnp.zeros((1, size, size, 3)))["params"]

    abstract = jax.eval_shape(init_params, jax.random.key(0))
    self.tx, self.schedule = make_optimizer(config.optimizer, config.total_steps, abstract,
                                            config.model.backbone.depth)
    self.state, self.shardings = train.create_sharded_state(init_params, self.tx, config, self.mesh)


def train_stage(config: ml_collections.ConfigDict, workdir: Path, source: Source) -> tuple[Any, Any, int]:
  stage = _Stage2(config, source.num_classes)
  loop.describe_parameters(stage.state.params, workdir)
  ckpt, state, data_position = loop.resume(config, workdir, stage.state)
  if data_position is None and (initial := initial_backbone(config)) is not None:
    backbone, what = initial
    state = jax.device_put(state.replace(params=_copy_backbone(state.params, backbone, what)), stage.shardings)
    progress.log(f"second stage: backbone initialised from {what}")
  start_step = int(state.step)
  if start_step < config.total_steps:
    num_samples, read_sample = source.training_samples(workdir / "pseudo_labels")
    spec = crop_spec(config, source.num_classes)
    model = stage.model

    def loss_fn(params, batch, key, frozen):
      del frozen
      logits = model.apply({"params": params}, normalize_images(batch["image"]), train=True, rngs={"dropout": key})
      return segmentation_loss(logits, batch["label"], spec.ignore_index)

    step = train.make_step(loss_fn, stage.tx, stage.schedule, stage.mesh, stage.shardings)
    train_step = lambda state, batch, key: step(state, batch, key, None)
    host_seed = int(np.random.SeedSequence([config.seed, jax.process_index()]).generate_state(1)[0])
    batches = segmentation_data.crop_batches(num_samples, read_sample, config.batch_size // jax.process_count(),
                                             host_seed, start_step, spec, workers=config.data.workers)
    state = loop.run(config, workdir, stage.mesh, train_step, state, batches, ckpt, start_step)
  ckpt.close()
  return stage.model, state.params, int(state.step)


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
  workdir = Path(workdir).expanduser()
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  source = make_source(config)
  if config.total_steps > 0 and not (workdir / "checkpoints").exists():
    progress.log(f"pseudo labels: {source.pseudo_label(workdir / 'pseudo_labels')}")
    multihost_utils.sync_global_devices("pseudo labels written")  # Every host trains on every host's labels.
  model, params, step = train_stage(config, workdir, source)
  return source.evaluate(workdir, model, params, step)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
  """The `ovseg_jax.evaluate` command for a self-training workdir."""
  source = make_source(config)
  stage = _Stage2(config, source.num_classes)
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=config.checkpoint.keep, async_save=False)
  restored = ckpt.restore_latest(stage.state)
  ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}: run `python -m ovseg_jax.selftrain "
                            f"--config=... --workdir={workdir}` first.")
  state, _ = restored
  return source.evaluate(workdir, stage.model, state.params, int(state.step))


def main(argv: list[str]) -> None:
  del argv
  from ovseg_jax import cli, distributed
  distributed.initialize_distributed()
  run(cli.CONFIG.value, cli.WORKDIR.value)


if __name__ == "__main__":
  from ovseg_jax import cli
  cli.run(main)
