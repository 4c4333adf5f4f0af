"""EBSeg's AdaB decoder (slonetime/EBSeg, `transformer_decoder.py` and `ebseg_mask2former_head.py`): Mask2Former's
pixel decoder and masked-attention decoder, unchanged, plus two heads on every prediction (the learnable queries'
own and each layer's):

- embedding A, "fully supervised": the mask features averaged under the prediction's binary mask (logit > 0, no
  gradient through the mask), LayerNorm + linear, plus the normalised query, then a 3-layer MLP into CLIP's
  embedding space; L2-normalised and scaled by min(s, 10), s a learned scalar starting at 1;
- the attention biases of embedding B: a 3-layer MLP turns the mask features into one map per CLIP head, each
  query's bias map is its mask embedding dotted with them, then scaled by a learned affine (PyTorch's
  Linear(1, 1)). `models.clip_surgery.recognize` turns them into B.
"""
from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from ovseg_jax.models.layers import DType, Mlp
from ovseg_jax.models.mask2former_decoder import MaskedAttentionDecoder
from ovseg_jax.models.mask2former_pixel_decoder import MSDeformAttnPixelDecoder


def mask_pooled(features: jax.Array, mask_logits: jax.Array) -> jax.Array:
  """features [B, H, W, C] averaged under each mask's pixels with logit > 0 (no gradient through the masks):
  [B, Q, C]."""
  keep = jax.lax.stop_gradient(mask_logits > 0).astype(features.dtype)
  return jnp.einsum("bqhw,bhwc->bqc", keep, features) / (jnp.sum(keep, axis=(-2, -1))[..., None] + 1e-8)


class AdaB(nn.Module):
  """features {stride: [B, h, w, C]} -> {'predictions': [per prediction, earliest first: {'pred_masks' [B, Q, H/4,
  W/4], 'embeddings_a' [B, Q, embed_dim], 'attention_biases' [B, clip_heads, Q, H/4, W/4]}]}.

  The decoder must have no class head (`num_classes=0`); its hidden and mask widths may differ."""
  pixel_decoder: MSDeformAttnPixelDecoder
  decoder: MaskedAttentionDecoder
  embed_dim: int
  clip_heads: int
  max_scale: float = 10.0
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, features: Mapping[int, jax.Array], train: bool = False) -> dict:
    if self.decoder.num_classes:
      raise ValueError("AdaB: its decoder classifies by embeddings; build it with num_classes=0.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    mask_features, multi_scale = self.pixel_decoder(features, train=train)
    out = self.decoder(multi_scale, mask_features, train=train)
    hidden, mask_dim = self.decoder.hidden_dim, mask_features.shape[-1]
    pool_norm = nn.LayerNorm(epsilon=1e-5, name="pool_proj_norm", **kw)
    pool_proj = nn.Dense(hidden, name="pool_proj", **kw)
    embed = Mlp(hidden, self.embed_dim, num_layers=3, activation="relu", name="embed_a", **kw)
    scale = jnp.minimum(self.param("logit_scale", nn.initializers.ones, (), self.param_dtype), self.max_scale)
    b, h, w, _ = mask_features.shape
    bias_maps = Mlp(mask_dim, mask_dim * self.clip_heads, num_layers=3, activation="relu", name="attn_proj", **kw)(
        mask_features).reshape(b, h, w, self.clip_heads, mask_dim)
    bias_scaling = nn.Dense(1, name="bias_scaling", **kw)  # PyTorch's Linear(1, 1) on every bias value.

    def heads(prediction):
      pooled = pool_proj(pool_norm(mask_pooled(mask_features, prediction["pred_masks"])))
      a = embed(pooled + prediction["query_embeddings"]).astype(jnp.float32)
      a = scale * a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
      bias = jnp.einsum("bqc,bhwnc->bnqhw", prediction["mask_embeddings"], bias_maps)
      return {"pred_masks": prediction["pred_masks"], "embeddings_a": a,
              "attention_biases": bias_scaling(bias[..., None])[..., 0]}

    return {"predictions": [heads(p) for p in out["aux_outputs"] + [out]], "mask_features": mask_features}
