"""EBSeg's training set-up, built one way for the trainer, the memory planner and the benchmarks: the model (SAM
image encoder, CLIP, AdaB), its frozen parts, the optimizer of the released `train_net.py`, the sharded state and
the jitted step.

Frozen as released: SAM's image encoder except its position embedding (`pos_embed`) and the whole CLIP except the
image tower's `positional_embedding` (text tower, logit scale, recognition blocks included). Frozen weights get
no gradient (stop_gradient) and no update (`optax.set_to_zero`, which keeps no optimizer state), so they stay
bit-identical; gradient clipping (full model, L2 0.01) sees the trained ones only, as PyTorch's clip over
parameters that require grad. `model.train_sam` trains the whole SAM encoder instead (the demo, which has no
pretrained SAM). AdamW, WarmupPolyLR (power 0.9), weight decay 0 on normalisation layers, the decoder's
embeddings and every position embedding (`WEIGHT_DECAY_EMBED_GROUP`), decayed elsewhere (A's scale included).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ovseg_jax.eval import prompts
from ovseg_jax.eval.mask_scores import class_text_embeddings
from ovseg_jax.methods.clip import setup as clip_setup
from ovseg_jax.methods.ebseg.objective import LossWeights, ebseg_loss
from ovseg_jax.methods.mask2former import data, setup as mask2former_setup
from ovseg_jax.models.adab import AdaB
from ovseg_jax.models.clip import ClipArchitecture
from ovseg_jax.models.ebseg import EBSeg
from ovseg_jax.models.mask2former_decoder import MaskedAttentionDecoder
from ovseg_jax.models.mask2former_pixel_decoder import MSDeformAttnPixelDecoder
from ovseg_jax.models.sam import SamImageEncoder, sam_image_encoder
from ovseg_jax.ops.mask2former_criterion import CriterionConfig
from ovseg_jax.ops.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize_images
from ovseg_jax.train import optim, progress
from ovseg_jax.train.state import abstract_state, create_sharded_state, overlay_params
from ovseg_jax.train.step import Trainable, make_step
from ovseg_jax.weights import load_sam_image_encoder

# SAM normalises with ImageNet's statistics (pixel mean 123.675, 116.28, 103.53 and std 58.395, 57.12, 57.375).
SAM_MEAN, SAM_STD = IMAGENET_MEAN, IMAGENET_STD
_TRAINED_POSITIONS = {"sam": "pos_embed", "clip": "positional_embedding"}
_NO_DECAY = ("pos_embed", "positional_embedding")


def build_sam(cfg: ml_collections.ConfigDict, dtype: Any) -> SamImageEncoder:
  """`model.sam`: {variant: 'vit_b'|'vit_l'|'vit_h'} or the encoder's fields (a small one for the demo)."""
  fields = {k: v for k, v in cfg.to_dict().items() if k not in ("variant", "checkpoint")}
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
  if cfg.get("variant"):
    return sam_image_encoder(cfg.variant, dtype=dtype, **fields)
  return SamImageEncoder(**fields, dtype=dtype)


def build_model(cfg: ml_collections.ConfigDict) -> EBSeg:
  dtype = jnp.dtype(cfg.get("dtype", "float32"))
  clip = ClipArchitecture(**cfg.clip.to_dict())
  pixel_decoder = MSDeformAttnPixelDecoder(**dict(cfg.pixel_decoder), dtype=dtype)
  decoder = MaskedAttentionDecoder(num_classes=0, mask_dim=pixel_decoder.mask_dim, **dict(cfg.decoder), dtype=dtype)
  adab = AdaB(pixel_decoder, decoder, embed_dim=clip.embed_dim, clip_heads=clip.vision_heads, dtype=dtype)
  e = cfg.ebseg
  return EBSeg(build_sam(cfg.sam, dtype), clip, adab, sam_scales=tuple(e.sam_scales),
               clip_fusion_blocks=tuple(e.clip_fusion_blocks), clip_recognition_block=e.clip_recognition_block,
               clip_resolution=e.clip_resolution, dtype=dtype)


def _names(path) -> list[str]:
  return [str(getattr(k, "key", k)) for k in path]


def trained_mask(params: Any, train_sam: bool = False) -> Any:
  """True for the leaves EBSeg trains: all but SAM and CLIP, and of those their position embeddings."""
  def trained(path, _):
    names = _names(path)
    if names[0] == "sam" and train_sam:
      return True
    return names[0] not in _TRAINED_POSITIONS or names[-1] == _TRAINED_POSITIONS[names[0]]
  return jax.tree_util.tree_map_with_path(trained, params)


