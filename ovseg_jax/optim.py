"""AdamW with linear warmup + cosine decay, no weight decay on norms, biases and embeddings."""
from __future__ import annotations

from typing import Any

import jax
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
