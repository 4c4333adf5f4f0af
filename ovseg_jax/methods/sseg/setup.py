"""S-Seg's training set-up, built one way for the trainer, the memory planner and the benchmarks: the model,
AdamW, the sharded state (backbone from `model.backbone.checkpoint`), the frozen pseudo-mask DINO and the
jitted step."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ovseg_jax.methods.sseg import objective
from ovseg_jax.models.dino import dino_of_size, random_dino
from ovseg_jax.models.sseg import build_sseg
from ovseg_jax.train import optim, progress, sharding
from ovseg_jax.train.state import abstract_state, create_sharded_state, overlay_params
from ovseg_jax.train.step import Trainable, make_step
from ovseg_jax.weights import load_dino
from ovseg_jax.weights.backbones import read_backbone_checkpoint


def pseudo_mask_dino(pm: ml_collections.ConfigDict, abstract: bool = False) -> tuple[Any, Any] | None:
  """The frozen DINO of `pseudo_masks.dino_checkpoint`: a file or directory, or 'random:S/8' (random weights
  of the real size, for compile tests and benchmarks); None for pixel features and for stored pseudo masks. With
  `abstract`, the released ViT-S/8's shapes only (nothing read or allocated)."""
  if pm.features != "dino" or objective.stored_mask_grid(pm, 1) is not None:
    return None
  if abstract:
    module = dino_of_size("S/8")
    return module, jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"]
  if not pm.dino_checkpoint:
    return None
  if pm.dino_checkpoint.startswith("random:"):
    return random_dino(pm.dino_checkpoint.removeprefix("random:"))
  return load_dino(Path(pm.dino_checkpoint).expanduser(), num_heads=pm.dino_num_heads or None)


def _init_params(model: Any, config: ml_collections.ConfigDict):
  size, length = config.data.image_size, config.data.context_length

  def init_params(key):
    return model.init({"params": key, "dropout": key}, jnp.zeros((1, size, size, 3), jnp.float32),
                      jnp.zeros((1, length), jnp.int32), train=False)["params"]
  return init_params


def batch_spec(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  size, length = config.data.image_size, config.data.context_length
  tokens = (batch_size, 1 + config.data.num_prompts, length) if config.data.get("text") == "multi_label" \
      else (batch_size, length)
  spec = {"image": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8),
          "tokens": jax.ShapeDtypeStruct(tokens, jnp.int32)}
  grid = objective.stored_mask_grid(config.pseudo_masks, size)
  if grid is not None:
    spec["pseudo_labels"] = jax.ShapeDtypeStruct((batch_size, *grid), jnp.uint8)
  return spec


def make_train_step(config: ml_collections.ConfigDict, model: Any, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, mesh: jax.sharding.Mesh, state_shardings: Any, dino_module: Any = None):
  """The S-Seg step `(state, batch, key, dino_params)`: pseudo masks, matching, mask and contrastive losses,
  AdamW, in one jitted call."""
  stored = objective.stored_mask_grid(config.pseudo_masks, config.data.image_size) is not None
  pseudo_mask_fn = None if stored else objective.make_pseudo_mask_fn(config.pseudo_masks, config.data.image_size,
                                                                     dino_module)
  constrain = sharding.batch_constraint(mesh)

  def loss_fn(params, batch, key, dino_params):
    return objective.sseg_loss(params, model, batch, key, config, pseudo_mask_fn, dino_params, constrain)
  return make_step(loss_fn, tx, schedule, mesh, state_shardings)


def build_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, abstract: bool = False
                ) -> tuple[Any, optax.GradientTransformation, optax.Schedule, Any, Any]:
  """(model, tx, schedule, state, state shardings); with `abstract` the state is shapes only."""
  model = build_sseg(config.model)
  tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
  if abstract:
    _, state, shardings = abstract_state(_init_params(model, config), tx, config, mesh)
  else:
    state, shardings = create_sharded_state(_init_params(model, config), tx, config, mesh)
    pretrained = read_backbone_checkpoint(config.model.backbone)
    if pretrained is not None:
      params = {**state.params, "backbone": overlay_params(state.params["backbone"], pretrained, "model.backbone")}
      state = jax.device_put(state.replace(params=params), shardings)
      progress.log(f"backbone initialised from {config.model.backbone.checkpoint}")
  return model, tx, schedule, state, shardings


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, abstract: bool = False) -> Trainable:
  """S-Seg's `Trainable`; with `abstract`, the state and DINO are shapes only (for compiling without running)."""
  model, tx, schedule, state, shardings = build_state(config, mesh, abstract)
  dino_module, dino_params = pseudo_mask_dino(config.pseudo_masks, abstract) or (None, None)
  step = make_train_step(config, model, tx, schedule, mesh, shardings, dino_module)
  if not abstract and dino_params is not None:
    dino_params = jax.device_put(dino_params, sharding.replicated(mesh))
  return Trainable(model=model, tx=tx, schedule=schedule, state=state, state_shardings=shardings, step=step,
                   frozen=dino_params, batch_spec=lambda batch_size: batch_spec(config, batch_size))
