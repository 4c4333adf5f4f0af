"""The train state every method shares, initialised directly with its shardings, and pretrained weights laid
over it."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ovseg_jax.train import sharding
from ovseg_jax.train.checkpoint import CheckpointMismatchError


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def abstract_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                   config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> tuple[Callable, TrainState, Any]:
  """(init(key) -> state, the state's shapes with their shardings from `config.sharding_rules`, the shardings);
  nothing is allocated. The shapes serve to compile steps and as targets of checkpoint restores."""
  def init(key):
    params = init_params(key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  shapes = jax.eval_shape(init, jax.random.key(0))
  shardings = sharding.state_shardings(shapes, mesh, config.get("sharding_rules", ()))
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)
  return init, abstract, shardings


def create_sharded_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                         config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> tuple[TrainState, Any]:
  """Initialises the state directly with its shardings (no host copy)."""
  init, _, shardings = abstract_state(init_params, tx, config, mesh)
  return jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed)), shardings


def _resized_position_embedding(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """A [1, h, w, c] position embedding resized bicubically to another grid (as BEiT/MAE fine-tuning does)."""
  return np.asarray(jax.image.resize(jnp.asarray(value, jnp.float32), shape, "bicubic"))


def overlay_params(params: Any, pretrained: Any, where: str, resize_position_embeddings: bool = False,
                   strict: bool = False) -> Any:
  """`params` with every leaf that `pretrained` has replaced by it (shapes checked). Without `strict`, params the
  file lacks keep their values and weights the model lacks are refused; with `strict`, every param must come from
  the file and its other weights (e.g. a final norm the model does not use) are ignored. With `resize_position_embeddings`, a `pos_embedding` of another grid (same width) is resized
  bicubically. Raises `CheckpointMismatchError` naming the first parameter that does not fit."""
  if not isinstance(pretrained, dict):
    value = np.asarray(pretrained)
    if resize_position_embeddings and where.endswith("pos_embedding") and value.shape != params.shape \
        and value.ndim == 4 and value.shape[-1] == params.shape[-1]:
      value = _resized_position_embedding(value, params.shape)
    if value.shape != params.shape:
      raise CheckpointMismatchError(f"{where}: pretrained shape {value.shape}, model expects {params.shape}; the "
                                    "checkpoint is for another architecture.")
    return jnp.asarray(value, params.dtype)
  unknown, missing = set(pretrained) - set(params), set(params) - set(pretrained)
  if unknown and not strict:
    raise CheckpointMismatchError(f"{where}: pretrained weights {sorted(unknown)[:4]} have no place in the model; "
                                  "the checkpoint is for another architecture.")
  if strict and missing:
    raise CheckpointMismatchError(f"{where} has no parameter {where}/{sorted(missing)[0]}: make the model config "
                                  "match the checkpoint.")
  return {k: overlay_params(v, pretrained[k], f"{where}/{k}", resize_position_embeddings, strict)
          if k in pretrained else v for k, v in params.items()}
