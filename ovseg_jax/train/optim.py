"""AdamW with linear warmup + cosine decay, no weight decay on norms, biases and embeddings."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

# Parameter names (last path element) that are never decayed besides 1-d tensors (biases, norm scales).
_NO_DECAY_NAMES = ("embedding", "pos_embedding", "query_embedding", "logit_scale")


def learning_rate_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `cfg.lr`, then cosine decay to `cfg.lr * cfg.end_lr_factor`."""
  warmup = int(cfg.warmup_steps)
  if warmup >= total_steps:
    raise ValueError(f"optimizer.warmup_steps={warmup} must be below total_steps={total_steps}.")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup, decay_steps=total_steps,
      end_value=cfg.lr * cfg.end_lr_factor)


def decay_mask(params: Any) -> Any:
  """True for the weight matrices that get weight decay."""
  def keep(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    return leaf.ndim >= 2 and name not in _NO_DECAY_NAMES
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int) -> tuple[optax.GradientTransformation,
                                                                               optax.Schedule]:
  schedule = learning_rate_schedule(cfg, total_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip_norm) if cfg.grad_clip_norm else optax.identity(),
      optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask),
  )
  return tx, schedule


def poly_schedule(peak_lr: float, total_steps: int, warmup_steps: int, power: float = 1.0,
                  end_lr: float = 0.0) -> optax.Schedule:
  """mmseg's "poly" policy with linear warmup: (peak - end) * (1 - step/total)^power + end after warmup."""
  if warmup_steps >= total_steps:
    raise ValueError(f"warmup_steps={warmup_steps} must be below total_steps={total_steps}.")
  warmup = optax.linear_schedule(0.0, peak_lr, warmup_steps)
  def poly(step):
    frac = jnp.clip(step / total_steps, 0.0, 1.0)
    return (peak_lr - end_lr) * (1.0 - frac) ** power + end_lr
  return optax.join_schedules([warmup, lambda s: poly(s + warmup_steps)], [warmup_steps])


def layer_id(path: tuple[str, ...], depth: int) -> int:
  """BEiT's layer ids for layer-wise lr decay: embeddings 0, ViT block i (0-based) i + 1, all else depth + 1."""
  for name in path:
    if name in ("patch_embed", "pos_embedding", "cls_token"):
      return 0
    if name.startswith("block_"):
      return int(name.split("_")[1]) + 1
  return depth + 1


def layer_decay_multipliers(params: Any, depth: int, decay: float, backbone: str = "backbone") -> Any:
  """Per-leaf lr multipliers decay^(depth + 1 - layer_id) for leaves under `backbone`, 1 elsewhere."""
  def multiplier(path, _):
    names = tuple(str(getattr(k, "key", k)) for k in path)
    if backbone not in names:
      return 1.0
    return float(decay ** (depth + 1 - layer_id(names, depth)))
  return jax.tree_util.tree_map_with_path(multiplier, params)


def scale_updates_by(multipliers: Any) -> optax.GradientTransformation:
  """Multiplies each leaf's update by a fixed factor; after AdamW this scales that leaf's learning rate
  (and its decoupled weight decay, which AdamW also multiplies by the learning rate)."""
  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map(lambda u, m: u * m, updates, multipliers), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
