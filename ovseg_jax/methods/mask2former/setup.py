"""Mask2Former's training set-up, built one way for the trainer, the memory planner and the benchmarks: the model
(ResNet or Swin backbone by name, or a small custom ResNet; the K+1 head or a text classifier, `classifier.py`),
AdamW as Mask2Former's `build_optimizer` makes it, the sharded state and the jitted step (model, matching,
point-sampled criterion, update). A text classifier's training-class embeddings are the step's frozen input.

Optimizer (Mask2Former's released `train_net.py`): AdamW; the backbone's learning rate times
`backbone_multiplier`; no weight decay on normalisation layers (GroupNorm, LayerNorm, frozen BatchNorm) and
embeddings (learnable queries, the decoder's level embedding, Swin's relative position tables), while biases of
linear and conv layers are decayed as there; detectron2's WarmupPolyLR; the whole model's gradient clipped to a
global norm of `grad_clip_norm` ("full_model" clipping).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ovseg_jax.methods.mask2former import classifier, data
from ovseg_jax.models import resnet, swin
from ovseg_jax.models.backbones import checked_section
from ovseg_jax.models.mask2former import Mask2Former
from ovseg_jax.models.mask2former_decoder import MaskedAttentionDecoder
from ovseg_jax.models.mask2former_pixel_decoder import MSDeformAttnPixelDecoder
from ovseg_jax.ops.mask2former_criterion import CriterionConfig, mask2former_loss
from ovseg_jax.ops.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize_images
from ovseg_jax.train import optim, progress, sharding
from ovseg_jax.train.state import abstract_state, create_sharded_state, overlay_params
from ovseg_jax.train.step import Trainable, make_step
from ovseg_jax.weights.backbones import read_backbone_checkpoint
from ovseg_jax.weights.resnet import read_resnet

_CUSTOM_RESNET = ("depths", "stem_width", "bottleneck_widths", "out_channels")
# Leaves never decayed (Mask2Former: nn.Embedding weights and Swin's position tables; a text classifier's
# no-object embedding and logit scale), besides norm layers.
_EMBEDDINGS = ("query_feat", "query_embed", "relative_position_bias_table", "absolute_pos_embed",
               "no_object_embedding", "logit_scale")


def build_backbone(cfg: Mapping[str, Any], dtype: Any) -> Any:
  """`model.backbone`: {name: 'R50'|'R101'|'R152'|'Swin-T'|'Swin-S'|'Swin-B'} or a custom ResNet {depths,
  stem_width, bottleneck_widths, out_channels}; optional `checkpoint` (read by `pretrained_backbone`)."""
  cfg = dict(cfg)
  name = cfg.pop("name", None)
  cfg.pop("checkpoint", None)
  if name in resnet.VARIANTS:
    checked_section(cfg, f"model.backbone ({name})", (), {})
    return resnet.resnet(name, dtype=dtype)
  if name in swin.VARIANTS:
    b = checked_section(cfg, f"model.backbone ({name})", (), {"drop_path_rate": 0.3})
    return swin.swin(name, drop_path_rate=b["drop_path_rate"], dtype=dtype)
  if name is not None:
    raise ValueError(f"model.backbone.name={name!r}: use one of {sorted(resnet.VARIANTS) + sorted(swin.VARIANTS)}, "
                     f"or no name and the custom ResNet keys {list(_CUSTOM_RESNET)}.")
  b = checked_section(cfg, "model.backbone", _CUSTOM_RESNET, {})
  return resnet.ResNet(tuple(b["depths"]), b["stem_width"], tuple(b["bottleneck_widths"]), tuple(b["out_channels"]),
                       dtype=dtype)


def build_model(cfg: ml_collections.ConfigDict, num_classes: int) -> Mask2Former:
  """Mask2Former with `model.classifier`: a K+1 class head over `num_classes` training classes, or a text
  classifier (called with `class_embeddings`)."""
  dtype = jnp.dtype(cfg.get("dtype", "float32"))
  query_classifier = classifier.build_classifier(cfg.get("classifier"), dtype)
  pixel_decoder = MSDeformAttnPixelDecoder(**dict(cfg.pixel_decoder), dtype=dtype)
  decoder = MaskedAttentionDecoder(num_classes=num_classes if query_classifier is None else 0,
                                   mask_dim=pixel_decoder.mask_dim, **dict(cfg.decoder), dtype=dtype)
  return Mask2Former(build_backbone(cfg.backbone, dtype), pixel_decoder, decoder, query_classifier)


def training_class_embeddings(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                              abstract: bool = False) -> jax.Array | jax.ShapeDtypeStruct | None:
  """The text classifier's embeddings of the training classes (their shape with `abstract`); None for the head."""
  cfg, names = config.model.get("classifier"), data.training_classes(config)
  if classifier.classifier_section(cfg)["kind"] == "head":
    return None
  if abstract:
    return classifier.abstract_embeddings(cfg, len(names))
  return jax.device_put(classifier.TextEmbedder(cfg, mesh)(names), sharding.replicated(mesh))


