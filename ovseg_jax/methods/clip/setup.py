"""CLIP training set-up, built one way for the trainer, the memory planner and the benchmarks: the model (a
small random one, or the architecture of `init.clip`), open_clip's AdamW with frozen groups, the sharded state
(weights from a CLIP file, a Hugging Face directory or another CLIP training workdir) and the jitted step."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ovseg_jax.eval.open_vocabulary import ClipSetup, load_clip_setup
from ovseg_jax.methods.clip import objective, optimizer
from ovseg_jax.models.clip import CLIP, ClipArchitecture
from ovseg_jax.train import progress, sharding, workdir as workdirs
from ovseg_jax.train.state import TrainState, abstract_state, create_sharded_state, overlay_params
from ovseg_jax.train.step import Trainable, make_step
from ovseg_jax.weights.clip import read_clip


def architecture(config: ml_collections.ConfigDict) -> ClipArchitecture:
  return ClipArchitecture(**config.model.to_dict())


def _is_workdir(path: Path) -> bool:
  """A training workdir's config.json names its trainer; a Hugging Face directory's does not."""
  return (workdirs.as_workdir(path) / "config.json").is_file() and "trainer" in workdirs.read_config(path)


def restore_params(workdir: str | Path, mesh: jax.sharding.Mesh) -> tuple[ClipArchitecture, Any, int]:
  """(architecture, params, step) of the latest checkpoint of a CLIP training workdir."""
  config = workdirs.read_config(workdir)
  if config.get("trainer") != "clip":
    raise ValueError(f"{workdir} holds a {config.get('trainer')!r} run; init.clip takes a CLIP training workdir, a "
                     "CLIP file or a Hugging Face CLIPModel directory.")
  model = CLIP(architecture(config))
  _, _, _, state, _ = build_state(config, mesh, abstract=True)
  state, step = workdirs.restore_latest(workdir, state, config)
  return model.architecture, state.params, step


def classifier(cfg: ml_collections.ConfigDict) -> ClipSetup | None:
  """An eval config's `clip` section -> the CLIP that classifies masks: `checkpoint` a CLIP file, a Hugging Face
  directory or a CLIP training workdir (its latest checkpoint; mask prompts travel with the crops if it has them);
  None without a checkpoint."""
  path = Path(cfg.get("checkpoint") or "").expanduser()
  if not cfg.get("checkpoint") or not _is_workdir(path):
    return load_clip_setup(cfg)
  arch, params, _ = restore_params(path, sharding.make_mesh(workdirs.read_config(path).mesh.axes))
  no_object = cfg.get("no_object_logit", -1.0)
  return ClipSetup(CLIP(arch), jax.device_get(params), cfg.get("crop_size") or arch.image_size,
                   cfg.get("mask_threshold", 0.5), tuple(cfg.get("seen_classes", ())),
                   None if no_object < 0 else no_object)


def pretrained(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> tuple[ClipArchitecture, Any] | None:
  """The architecture and weights `init.clip` names (None for a random start)."""
  source = config.init.get("clip", "")
  if not source:
    if config.init.get("required"):
      raise ValueError("init.clip is empty: this config adapts a trained CLIP; give --config.init.clip=a CLIP file "
                       "(e.g. OpenAI's ViT-L-14.pt), a Hugging Face CLIPModel directory or a CLIP training workdir.")
    return None
  return read_source(source, mesh, config.init.get("activation") or None)


def read_source(source: str | Path, mesh: jax.sharding.Mesh,
                activation: str | None = None) -> tuple[ClipArchitecture, Any]:
  """(architecture, params) of a CLIP file, a Hugging Face CLIPModel directory or a CLIP training workdir."""
  path = Path(source).expanduser()
  if _is_workdir(path):
    arch, params, _ = restore_params(path, mesh)
    return arch, params
  return read_clip(path, activation=activation)


def check_architecture(config: ml_collections.ConfigDict, found: ClipArchitecture) -> None:
  wanted = architecture(config)
  differ = {f.name: (getattr(wanted, f.name), getattr(found, f.name)) for f in dataclasses.fields(found)
            if f.name != "mask_prompt_depth" and getattr(wanted, f.name) != getattr(found, f.name)}
  if differ:
    raise ValueError(f"init.clip={config.init.clip} does not fit config.model: (config, file) differ in {differ}; "
                     "set config.model to the file's architecture.")


def init_params(model: CLIP):
  """`init(key) -> params` of a CLIP model at its own image size and context length."""
  a = model.architecture

  def init(key):
    return model.init(key, jnp.zeros((1, a.image_size, a.image_size, 3), jnp.float32),
                      jnp.zeros((1, a.context_length), jnp.int32))["params"]
  return init


def build_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, abstract: bool = False):
  """(model, tx, schedule, state, state shardings); `init.clip` laid over the random initialisation (mask
  prompts, which no CLIP file holds, keep theirs)."""
  model = CLIP(architecture(config))
  freeze = optimizer.check_freeze(tuple(config.freeze))
  tx, schedule = optimizer.make_optimizer(config.optimizer, config.total_steps, freeze)
  if abstract:
    _, state, shardings = abstract_state(init_params(model), tx, config, mesh)
    return model, tx, schedule, state, shardings
  state, shardings = create_sharded_state(init_params(model), tx, config, mesh)
  loaded = pretrained(config, mesh)
  if loaded is not None:
    check_architecture(config, loaded[0])
    params = overlay_params(state.params, loaded[1], "init.clip")
    state = jax.device_put(TrainState(step=state.step, params=params, opt_state=tx.init(params)), shardings)
    progress.log(f"CLIP initialised from {config.init.clip}")
  return model, tx, schedule, state, shardings


def batch_spec(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  size = config.model.image_size
  return {"image": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8),
          "tokens": jax.ShapeDtypeStruct((batch_size, config.data.context_length), jnp.int32)}


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, abstract: bool = False) -> Trainable:
  """CLIP training's `Trainable`; with `abstract`, the state is shapes only (for compiling without running)."""
  model, tx, schedule, state, shardings = build_state(config, mesh, abstract)
  freeze, with_masks = tuple(config.freeze), config.model.mask_prompt_depth > 0

  def loss_fn(params, batch, key, frozen):
    del key, frozen
    return objective.clip_loss(params, model, batch, freeze, with_masks)
  step = make_step(loss_fn, tx, schedule, mesh, shardings)
  return Trainable(model=model, tx=tx, schedule=schedule, state=state, state_shardings=shardings, step=step,
                   frozen=None, batch_spec=lambda batch_size: batch_spec(config, batch_size))
