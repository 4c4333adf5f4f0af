"""CLIP's training objective, open_clip's `ClipLoss`: the mean of the image->text and text->image cross-entropies
over the global batch, with the learned temperature exp(logit_scale)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ovseg_jax.methods.clip import optimizer
from ovseg_jax.ops import losses
from ovseg_jax.ops.normalize import PIXEL_MEAN, normalize_images

# The colour masked crops are filled with (CLIP's mean, in uint8): pixels of another colour are kept.
FILL_COLOUR = tuple(round(255 * m) for m in PIXEL_MEAN)


def kept_pixels(images_uint8: jax.Array) -> jax.Array:
  """bool [B, H, W]: pixels that are not the fill colour, i.e. the mask of a masked crop (how the released
  prompt tuning recovers a crop's mask after augmentation)."""
  return jnp.any(images_uint8 != jnp.asarray(FILL_COLOUR, jnp.uint8), axis=-1)


def freeze_params(params: Any, freeze: tuple[str, ...]) -> Any:
  """`params` with the frozen groups behind stop_gradient, so no backward pass runs through a locked tower."""
  def maybe_stop(path, leaf):
    names = tuple(str(getattr(k, "key", k)) for k in path)
    return jax.lax.stop_gradient(leaf) if optimizer.parameter_group(names) in freeze else leaf
  return jax.tree_util.tree_map_with_path(maybe_stop, params)


def contrastive(image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array) -> dict[str, jax.Array]:
  """open_clip's loss of paired embeddings [B, D] with the logit-scale parameter (log of the temperature's
  inverse): (CE(image->text) + CE(text->image)) / 2, plus the in-batch retrieval accuracy."""
  out = losses.contrastive_loss(image_emb, text_emb, jnp.exp(logit_scale))
  return {"loss": 0.5 * (out["i2t"] + out["t2i"]), "accuracy": out["accuracy"]}


def clip_loss(params: Any, model: Any, batch: dict[str, jax.Array], freeze: tuple[str, ...] = (),
              with_masks: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(loss, metrics) of a batch {'image': uint8 [B, H, W, 3], 'tokens': int32 [B, L]}. With `with_masks`, the
  image tower gets each crop's mask (pixels not of the fill colour) for its mask prompts."""
  params = freeze_params(params, freeze)
  images = normalize_images(batch["image"])
  masks = kept_pixels(batch["image"]) if with_masks else None
  image_emb = model.apply({"params": params}, images, masks, method="encode_image")
  text_emb = model.apply({"params": params}, batch["tokens"], method="encode_text")
  out = contrastive(image_emb, text_emb, params["logit_scale"])
  return out["loss"], {"loss": out["loss"], "contrastive_accuracy": out["accuracy"],
                       "logit_scale": jnp.exp(params["logit_scale"])}
