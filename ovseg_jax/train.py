"""The S-Seg trainer: one jitted, donated train step over global arrays, orbax resume, metrics, evaluation."""
from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from jax.experimental import multihost_utils

from data_pipelines import captions, image_text, mixture
from ovseg_jax import checkpoint, evaluate, loop, objective, optim, progress, sharding
from ovseg_jax.models.sseg import build_sseg, pretrained_backbone_params
from ovseg_jax.models.vit import load_dino, random_dino


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def abstract_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                   config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> tuple[Callable, TrainState, Any]:
  """(init(key) -> state, the state's shapes, its shardings from `config.sharding_rules`), nothing allocated."""
  def init(key):
    params = init_params(key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  abstract = jax.eval_shape(init, jax.random.key(0))
  return init, abstract, sharding.state_shardings(abstract, mesh, config.get("sharding_rules", ()))


def create_sharded_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                         config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> tuple[TrainState, Any]:
  """Initialises the state directly with its shardings (no host copy)."""
  init, _, shardings = abstract_state(init_params, tx, config, mesh)
  return jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed)), shardings


def sseg_init_params(model: Any, config: ml_collections.ConfigDict) -> Callable[[jax.Array], Any]:
  size, length = config.data.image_size, config.data.context_length

  def init_params(key):
    return model.init({"params": key, "dropout": key}, jnp.zeros((1, size, size, 3), jnp.float32),
                      jnp.zeros((1, length), jnp.int32), train=False)["params"]
  return init_params


def create_train_state(model: Any, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
                       mesh: jax.sharding.Mesh) -> tuple[TrainState, Any]:
  """The S-Seg model's state, initialised sharded (and its backbone from `model.backbone.checkpoint`)."""
  state, shardings = create_sharded_state(sseg_init_params(model, config), tx, config, mesh)
  pretrained = pretrained_backbone_params(config.model.backbone)
  if pretrained is not None:
    params = {**state.params, "backbone": _overlay(state.params["backbone"], pretrained, "model.backbone")}
    state = jax.device_put(state.replace(params=params), shardings)
    progress.log(f"backbone initialised from {config.model.backbone.checkpoint}")
  return state, shardings


def _overlay(params: Any, pretrained: Any, where: str) -> Any:
  """`params` with every leaf that `pretrained` has replaced by it (shapes checked); the others kept."""
  if not isinstance(pretrained, dict):
    if pretrained.shape != params.shape:
      raise checkpoint.CheckpointMismatchError(f"{where}: pretrained shape {pretrained.shape}, model expects "
                                               f"{params.shape}; the checkpoint is for another architecture.")
    return jnp.asarray(pretrained, params.dtype)
  unknown = set(pretrained) - set(params)
  if unknown:
    raise checkpoint.CheckpointMismatchError(f"{where}: pretrained weights {sorted(unknown)[:4]} have no place "
                                             "in the model; the checkpoint is for another architecture.")
  return {k: _overlay(v, pretrained[k], f"{where}/{k}") if k in pretrained else v for k, v in params.items()}


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


def make_train_step(model: Any, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    config: ml_collections.ConfigDict, pseudo_mask_fn: Any, mesh: jax.sharding.Mesh,
                    state_shardings: Any):
  """The S-Seg step `(state, batch, key, dino_params)`: pseudo masks, matching, mask and contrastive losses,
  AdamW, in one jitted call."""
  constrain = sharding.batch_constraint(mesh)

  def loss_fn(params, batch, key, dino_params):
    return objective.sseg_loss(params, model, batch, key, config, pseudo_mask_fn, dino_params, constrain)
  return make_step(loss_fn, tx, schedule, mesh, state_shardings)


def _train_shards(config: ml_collections.ConfigDict) -> list[str]:
  if config.data.source == "demo":
    return evaluate.demo_paths(config).train_shards
  if config.data.source == "shards":
    if config.data.get("datasets"):  # A mixture: each source lists its own shards.
      return []
    from data_pipelines import shards
    return shards.expand_pattern(config.data.shards)
  raise ValueError(f"data.source={config.data.source!r}: use 'demo' or 'shards'.")


def _build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  model = build_sseg(config.model)
  tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
  state, shardings = create_train_state(model, tx, config, mesh)
  return model, tx, schedule, state, shardings


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
  """Trains (resuming from the latest checkpoint in `workdir`, a local path or a gs:// URI) and evaluates;
  returns the eval results."""
  workdir = epath.Path(workdir).expanduser()
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  mesh = sharding.make_mesh(config.mesh.axes)
  if config.batch_size % jax.process_count() or config.batch_size % sharding.num_batch_shards(mesh):
    raise ValueError(f"batch_size={config.batch_size} must divide over {jax.process_count()} hosts and "
                     f"{sharding.num_batch_shards(mesh)} batch shards of the mesh.")
  shards = _train_shards(config)
  model, tx, schedule, state, state_shardings = _build(config, mesh)
  loop.describe_parameters(state.params, workdir)
  ckpt, state, data_position = loop.resume(config, workdir, state)
  start_step = int(state.step)
  if start_step < config.total_steps:
    sources = mixture.sources_from_config(config.data, shards)
    state = _train_loop(config, workdir, mesh, model, tx, schedule, state, state_shardings, sources, ckpt,
                        start_step, _host_read_positions(data_position, len(sources)))
  ckpt.close()
  return _evaluate(config, workdir, model, state.params, int(state.step))


