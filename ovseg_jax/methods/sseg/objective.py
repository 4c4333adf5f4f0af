"""The S-Seg training objective: pseudo masks -> bipartite matching -> dice + focal, plus image-text InfoNCE.

Everything runs inside the jitted train step on device (no host callbacks): the pseudo-mask generator is
frozen (no gradient), matching is the exact on-device Hungarian, and the contrastive loss sees the global
batch because the step is jitted over global arrays.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ovseg_jax.ops import losses
from ovseg_jax.ops import matching
from ovseg_jax.ops import normalize as preprocessing
from ovseg_jax.ops import pseudo_masks
from ovseg_jax.ops.normalize import normalize_images


# Pixels per feature cell of the paper's DINO ViT-S/8: the grid stored pseudo masks are sampled at for training.
_DINO_STRIDE = 8


def stored_mask_grid(cfg: ml_collections.ConfigDict, image_size: int) -> tuple[int, int] | None:
  """The (h, w) grid at which a training crop reads stored pseudo masks (the grid online K-means would use);
  None when they are computed online."""
  source = cfg.get("source", "online")
  if source == "online":
    return None
  if source != "stored":
    raise ValueError(f"pseudo_masks.source={source!r}: use 'online' (computed in the train step) or 'stored' "
                     "(written once by `python -m ovseg_jax.store_pseudo_masks`).")
  grid = image_size // (cfg.cell if cfg.features == "pixels" else _DINO_STRIDE)
  return grid, grid


def make_pseudo_mask_fn(cfg: ml_collections.ConfigDict, image_size: int,
                        dino: Any | None = None) -> Callable[[jax.Array, jax.Array, Any], tuple]:
  """Returns `fn(images_uint8, key, dino_params) -> (masks [B,K,h,w], valid [B,K])` for the configured feature
  source. DINO's parameters are an argument, not a closure, so a jitted step does not embed them as
  constants (tens of MB in every compiled program); `dino_params` is None for pixel features."""
  if cfg.features == "pixels":
    grid = image_size // cfg.cell
    feature_fn = lambda images, _: pseudo_masks.pixel_patch_features(
        images.astype(jnp.float32) / 255.0, cell=cfg.cell, position_weight=cfg.position_weight)
    normalize = False
  elif cfg.features == "dino":
    if dino is None:
      raise ValueError("pseudo_masks.features='dino' needs pseudo_masks.dino_checkpoint (a DINO .pth file or "
                       "a Hugging Face facebook/dino-* directory).")
    grid = image_size // dino.patch_size
    feature_fn = lambda images, params: dino.apply(
        {"params": params}, normalize_images(images, preprocessing.IMAGENET_MEAN, preprocessing.IMAGENET_STD))
    normalize = True
  else:
    raise ValueError(f"pseudo_masks.features={cfg.features!r}: use 'pixels' or 'dino'.")

  def fn(images, key, dino_params):
    return pseudo_masks.generate_pseudo_masks(
        images, num_clusters=cfg.num_clusters, num_iters=cfg.num_iters, key=key, init=cfg.init,
        feature_fn=lambda x: feature_fn(x, dino_params), grid_hw=(grid, grid), normalize=normalize)
  return fn


def mask_losses(pred_masks: jax.Array, targets: jax.Array, valid: jax.Array,
                cfg: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """Matches and scores every decoder layer's masks against the pseudo masks.

  pred_masks: [L, B, N, h, w] logits; targets: [B, K, h, w] in {0, 1}; valid: [B, K] (non-empty targets).
  Each layer is matched on its own (MaskFormer's aux losses); losses are normalised by the number of
  valid pseudo masks in the global batch and summed over layers.
  """
  num_layers, batch, num_queries = pred_masks.shape[:3]
  if num_queries < targets.shape[1]:
    raise ValueError(f"model.decoder.num_queries={num_queries} is below pseudo_masks.num_clusters="
                     f"{targets.shape[1]}: every pseudo mask needs a query; raise the first or lower the second.")
  pred = pred_masks.reshape(num_layers, batch, num_queries, -1).astype(jnp.float32)
  target = targets.reshape(batch, targets.shape[1], -1).astype(jnp.float32)
  num_masks = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
  layers = range(num_layers) if cfg.aux_layers else [num_layers - 1]
  out: dict[str, jax.Array] = {}
  for layer in layers:
    cost = losses.pairwise_mask_cost(jax.lax.stop_gradient(pred[layer]), target,
                                     weight_focal=cfg.weight_focal, weight_dice=cfg.weight_dice)
    # [B, 2, K] since N >= K; pairs of empty targets fill the fixed shape and are masked in the loss.
    rows_cols, _ = matching.masked_hungarian_matching(cost, valid)
    rows, cols = rows_cols[:, 0], rows_cols[:, 1]
    matched_pred = jnp.zeros_like(cols).at[jnp.arange(batch)[:, None], cols].set(rows)
    layer_losses = losses.matched_mask_loss(
        pred[layer], target, valid, matched_pred, num_masks, weight_focal=cfg.weight_focal,
        weight_dice=cfg.weight_dice, empty_unmatched_weight=cfg.empty_unmatched_weight)
    for name, value in layer_losses.items():
      out[name] = out.get(name, 0.0) + value
  return out


def _unconstrained(x: jax.Array, batch_dim: int = 0) -> jax.Array:
  del batch_dim
  return x


def sseg_loss(params: Any, model: Any, batch: dict[str, jax.Array], key: jax.Array,
              cfg: ml_collections.ConfigDict, pseudo_mask_fn: Callable,
              dino_params: Any = None, constrain: Callable = _unconstrained) -> tuple[jax.Array, dict]:
  """Total loss = weight_mask * L_mask + weight_contrastive * L_contrastive (paper eq. 4).

  `constrain(x, batch_dim)` (`sharding.batch_constraint`) keeps the pseudo masks and the predicted masks
  split over the batch, so K-means and the matcher run locally on each device.
  """
  mask_key, dropout_key = jax.random.split(key)
  if "pseudo_labels" in batch:  # Stored once per image (`store_pseudo_masks`), cropped with the image.
    targets, valid = pseudo_masks.masks_from_labels(batch["pseudo_labels"], cfg.pseudo_masks.num_clusters)
  else:
    targets, valid = jax.lax.stop_gradient(pseudo_mask_fn(batch["image"], mask_key, dino_params))
  targets, valid = constrain(targets), constrain(valid)
  tokens = batch["tokens"]  # [B, L], or [B, 1 + K, L]: the caption, then K noun prompts (multi-label).
  out = model.apply({"params": params}, normalize_images(batch["image"]), tokens if tokens.ndim == 2 else tokens[:, 0],
                    train=True, rngs={"dropout": dropout_key})
  out = {**out, "pred_masks": constrain(out["pred_masks"], batch_dim=1)}
  pred_hw = out["pred_masks"].shape[-2:]
  targets = pseudo_masks.resize_masks(targets, pred_hw)
  mask = mask_losses(out["pred_masks"], targets, valid, cfg.loss)
  contrastive = losses.contrastive_loss(out["image_embedding"], out["text_embedding"], out["logit_scale"])
  total = cfg.loss.weight_mask * mask["loss"] + cfg.loss.weight_contrastive * contrastive["loss"]
  extra = {}
  if tokens.ndim == 3:
    prompts = tokens[:, 1:]
    b, k, length = prompts.shape
    prompt_emb = model.apply({"params": params}, prompts.reshape(b * k, length), method="encode_text")
    multi = losses.multi_label_contrastive_loss(out["image_embedding"], prompt_emb.reshape(b, k, -1),
                                                prompts[..., 0] != 0, out["logit_scale"])
    total = total + cfg.loss.weight_contrastive * multi["loss"]
    extra = {"multi_label_loss": multi["loss"], "prompts_per_image": jnp.mean(jnp.sum(prompts[..., 0] != 0, -1))}
  metrics = {**extra, "loss": total, "mask_loss": mask["loss"], "focal": mask["focal"], "dice": mask["dice"],
             "contrastive_loss": contrastive["loss"], "contrastive_accuracy": contrastive["accuracy"],
             "logit_scale": out["logit_scale"], "pseudo_masks_per_image": jnp.mean(jnp.sum(valid, -1))}
  if "empty" in mask:
    metrics["empty_unmatched"] = mask["empty"]
  return total, metrics
