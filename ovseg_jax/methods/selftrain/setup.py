"""S-Seg+'s second stage, built one way for the trainer, the memory planner and the benchmarks: a ViT UperNet
trained with per-pixel cross-entropy, AdamW with layer-wise lr decay on a warmup + poly schedule."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from data_pipelines import demo_data, labelled, segmentation_crops
from data_pipelines.segmentation_crops import CropSpec
from ovseg_jax.methods.selftrain import pseudo_labels
from ovseg_jax.models.upernet import UperNetViT
from ovseg_jax.ops.normalize import normalize_images
from ovseg_jax.train import fit, optim
from ovseg_jax.train.state import abstract_state, create_sharded_state
from ovseg_jax.train.step import Trainable, make_step


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


def num_classes(config: ml_collections.ConfigDict) -> int:
  """The target dataset's classes (the demo's, or `data.dataset`'s under `data.root`)."""
  if not config.data.get("dataset"):
    return len(demo_data.class_names())
  if not config.data.root:
    raise ValueError(f"data.root is empty: set --config.data.root to the {config.data.dataset} directory (its "
                     "layout: data_pipelines/eval_datasets).")
  return labelled.load(config.data.dataset, config.data.root, config.data.split).info.num_classes


def crop_spec(config: ml_collections.ConfigDict, classes: int) -> CropSpec:
  d = config.data
  return CropSpec(d.crop_size, tuple(d.scale), tuple(d.ratio_range), d.cat_max_ratio,
                  pseudo_labels.ignore_index(classes))


def crop_host_data(config: ml_collections.ConfigDict, num_samples: int, read_sample: Any, classes: int,
                   start_step: int) -> fit.HostData:
  """Random crops of `read_sample(i) -> (image, label)` for i < num_samples, keyed by (seed, host, step)."""
  host_seed = int(np.random.SeedSequence([config.seed, jax.process_index()]).generate_state(1)[0])
  return fit.HostData(segmentation_crops.crop_batches(
      num_samples, read_sample, config.batch_size // jax.process_count(), host_seed, start_step,
      crop_spec(config, classes), workers=config.data.workers))


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, abstract: bool = False,
          classes: int | None = None) -> Trainable:
  """The second stage's `Trainable` for `classes` (default: the target dataset's)."""
  classes = classes or num_classes(config)
  size = config.data.crop_size
  model = build_upernet(config.model, classes)

  def init_params(key):
    return model.init({"params": key, "dropout": key}, jnp.zeros((1, size, size, 3)))["params"]

  tx, schedule = make_optimizer(config.optimizer, config.total_steps, jax.eval_shape(init_params, jax.random.key(0)),
                                config.model.backbone.depth)
  if abstract:
    _, state, shardings = abstract_state(init_params, tx, config, mesh)
  else:
    state, shardings = create_sharded_state(init_params, tx, config, mesh)
  ignore = pseudo_labels.ignore_index(classes)

  def loss_fn(params, batch, key, frozen):
    del frozen
    logits = model.apply({"params": params}, normalize_images(batch["image"]), train=True, rngs={"dropout": key})
    return segmentation_loss(logits, batch["label"], ignore)

  def batch_spec(batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {"image": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8),
            "label": jax.ShapeDtypeStruct((batch_size, size, size), jnp.int32)}

  return Trainable(model=model, tx=tx, schedule=schedule, state=state, state_shardings=shardings,
                   step=make_step(loss_fn, tx, schedule, mesh, shardings), frozen=None, batch_spec=batch_spec)
