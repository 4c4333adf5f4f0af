"""EBSeg (Shan et al. 2024, "Open-Vocabulary Semantic Segmentation with Image Embedding Balancing") as its released
code builds it (slonetime/EBSeg, `EBSeg.py`, `ebseg_mask2former_head.py`, the SAM `image_encoder.py`):

- SAM branch: SAM's ViT image encoder without its neck; the outputs of its global-attention blocks (2, 5, 8, 11
  for ViT-B) bilinearly resized by 4, 2, 1 and 1/2 are res2..res5 (strides 4..32 for patch 16);
- CLIP branch: the CLIP image tower on the input downsampled by `clip_resolution` (0.5; 0.7 for ViT-L/14-336);
  its features after blocks 3, 6, 9 (6, 12, 18 for ViT-L) each go through a LayerNorm over channels (eps 1e-6) and
  a 1x1 conv, are bilinearly resized to res3, res4, res5 and added to them;
- AdaB (`models.adab`) on the fused maps: masks, embeddings A and the attention biases of embedding B, which the
  CLIP recognition head (`models.clip_surgery.recognize`, from block 9; 18 for ViT-L) produces;
- classification: class logits = embedding . (exp(CLIP's logit scale) x the unit text embeddings of the classes
  and a learned background embedding, normalised); the background is the last ("no object") column.

With `inference`, only the last prediction gets B, and the CLIP Surgery stream gives D: the unit dense features
averaged under the last masks (bilinearly resized to the CLIP grid, sigmoid > 0.5), classified the same way.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ovseg_jax.models import clip_surgery
from ovseg_jax.models.adab import AdaB
from ovseg_jax.models.clip import CLIP, ClipArchitecture
from ovseg_jax.models.layers import DType
from ovseg_jax.models.resize import resize_bilinear
from ovseg_jax.models.sam import SamImageEncoder


def _unit(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class EBSeg(nn.Module):
  """(SAM-normalised images, CLIP-normalised images [B, H, W, 3], unit text embeddings [K, embed_dim]) ->
  {'pred_logits' [B, Q, K+1] (A), 'logits_b' [B, Q, K+1], 'pred_masks' [B, Q, H/4, W/4], 'embeddings_a',
  'aux_outputs': the same for the earlier predictions (training only)}, plus 'logits_d' with `inference`.
  `encode_text` is the CLIP's text tower (its parameters exist once it has been called, e.g. at init).

  `clip_fusion_blocks` index CLIP's token list (0: after ln_pre, i: after block i, 1-based as released)."""
  sam: SamImageEncoder
  clip_architecture: ClipArchitecture
  adab: AdaB
  sam_scales: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)
  clip_fusion_blocks: tuple[int, ...] = (3, 6, 9)
  clip_recognition_block: int = 9
  clip_resolution: float = 0.5
  dtype: DType = jnp.float32

  def setup(self):
    if len(self.sam.global_attn_indexes) != len(self.sam_scales) or len(self.clip_fusion_blocks) != 3:
      raise ValueError(f"EBSeg: SAM's global-attention blocks {self.sam.global_attn_indexes} need one scale each "
                       f"({self.sam_scales} given) and clip_fusion_blocks {self.clip_fusion_blocks} one block for "
                       "each of res3, res4, res5.")
    self.clip = CLIP(self.clip_architecture, self.dtype)
    self.fusion_norms = [nn.LayerNorm(epsilon=1e-6, dtype=self.dtype) for _ in self.clip_fusion_blocks]
    self.fusion_projections = [nn.Conv(self.sam.width, (1, 1), dtype=self.dtype) for _ in self.clip_fusion_blocks]
    dim = self.clip_architecture.embed_dim
    self.background_embedding = self.param("background_embedding", nn.initializers.normal(dim ** -0.5), (1, dim))

  def encode_text(self, tokens: jax.Array) -> jax.Array:
    return self.clip.encode_text(tokens)

  def sam_features(self, images: jax.Array) -> dict[int, jax.Array]:
    """res2..res5 {stride: [B, h, w, width]} from the global-attention blocks."""
    hidden = self.sam(images)["hidden_states"]
    features = {}
    for block, scale in zip(self.sam.global_attn_indexes, self.sam_scales):
      x = hidden[block]
      features[round(self.sam.patch_size / scale)] = resize_bilinear(
          x, (int(x.shape[1] * scale), int(x.shape[2] * scale)))
    return features

  def __call__(self, sam_images: jax.Array, clip_images: jax.Array, text_embeddings: jax.Array,
               inference: bool = False, train: bool = False) -> dict:
    features = self.sam_features(sam_images)
    visual = self.clip.visual
    tokens, surgery, grid = clip_surgery.layer_features(
        visual, clip_surgery.downsampled(clip_images, self.clip_resolution), self.clip_recognition_block, inference)
    for stride, block, norm, proj in zip(sorted(features)[1:], self.clip_fusion_blocks, self.fusion_norms,
                                         self.fusion_projections):
      target = features[stride]
      y = proj(norm(clip_surgery.grid_tokens(tokens[block], grid)))
      features[stride] = target + resize_bilinear(y, target.shape[1:3]).astype(target.dtype)
    out = self.adab(features, train=train)
    classifier = jnp.exp(self.clip.logit_scale) * _unit(jnp.concatenate([text_embeddings, self.background_embedding]))
    classify = lambda emb: jnp.einsum("bqd,kd->bqk", emb.astype(jnp.float32), classifier)
    predictions = out["predictions"][-1:] if inference else out["predictions"]
    results = []
    for p in predictions:  # At inference the last alone, with the value-value stream for D.
      b, dense = clip_surgery.recognize(visual, tokens, surgery, self.clip_recognition_block, p["attention_biases"],
                                        grid)
      results.append({"pred_masks": p["pred_masks"], "embeddings_a": p["embeddings_a"],
                      "pred_logits": classify(p["embeddings_a"]), "logits_b": classify(b)})
    if not inference:
      return {**results[-1], "aux_outputs": results[:-1]}
    masks = resize_bilinear(results[-1]["pred_masks"].astype(jnp.float32), grid, axes=(2, 3))
    keep = (jax.nn.sigmoid(masks) > 0.5).astype(jnp.float32)
    pooled = jnp.einsum("bqhw,bhwd->bqd", keep, dense) / (jnp.sum(keep, axis=(-2, -1))[..., None] + 1e-8)
    return {**results[-1], "logits_d": classify(pooled)}
