"""MAFT's Interactive-Prompt CLIP (IP-CLIP): CLIP's image tower classifies every mask proposal of an image in one
pass, with the blocks and weights of `models.clip` unchanged (the released `IP_CLIP` / `ResidualAttentionBlock`
of jiaosiyu1999/MAFT, `third_party/CLIP/clip/model.py`).

From block `start_layers` on, the class token is copied once per proposal. Class copy i attends to itself and to
the patches where proposal i, resized bilinearly to the patch grid, is >= 0.5; patches attend to patches only, so
they evolve as without proposals and the copies cannot see each other. Each copy's output goes through `ln_post`
and `proj`. For image sizes other than the trained one the position grid is resized bicubically with
align_corners=True, as the released forward does (480 px images for a ViT-B/16 trained at 224).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from ovseg_jax.models.clip import ClipArchitecture, VisionTransformer
from ovseg_jax.models.resize import resize_bilinear

# A proposal covers a patch where its resized probability is at least this (the released `< 0.5` block test).
PATCH_THRESHOLD = 0.5


def proposal_attention_mask(masks: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """bool [B, 1, N + h*w, N + h*w], True where attention is allowed, for proposal probabilities [B, N, H, W]
  resized (bilinear, align_corners=False) to the patch `grid`: the N class copies first, then the patches."""
  b, n = masks.shape[:2]
  covered = resize_bilinear(masks.astype(jnp.float32), grid, axes=(2, 3)).reshape(b, n, -1) >= PATCH_THRESHOLD
  hw = covered.shape[-1]
  copies = jnp.concatenate([jnp.broadcast_to(jnp.eye(n, dtype=bool), (b, n, n)), covered], axis=-1)
  patches = jnp.broadcast_to(jnp.arange(n + hw) >= n, (b, hw, n + hw))
  return jax.lax.stop_gradient(jnp.concatenate([copies, patches], axis=1)[:, None])


def _forward(vit: VisionTransformer, images: jax.Array, masks: jax.Array | None, start_layers: int) -> jax.Array:
  x, grid = vit.tokens(images, align_corners=True)
  for block in vit.blocks[:start_layers]:
    x = block(x)
  if masks is None:
    for block in vit.blocks[start_layers:]:
      x = block(x)
    return vit.ln_post(x[:, 0]) @ vit.proj.astype(x.dtype)
  n = masks.shape[1]
  x = jnp.concatenate([jnp.repeat(x[:, :1], n, axis=1), x[:, 1:]], axis=1)
  attention = proposal_attention_mask(masks, grid)
  for block in vit.blocks[start_layers:]:
    x = block(x, mask=attention)
  return vit.ln_post(x[:, :n]) @ vit.proj.astype(x.dtype)


def ipclip_embeddings(architecture: ClipArchitecture, visual_params: Any, images: jax.Array,
                      masks: jax.Array | None, start_layers: int) -> jax.Array:
  """IP-CLIP image embeddings (projected, not normalised).

  images [B, H, W, 3] CLIP-normalised; masks: proposal probabilities [B, N, H', W'] in [0, 1] (any N, any
  size) -> [B, N, D]; None -> [B, D], CLIP's class embedding (the released forward without proposals, used
  for self-distillation). `visual_params`: a CLIP's image tower (its params['visual'])."""
  depth = architecture.vision_layers
  if not 0 <= start_layers <= depth:
    raise ValueError(f"IP-CLIP start_layers={start_layers}: use a block index in [0, {depth}] (the image tower "
                     f"has {depth} blocks; 8 for ViT-B/16 as released).")
  if masks is not None and masks.ndim != 4:
    raise ValueError(f"IP-CLIP masks must be [batch, proposals, H, W], got shape {masks.shape}.")
  return VisionTransformer(architecture).apply({"params": visual_params}, images, masks,
                                              method=functools.partial(_forward, start_layers=start_layers))