def pretrained_backbone(cfg: Mapping[str, Any]) -> dict[str, Any] | None:
  """Backbone params from `model.backbone.checkpoint`: torchvision / detectron2 / Hugging Face ResNets for
  'R50'..., released / timm / MaskFormer Swin files for Swin; None without a checkpoint."""
  if cfg.get("checkpoint") and cfg.get("name") in resnet.VARIANTS:
    return read_resnet(Path(cfg["checkpoint"]).expanduser(), cfg["name"])[1]
  return read_backbone_checkpoint(cfg)


def decay_mask(params: Any) -> Any:
  """True for the leaves Mask2Former decays: all but norm layers' and embeddings'."""
  def keep(path, _):
    names = [str(getattr(k, "key", k)) for k in path]
    is_norm = any("norm" in n.lower() for n in names)
    is_embedding = names[-1] in _EMBEDDINGS or names[-2:] == ["decoder", "level_embed"]
    return not (is_norm or is_embedding)
  return jax.tree_util.tree_map_with_path(keep, params)


def backbone_multipliers(params: Any, multiplier: float) -> Any:
  return {k: jax.tree.map(lambda _: multiplier if k == "backbone" else 1.0, v) for k, v in params.items()}


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int,
                   params: Any) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = optim.poly_schedule(cfg.lr, total_steps, cfg.warmup_steps, power=cfg.poly_power)
  tx = optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip_norm) if cfg.grad_clip_norm else optax.identity(),
      optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask),
      # After AdamW: scales the backbone's step and its decoupled decay, as a per-group lr does in PyTorch.
      optim.scale_updates_by(backbone_multipliers(params, cfg.backbone_multiplier)))
  return tx, schedule


def batch_spec(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  size = config.data.crop_size
  return {"image": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8),
          "segments": jax.ShapeDtypeStruct((batch_size, size, size), jnp.int32),
          "target_classes": jax.ShapeDtypeStruct((batch_size, config.data.max_targets), jnp.int32)}


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, abstract: bool = False) -> Trainable:
  """Mask2Former's `Trainable` over the config's training classes; with `abstract`, the state is shapes only and
  no checkpoint is read."""
  model = build_model(config.model, len(data.training_classes(config)))
  size = config.data.crop_size
  class_embeddings = training_class_embeddings(config, mesh, abstract)

  def init_params(key):
    text = None if class_embeddings is None else jnp.zeros(class_embeddings.shape, class_embeddings.dtype)
    return model.init({"params": key, "dropout": key}, jnp.zeros((1, size, size, 3)), class_embeddings=text)["params"]

  tx, schedule = make_optimizer(config.optimizer, config.total_steps, jax.eval_shape(init_params, jax.random.key(0)))
  if abstract:
    _, state, shardings = abstract_state(init_params, tx, config, mesh)
  else:
    state, shardings = create_sharded_state(init_params, tx, config, mesh)
    pretrained = pretrained_backbone(config.model.backbone)
    if pretrained is not None:
      params = {**state.params, "backbone": overlay_params(state.params["backbone"], pretrained, "model.backbone")}
      state = jax.device_put(state.replace(params=params), shardings)
      progress.log(f"backbone initialised from {config.model.backbone.checkpoint}")
  criterion = CriterionConfig.from_config(config.loss)

  def loss_fn(params, batch, key, frozen):
    dropout_key, loss_key = jax.random.split(key)
    images = normalize_images(batch["image"], IMAGENET_MEAN, IMAGENET_STD)
    outputs = model.apply({"params": params}, images, train=True, class_embeddings=frozen,
                          rngs={"dropout": dropout_key})
    return mask2former_loss(outputs, batch["segments"], batch["target_classes"], loss_key, criterion)

  return Trainable(model=model, tx=tx, schedule=schedule, state=state, state_shardings=shardings,
                   step=make_step(loss_fn, tx, schedule, mesh, shardings), frozen=class_embeddings,
                   batch_spec=lambda batch_size: batch_spec(config, batch_size))
