"""open_clip's optimizer for CLIP training: AdamW with weight decay on weight matrices only (not on gains, biases,
the logit scale or mask prompts), warmup then cosine, frozen parameter groups, and the logit scale kept in
[0, ln 100] after every step (open_clip clamps the parameter in place; here a projection in the update)."""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ovseg_jax.train import optim

GROUPS = ("image", "text", "logit_scale", "prompts")
MAX_LOGIT_SCALE = math.log(100.0)


def parameter_group(path: tuple[str, ...]) -> str:
  """The group a CLIP parameter belongs to: 'prompts' (mask prompts), 'image', 'text' or 'logit_scale'."""
  if "mask_prompts" in path:
    return "prompts"
  return {"visual": "image", "text": "text"}.get(path[0], path[0])


def _names(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", k)) for k in path)


def check_freeze(freeze: tuple[str, ...]) -> tuple[str, ...]:
  unknown = [g for g in freeze if g not in GROUPS]
  if unknown:
    raise ValueError(f"config.freeze={tuple(freeze)}: {unknown} are no parameter groups; use names from {GROUPS} "
                     "(e.g. ('text',) for open_clip's --lock-text).")
  return tuple(freeze)


def trainable_labels(params: Any, freeze: tuple[str, ...]) -> Any:
  """'train' or 'frozen' per leaf."""
  freeze = check_freeze(freeze)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "frozen" if parameter_group(_names(path)) in freeze else "train", params)


def decay_mask(params: Any) -> Any:
  """True for open_clip's decayed parameters: 2-d and larger, except the mask prompts (released with no decay)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: leaf.ndim >= 2 and parameter_group(_names(path)) != "prompts", params)


def clamp_logit_scale() -> optax.GradientTransformation:
  """Turns the update of `logit_scale` into one that lands it inside [0, ln 100]; other leaves pass through."""
  def update(updates, state, params):
    def project(path, u, p):
      if _names(path)[-1:] != ("logit_scale",):
        return u
      return jnp.clip(p + u, 0.0, MAX_LOGIT_SCALE) - p
    return jax.tree_util.tree_map_with_path(project, updates, params), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int, freeze: tuple[str, ...]
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW(b1, b2, eps, weight_decay) on the trained groups; frozen groups get zero updates (their leaves stay
  bit-identical) and no optimizer state."""
  schedule = optim.learning_rate_schedule(cfg, total_steps)
  train = optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip_norm) if cfg.grad_clip_norm else optax.identity(),
      optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask),
      clamp_logit_scale())
  tx = optax.multi_transform({"train": train, "frozen": optax.set_to_zero()},
                             lambda params: trainable_labels(params, freeze))
  return tx, schedule
