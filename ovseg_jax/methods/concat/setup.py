"""CONCAT's three training stages as `Trainable`s over one parameter tree {'mask2former', 'projector', 'generator'}:

- 'base': the Mask2Former (no class head) and the class projector, Mask2Former's criterion on the text logits of
  the seen classes plus `concat.con_weight` x CON; the generator is not trained;
- 'cat': the generator alone (lr x `stages.generator_lr_multiplier`), on the frozen base model's matched queries;
- 'union': the projector alone (lr x `stages.union_lr_multiplier`), on real seen queries and generated unseen ones.
Parts a stage does not train get no update (`optax.set_to_zero`): they stay bit-identical. CLIP (image tower for
the CLS tokens, text embeddings of every class) is frozen and passed as the step's `frozen` argument.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ovseg_jax.methods.concat.heads import ClassProjector, Generator, text_class_logits
from ovseg_jax.methods.mask2former import setup as m2f_setup
from ovseg_jax.ops.normalize import normalize_images
from ovseg_jax.train import optim

STAGES = ("base", "cat", "union")


@dataclasses.dataclass(frozen=True)
class Models:
  mask2former: Any
  projector: ClassProjector
  generator: Generator


def build_models(config: ml_collections.ConfigDict, text_dim: int) -> Models:
  m2f = m2f_setup.build_model(config.model, num_classes=0)
  c = config.concat
  return Models(m2f, ClassProjector(c.projector_hidden_dim, text_dim),
                Generator(config.model.decoder.hidden_dim, tuple(c.generator_hidden_dims), c.latent_dim))


def init_params(models: Models, config: ml_collections.ConfigDict, text_dim: int, key: jax.Array) -> dict:
  size, d = config.data.crop_size, config.model.decoder.hidden_dim
  k1, k2, k3 = jax.random.split(key, 3)
  return {"mask2former": models.mask2former.init({"params": k1, "dropout": k1}, jnp.zeros((1, size, size, 3)))[
              "params"],
          "projector": models.projector.init(k2, jnp.zeros((1, d)))["params"],
          "generator": models.generator.init(k3, jnp.zeros((2, d)), jnp.zeros((2, text_dim)), k3)["params"]}


def with_text_logits(models: Models, params: dict, outputs: dict, text: jax.Array, tau: float) -> dict:
  """Mask2Former outputs with 'pred_logits' [B, Q, K+1] from the projector against `text` for every layer."""
  def add(prediction):
    projected, no_object = models.projector.apply({"params": params["projector"]}, prediction["query_embeddings"])
    return {**prediction, "projected": projected,
            "pred_logits": text_class_logits(projected, text, no_object, tau)}
  return {**add(outputs), "aux_outputs": [add(p) for p in outputs["aux_outputs"]]}


def clip_tokens(clip: Any, clip_params: Any, images: jax.Array, segments: jax.Array, num_targets: int,
                size: int) -> tuple[jax.Array, jax.Array]:
  """CLS tokens (CLIP image embeddings) of the complete images [B, C] and of each image masked to each target
  segment [B, M, C] (pixels outside the segment set to CLIP's mean colour, i.e. 0 after normalisation)."""
  pixels = jax.image.resize(normalize_images(images), (images.shape[0], size, size, 3), "bilinear")
  inside = jax.image.resize(
      (segments[:, None] == jnp.arange(num_targets)[None, :, None, None]).astype(jnp.float32),
      (segments.shape[0], num_targets, size, size), "nearest")
  masked = (pixels[:, None] * inside[..., None]).reshape(-1, size, size, 3)
  encode = lambda x: clip.apply({"params": clip_params}, x, method="encode_image")
  return encode(pixels), encode(masked).reshape(images.shape[0], num_targets, -1)


def con_bank(complete: jax.Array, masked: jax.Array, valid: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
  """Negatives for each target [B, M]: CLS tokens of the other images of the batch (complete, then each valid
  segment's), the first `size` of them: ([B, M, N, C], [B, M, N])."""
  b, m, c = masked.shape
  tokens = jnp.concatenate([complete[:, None], masked], 1).reshape(-1, c)  # [B*(M+1), C]
  token_valid = jnp.concatenate([jnp.ones((b, 1), bool), valid], 1).reshape(-1)
  image_of = jnp.repeat(jnp.arange(b), m + 1)
  other = token_valid[None, :] & (image_of[None, :] != jnp.arange(b)[:, None])  # [B, B*(M+1)]
  other = other & (jnp.cumsum(other, 1) <= size)
  n = tokens.shape[0]
  return (jnp.broadcast_to(tokens, (b, m, n, c)), jnp.broadcast_to(other[:, None], (b, m, n)))


def gather_targets(x: jax.Array, pred_for_target: jax.Array) -> jax.Array:
  """[B, Q, ...] -> [B, M, ...]: each target's matched query."""
  return jnp.take_along_axis(x, pred_for_target.reshape(*pred_for_target.shape, *([1] * (x.ndim - 2))), axis=1)


def group_scales(params: dict, trained: dict[str, Any]) -> dict:
  """Per-leaf multipliers: `trained[group]` (a number or a tree like the group's) for trained groups, 0 else."""
  return {k: (trained[k] if not isinstance(trained.get(k, 0.0), (int, float))
              else jax.tree.map(lambda _, m=float(trained.get(k, 0.0)): m, v)) for k, v in params.items()}


def make_optimizer(config: ml_collections.ConfigDict, stage: str, steps: int, params: dict
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW over the stage's groups; the other groups' gradients and updates are zeroed (their weights stay
  bit-identical, and they count in no gradient norm)."""
  o, s = config.optimizer, config.stages
  if stage == "base":
    schedule = optim.poly_schedule(o.lr, steps, o.warmup_steps, power=o.poly_power)
    trained = {"mask2former": m2f_setup.backbone_multipliers(params["mask2former"], o.backbone_multiplier),
               "projector": 1.0}
    clip = optax.clip_by_global_norm(o.grad_clip_norm) if o.grad_clip_norm else optax.identity()
    adamw = optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=m2f_setup.decay_mask)
  else:
    multiplier = s.generator_lr_multiplier if stage == "cat" else s.union_lr_multiplier
    schedule = optim.poly_schedule(o.lr * multiplier, steps, 0, power=o.poly_power)
    trained = {"generator" if stage == "cat" else "projector": 1.0}
    clip, adamw = optax.identity(), optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay)
  gates = group_scales(params, {k: 1.0 for k in trained})
  return optax.chain(optim.scale_updates_by(gates), clip, adamw,
                     optim.scale_updates_by(group_scales(params, trained))), schedule