def decay_mask(params: Any) -> Any:
  """Mask2Former's decay mask without the position embeddings (the released WEIGHT_DECAY_EMBED_GROUP)."""
  base = mask2former_setup.decay_mask(params)
  return jax.tree_util.tree_map_with_path(lambda path, keep: keep and _names(path)[-1] not in _NO_DECAY, base)


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int, params: Any, train_sam: bool
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = optim.poly_schedule(cfg.lr, total_steps, cfg.warmup_steps, power=cfg.poly_power)
  trained = optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip_norm) if cfg.grad_clip_norm else optax.identity(),
      optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask))
  labels = jax.tree.map(lambda t: "trained" if t else "frozen", trained_mask(params, train_sam))
  return optax.multi_transform({"trained": trained, "frozen": optax.set_to_zero()}, labels), schedule


def text_embeddings(model: EBSeg, params: Any, class_names: list[str], templates: str | tuple[str, ...]) -> jax.Array:
  """Unit text embeddings of `class_names` from the model's CLIP text tower, averaged over the templates."""
  return class_text_embeddings(model, params, class_names, prompts.templates(templates),
                               model.clip_architecture.context_length)


def _pretrained(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, model: EBSeg) -> dict[str, Any]:
  """{'sam': ..., 'clip': ...} weights `init.sam` and `init.clip` name (either may be absent)."""
  loaded = {}
  if config.init.get("required") and not config.init.get("sam") and not config.model.get("train_sam"):
    raise ValueError("init.sam is empty: EBSeg keeps SAM's image encoder frozen; give --config.init.sam=Meta's SAM "
                     "checkpoint (e.g. sam_vit_b_01ec64.pth) or a Hugging Face SamModel directory.")
  if config.init.get("sam"):
    sam, params = load_sam_image_encoder(Path(config.init.sam).expanduser())
    if sam.clone(dtype=model.sam.dtype) != model.sam:
      raise ValueError(f"init.sam={config.init.sam} holds {sam}, config.model.sam builds {model.sam}; make them agree.")
    loaded["sam"] = params
  clip = clip_setup.pretrained(config, mesh)
  if clip is not None:
    differ = {f.name for f in dataclasses.fields(clip[0]) if getattr(clip[0], f.name) != getattr(
        model.clip_architecture, f.name)}
    if differ:
      raise ValueError(f"init.clip={config.init.clip} differs from config.model.clip in {sorted(differ)}.")
    loaded["clip"] = clip[1]
  return loaded


def batch_spec(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  return mask2former_setup.batch_spec(config, batch_size)


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, abstract: bool = False) -> Trainable:
  """EBSeg's `Trainable` over the config's training classes; its `frozen` holds their unit text embeddings and
  their cosine matrix. With `abstract`, the state is shapes only and no weight file is read."""
  model = build_model(config.model)
  size, context = config.data.crop_size, model.clip_architecture.context_length
  names = data.training_classes(config)

  def init_params(key):
    images = jnp.zeros((1, size, size, 3))
    text = jnp.zeros((len(names), model.clip_architecture.embed_dim))
    return model.init({"params": key}, images, images, text, method=lambda m, *a: (
        m(*a), m.encode_text(jnp.zeros((1, context), jnp.int32))))["params"]

  init_params = jax.jit(init_params)  # Traced once: the optimizer's labels and the state's shapes share the trace.
  train_sam = config.model.get("train_sam", False)
  tx, schedule = make_optimizer(config.optimizer, config.total_steps, jax.eval_shape(init_params, jax.random.key(0)),
                                train_sam)
  if abstract:
    _, state, shardings = abstract_state(init_params, tx, config, mesh)
    text = jax.ShapeDtypeStruct((len(names), model.clip_architecture.embed_dim), jnp.float32)
  else:
    state, shardings = create_sharded_state(init_params, tx, config, mesh)
    loaded = _pretrained(config, mesh, model)
    if loaded:
      params = {**state.params, **{k: overlay_params(state.params[k], v, f"init.{k}") for k, v in loaded.items()}}
      state = jax.device_put(state.replace(params=params, opt_state=tx.init(params)), shardings)
      progress.log(f"EBSeg initialised from {', '.join(config.init[k] for k in loaded)}")
    text = text_embeddings(model, state.params, names, config.model.templates)
  frozen = {"text": text, "similarity": jax.ShapeDtypeStruct((len(names),) * 2, jnp.float32) if abstract
            else text @ text.T}
  criterion = CriterionConfig.from_config(config.loss)
  weights = LossWeights(**config.loss_weights.to_dict())
  trained = trained_mask(state.params, train_sam)

  def loss_fn(params, batch, key, frozen):
    params = jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params, trained)
    sam_images = normalize_images(batch["image"], SAM_MEAN, SAM_STD)
    outputs = model.apply({"params": params}, sam_images, normalize_images(batch["image"]), frozen["text"],
                          train=True)
    return ebseg_loss(outputs, batch["segments"], batch["target_classes"], frozen["similarity"], key, criterion,
                      weights)

  return Trainable(model=model, tx=tx, schedule=schedule, state=state, state_shardings=shardings,
                   step=make_step(loss_fn, tx, schedule, mesh, shardings), frozen=frozen,
                   batch_spec=lambda batch_size: batch_spec(config, batch_size))