def pseudo_mask_dino(pm: ml_collections.ConfigDict) -> tuple[Any, Any] | None:
  """The frozen DINO of `pseudo_masks.dino_checkpoint`: a file or directory, or 'random:S/8' (random weights
  of the real size, for compile tests and benchmarks); None for pixel features."""
  if pm.features != "dino" or not pm.dino_checkpoint:
    return None
  if pm.dino_checkpoint.startswith("random:"):
    return random_dino(pm.dino_checkpoint.removeprefix("random:"))
  return load_dino(Path(pm.dino_checkpoint).expanduser(), num_heads=pm.dino_num_heads or None)


def _host_read_positions(data_position: dict[str, Any] | None, num_sources: int) -> list[image_text.ReadPosition]:
  """This host's place in each data source from a checkpoint's data position (every host's is saved)."""
  hosts = (data_position or {}).get("read_positions")
  if not hosts:
    return [image_text.ReadPosition() for _ in range(num_sources)]
  if len(hosts) != jax.process_count() or len(hosts[0]) != num_sources:
    progress.log(f"the checkpoint's read positions ({len(hosts)} hosts x {len(hosts[0])} sources) do not fit this "
                 f"run ({jax.process_count()} x {num_sources}): the shards are split anew, so reading restarts "
                 "at the beginning of each source's earliest saved epoch.")
    epochs = [min(host[i][0] for host in hosts) if i < len(hosts[0]) else 0 for i in range(num_sources)]
    return [image_text.ReadPosition(epoch=e) for e in epochs]
  return [image_text.ReadPosition(*p) for p in hosts[jax.process_index()]]


def _all_read_positions(positions: list[image_text.ReadPosition]) -> dict[str, Any]:
  local = np.asarray([[p.epoch, p.shards_done] for p in positions], np.int64)
  gathered = local[None] if jax.process_count() == 1 else multihost_utils.process_allgather(local)
  return {"read_positions": np.asarray(gathered).reshape(-1, len(positions), 2).tolist()}


def _text_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What each sample's text becomes (`data.text`; with 'multi_label', `data.num_prompts` noun prompts)."""
  mode, num_prompts = config.data.get("text", "caption"), config.data.get("num_prompts", 3)
  return {"caption_fn": captions.make_caption_fn(mode, num_prompts, seed=config.seed + jax.process_index()),
          "texts_per_sample": 1 + num_prompts if mode == "multi_label" else 1}


def _train_loop(config, workdir, mesh, model, tx, schedule, state, state_shardings, sources, ckpt, start_step,
                positions: list[image_text.ReadPosition]):
  dino_module, dino_params = pseudo_mask_dino(config.pseudo_masks) or (None, None)
  pseudo_mask_fn = objective.make_pseudo_mask_fn(config.pseudo_masks, config.data.image_size, dino_module)
  step = make_train_step(model, tx, schedule, config, pseudo_mask_fn, mesh, state_shardings)
  dino_params = jax.device_put(dino_params, sharding.replicated(mesh))
  train_step = lambda state, batch, key: step(state, batch, key, dino_params)
  # A resumed run continues its epoch after the shards it had finished (see image_text's docstring).
  batches, skip_stats = mixture.make_mixed_iterator(
      sources, batch_size=config.batch_size // jax.process_count(), image_size=config.data.image_size,
      process_index=jax.process_index(), process_count=jax.process_count(), positions=positions,
      seed=config.seed, shuffle_buffer=config.data.shuffle_buffer,
      crop_scale=tuple(config.data.crop_scale), context_length=config.data.context_length,
      **_text_options(config))
  return loop.run(config, workdir, mesh, train_step, state, batches, ckpt, start_step, skip_stats.as_metrics,
                  functools.partial(_all_read_positions, positions))


def _evaluate(config: ml_collections.ConfigDict, workdir: Path, model: Any, params: Any,
              step: int) -> dict[str, Any]:
  if config.data.source != "demo":
    progress.log("evaluation of non-demo data runs with `python -m ovseg_jax.evaluate` and an eval config.")
    return {}
  return evaluate.evaluate_demo(config, workdir, model, params, step)


def workdir_config(workdir: Path) -> ml_collections.ConfigDict:
  """The config an S-Seg workdir was trained with (its config.json)."""
  config_file = epath.Path(workdir) / "config.json"
  if not config_file.is_file():
    raise FileNotFoundError(f"{config_file} is missing: expected an S-Seg training workdir (with config.json and "
                            "checkpoints/) written by `python -m ovseg_jax.main`.")
  return ml_collections.ConfigDict(json.loads(config_file.read_text()))


def restore_model(config: ml_collections.ConfigDict, workdir: Path) -> tuple[Any, Any, int]:
  """(model, params, step) of the latest S-Seg checkpoint in `workdir`, built from `config`."""
  mesh = sharding.make_mesh(config.mesh.axes)
  model, _, _, state, _ = _build(config, mesh)
  workdir = epath.Path(workdir)
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=config.checkpoint.keep, async_save=False)
  restored = ckpt.restore_latest(state)
  ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}: train first with "
                            f"`python -m ovseg_jax.main --config=... --workdir={workdir}`.")
  state, _ = restored
  return model, state.params, int(state.step)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
  """Evaluates the latest checkpoint in `workdir` (the `ovseg_jax.evaluate` command)."""
  model, params, step = restore_model(config, workdir)
  return _evaluate(config, workdir, model, params, step)
