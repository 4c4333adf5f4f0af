"""MAFT's fine-tuning set-up, built one way for the trainer, the memory planner and the benchmarks: a CLIP (from
`init.clip`) whose image tower runs as IP-CLIP, the frozen pieces the step reads (the supervised Mask2Former of
`init.mask2former` for proposals, the original image tower as the distillation teacher, the training classes'
text embeddings and a no-object embedding), the optimizer and the jitted step.

What trains (released `MAFT._freeze`): in every image block the attention (in_proj, out_proj) and both layer
norms, and `ln_post`; the MLPs, the patch and position embeddings, `ln_pre`, `proj` and the text tower stay frozen
(zero updates, bit-identical). Optimizer (released `train_net.py` with the Mask2Former base config): AdamW,
no weight decay on layer norms, WarmupPolyLR (power 0.9, no warmup), the trained leaves' gradient clipped to a
global norm of `grad_clip_norm` ("full_model" clipping over the parameters that require gradients).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ovseg_jax.eval import mask_scores, prompts
from ovseg_jax.methods.clip import setup as clip_setup
from ovseg_jax.methods.mask2former import data as m2f_data, setup as m2f_setup, trainer as m2f_trainer
from ovseg_jax.methods.maft import objective
from ovseg_jax.models.clip import CLIP
from ovseg_jax.train import optim, progress, sharding, workdir as workdirs
from ovseg_jax.train.state import TrainState, abstract_state, create_sharded_state, overlay_params
from ovseg_jax.train.step import Trainable, make_step

TRAINED_BLOCK_PARTS = ("ln_1", "in_proj", "out_proj", "ln_2")


def _names(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", k)) for k in path)


def is_trained(names: tuple[str, ...]) -> bool:
  """Whether a CLIP parameter (path of names) is fine-tuned by MAFT."""
  if names[:1] != ("visual",) or len(names) < 2:
    return False
  return names[1] == "ln_post" or (names[1].startswith("resblocks_") and names[2:3] != () and
                                   names[2] in TRAINED_BLOCK_PARTS)


def trainable_labels(params: Any) -> Any:
  return jax.tree_util.tree_map_with_path(lambda p, _: "train" if is_trained(_names(p)) else "frozen", params)


def decay_mask(params: Any) -> Any:
  """detectron2's groups: every trained leaf decays except the layer norms' (WEIGHT_DECAY_NORM 0)."""
  return jax.tree_util.tree_map_with_path(lambda p, _: not any(n.startswith("ln_") for n in _names(p)), params)


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = optim.poly_schedule(cfg.lr, total_steps, cfg.warmup_steps, power=cfg.poly_power)
  train = optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip_norm) if cfg.grad_clip_norm else optax.identity(),
      optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask))
  return optax.multi_transform({"train": train, "frozen": optax.set_to_zero()}, trainable_labels), schedule


def settings(config: ml_collections.ConfigDict) -> objective.MaftSettings:
  return objective.MaftSettings(clip_setup.architecture(config), config.maft.start_layers, config.maft.input_size,
                                config.maft.distillation_weight)


def restore_mask2former(workdir: str | Path) -> tuple[Any, Any, ml_collections.ConfigDict]:
  """(model, params, its training config) of a Mask2Former training workdir (the proposal generator)."""
  if not str(workdir):
    raise ValueError("init.mask2former is empty: give the workdir of a Mask2Former training run "
                     "(python -m ovseg_jax.main --config=configs/mask2former_demo.py --workdir=...).")
  m2f_config = workdirs.read_config(workdir)
  if m2f_config.get("trainer") != "mask2former":
    raise ValueError(f"init.mask2former={workdir} holds a {m2f_config.get('trainer')!r} run; give a Mask2Former "
                     "training workdir.")
  model, params, step = m2f_trainer.restore_model(m2f_config, workdir)
  progress.log(f"proposals from the Mask2Former of {workdir} (step {step})")
  return model, params, m2f_config


def no_object_embedding(config: ml_collections.ConfigDict) -> jax.Array:
  """The released adapter's initialisation, normal(0, text_width^-0.5); frozen (it is dropped before every
  softmax, so training never reads it)."""
  a = config.model
  return a.text_width ** -0.5 * jax.random.normal(jax.random.key(config.seed), (a.embed_dim,))


def _frozen_shapes(m2f_config: ml_collections.ConfigDict, config: ml_collections.ConfigDict, mask2former: Any,
                   clip_params: Any) -> dict[str, Any]:
  size, k = m2f_config.data.crop_size, len(m2f_data.training_classes(config))
  m2f = jax.eval_shape(lambda key: mask2former.init({"params": key, "dropout": key},
                                                    jnp.zeros((1, size, size, 3)))["params"], jax.random.key(0))
  shape = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)
  return {"mask2former": m2f, "teacher": jax.tree.map(shape, clip_params["visual"]),
          "text": jax.ShapeDtypeStruct((k, config.model.embed_dim), jnp.float32),
          "no_object": jax.ShapeDtypeStruct((config.model.embed_dim,), jnp.float32)}


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, abstract: bool = False) -> Trainable:
  """MAFT's `Trainable`; with `abstract`, state and frozen inputs are shapes only and nothing is read."""
  model = CLIP(clip_setup.architecture(config))
  s = settings(config)
  if not 0 <= s.start_layers <= s.architecture.vision_layers:
    raise ValueError(f"maft.start_layers={s.start_layers}: use a block index in [0, {s.architecture.vision_layers}].")
  tx, schedule = make_optimizer(config.optimizer, config.total_steps)
  if abstract:
    _, state, shardings = abstract_state(clip_setup.init_params(model), tx, config, mesh)
    m2f_config = workdirs.read_config(config.init.mask2former)
    m2f_model = m2f_setup.build_model(m2f_config.model, len(m2f_data.training_classes(m2f_config)))
    frozen = _frozen_shapes(m2f_config, config, m2f_model, state.params)
  else:
    state, shardings = create_sharded_state(clip_setup.init_params(model), tx, config, mesh)
    arch, clip_params = clip_setup.pretrained(config, mesh)
    clip_setup.check_architecture(config, arch)
    params = overlay_params(state.params, clip_params, "init.clip")
    state = jax.device_put(TrainState(step=state.step, params=params, opt_state=tx.init(params)), shardings)
    m2f_model, m2f_params, _ = restore_mask2former(config.init.mask2former)
    text = mask_scores.class_text_embeddings(model, params, m2f_data.training_classes(config),
                                             prompts.templates(config.maft.templates), config.model.context_length)
    teacher = jax.tree.map(lambda x: jnp.array(x, copy=True), params["visual"])  # The step donates the state.
    frozen = jax.device_put({"mask2former": m2f_params, "teacher": teacher, "text": text,
                             "no_object": no_object_embedding(config)}, sharding.replicated(mesh))

  def loss_fn(params, batch, key, frozen):
    del key
    return objective.maft_loss(params["visual"], batch, frozen, m2f_model, s)

  return Trainable(model=model, tx=tx, schedule=schedule, state=state, state_shardings=shardings,
                   step=make_step(loss_fn, tx, schedule, mesh, shardings), frozen=frozen,
                   batch_spec=lambda batch_size: m2f_setup.batch_spec(config, batch_size))

