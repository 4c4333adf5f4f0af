"""The jitted train step every method builds on, and what a method hands to the loop, the planner and the
benchmarks: its model, optimizer, sharded state and step."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import optax

from ovseg_jax.train import sharding
from ovseg_jax.train.state import TrainState


def make_step(loss_fn: Callable, tx: optax.GradientTransformation, schedule: optax.Schedule,
              mesh: jax.sharding.Mesh, state_shardings: Any):
  """`step(state, batch, key, frozen) -> (state, metrics)` for `loss_fn(params, batch, key, frozen) ->
  (loss, metrics)`, jitted with shardings and the old state donated; `frozen` holds replicated weights that
  are not trained (e.g. the pseudo-mask DINO), or None."""
  def step_fn(state: TrainState, batch: dict[str, jax.Array], key: jax.Array, frozen: Any):
    key = jax.random.fold_in(key, state.step)
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key, frozen)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "learning_rate": schedule(state.step), "grad_norm": optax.tree.norm(grads)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  rep = sharding.replicated(mesh)
  return jax.jit(step_fn, in_shardings=(state_shardings, sharding.batch_sharding(mesh), rep, rep),
                 out_shardings=(state_shardings, rep), donate_argnums=(0,))


@dataclasses.dataclass
class Trainable:
  """A method's training set-up: built once, used by its trainer, `ovseg_jax.plan_memory` and the benchmarks.

  `state` is concrete (initialised with its shardings) or abstract (shapes only, for compiling without
  allocating); `frozen` is the step's fourth argument (replicated frozen weights, or their shapes); and
  `batch_spec(batch_size)` gives the shapes and dtypes of one global batch.
  """
  model: Any
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  state: Any
  state_shardings: Any
  step: Callable
  frozen: Any
  batch_spec: Callable[[int], dict[str, jax.ShapeDtypeStruct]]
