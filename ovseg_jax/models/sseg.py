"""S-Seg: a MaskFormer without a class head plus a text tower, trained from image-text pairs (paper sec. 3).

Image side: backbone -> FPN pixel decoder -> transformer decoder -> N masks and N mask features. Each mask
feature is projected into the joint space by a 2-layer MLP (hidden width = the decoder width, exact GELU;
the paper does not specify the hidden width or activation) to classify masks at test time; the image
embedding for the contrastive loss pools the N mask features (`pool_order`). Text side: causal text
transformer -> [EOS] feature -> its own 2-layer MLP. Inputs are float NHWC images already normalised by
the caller.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ovseg_jax.models.layers import DType, Mlp
from ovseg_jax.models.maskformer import MaskHead, TransformerDecoder
from ovseg_jax.models.pixel_decoder import FPNPixelDecoder
from ovseg_jax.models.text_transformer import TextTransformer
from ovseg_jax.models.backbones import build_backbone, checked_section

# 'mean_then_project': paper, MLP(mean_n feature_n); 'project_then_mean': mean_n MLP(feature_n).
POOL_ORDERS = ("mean_then_project", "project_then_mean")
# 'query': paper, the decoder's output per query; 'mask_pooled': per-pixel embeddings averaged under each
# predicted mask, so a mask's feature can only describe what its mask covers.
MASK_FEATURE_SOURCES = ("query", "mask_pooled")
MAX_LOGIT_SCALE = 100.0


class SSeg(nn.Module):
  """The S-Seg model. Build it from a config with `build_sseg`."""
  # Image backbone: images -> {stride: map} (a Swin, or a ViT with its simple feature pyramid).
  backbone: nn.Module
  # FPN pixel decoder.
  conv_dim: int
  mask_dim: int
  # Transformer decoder.
  num_queries: int
  decoder_dim: int
  decoder_heads: int
  decoder_mlp_dim: int
  decoder_layers: int
  # Text tower.
  text_width: int
  text_depth: int
  text_heads: int
  vocab_size: int = 49408
  context_length: int = 77
  decoder_dropout: float = 0.0
  embed_dim: int = 256
  pool_order: str = "mean_then_project"
  mask_feature_source: str = "query"
  logit_scale_init: float = math.log(1 / 0.07)
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  def setup(self):
    if self.pool_order not in POOL_ORDERS:
      raise ValueError(f"pool_order={self.pool_order!r}: use one of {POOL_ORDERS}.")
    if self.mask_feature_source not in MASK_FEATURE_SOURCES:
      raise ValueError(f"mask_feature_source={self.mask_feature_source!r}: use one of {MASK_FEATURE_SOURCES}.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.pixel_decoder = FPNPixelDecoder(self.conv_dim, self.mask_dim, **kw)
    self.decoder = TransformerDecoder(self.num_queries, self.decoder_dim, self.decoder_heads,
                                      self.decoder_mlp_dim, self.decoder_layers, self.decoder_dropout, **kw)
    self.mask_head = MaskHead(self.decoder_dim, self.mask_dim, **kw)
    self.image_projection = Mlp(self.decoder_dim, self.embed_dim, **kw)
    self.text_encoder = TextTransformer(self.text_width, self.text_depth, self.text_heads, self.vocab_size,
                                        self.context_length, **kw)
    self.text_projection = Mlp(self.text_width, self.embed_dim, **kw)
    # Stored as a log, as in CLIP; the parameter keeps its name so optimizers can find it.
    self.log_logit_scale = self.param("logit_scale", nn.initializers.constant(self.logit_scale_init), (),
                                      self.param_dtype)

  def logit_scale(self) -> jax.Array:
    """exp(parameter) clipped at 100, as CLIP bounds its temperature.

    CLIP clamps the stored parameter after each step; here the value is clipped instead, so above 100 the
    parameter gets no gradient (and stays put apart from optimizer momentum).
    """
    return jnp.minimum(jnp.exp(self.log_logit_scale), MAX_LOGIT_SCALE)

  def encode_image(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """images float [B, H, W, 3] -> dict with
      pred_masks [L, B, N, H/4, W/4]: mask logits of every decoder layer (the last is the prediction);
      mask_embeddings [B, N, embed_dim]: projected final-layer mask features (not normalised);
      image_embedding [B, embed_dim]: the pooled mask features for the contrastive loss.
    """
    features = self.backbone(images, train=train)
    pixel_embeddings, memory = self.pixel_decoder(features)
    query_features = self.decoder(memory, train=train)
    pred_masks = self.mask_head(query_features, pixel_embeddings)
    if self.mask_feature_source == "query":
      mask_features = query_features[-1]
      weights = jnp.ones(mask_features.shape[:2], mask_features.dtype)
    else:
      mask_prob = jax.nn.sigmoid(pred_masks[-1])  # [B, N, h, w]
      weights = jnp.sum(mask_prob, axis=(-2, -1))  # Mask areas: empty masks barely count in the image mean.
      mask_features = jnp.einsum("bnhw,bhwc->bnc", mask_prob, pixel_embeddings) / (weights[..., None] + 1e-6)
    weights = weights / jnp.sum(weights, axis=1, keepdims=True)
    mask_embeddings = self.image_projection(mask_features)
    if self.pool_order == "mean_then_project":
      image_embedding = self.image_projection(jnp.einsum("bn,bnc->bc", weights, mask_features))
    else:
      image_embedding = jnp.einsum("bn,bnc->bc", weights, mask_embeddings)
    return {"pred_masks": pred_masks, "mask_embeddings": mask_embeddings, "image_embedding": image_embedding}

  def encode_text(self, tokens: jax.Array) -> jax.Array:
    """tokens int [B, L] (L <= context_length, [EOS] = largest id) -> [B, embed_dim], not normalised."""
    return self.text_projection(self.text_encoder(tokens))

  def __call__(self, images: jax.Array, tokens: jax.Array, train: bool = True) -> dict[str, jax.Array]:
    """`encode_image` outputs plus text_embedding [B, embed_dim] and logit_scale []."""
    return {**self.encode_image(images, train=train), "text_embedding": self.encode_text(tokens),
            "logit_scale": self.logit_scale()}


_SECTIONS = {  # section -> (required keys, optional keys with defaults)
    "pixel_decoder": (("conv_dim", "mask_dim"), {}),
    "decoder": (("num_queries", "dim", "num_heads", "mlp_dim", "num_layers"), {"dropout_rate": 0.0}),
    "text": (("width", "depth", "num_heads"), {"vocab_size": 49408, "context_length": 77}),
}
_TOP_LEVEL_OPTIONAL = {"pool_order": "mean_then_project", "mask_feature_source": "query", "logit_scale_init": math.log(1 / 0.07),
                       "dtype": "float32"}


def build_sseg(model_config: Mapping[str, Any]) -> SSeg:
  """SSeg from a config (dict or ConfigDict) with sections backbone, pixel_decoder, decoder, text and
  top-level embed_dim, pool_order, logit_scale_init, dtype (see `configs/sseg_demo.py`)."""
  cfg = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
  sections = ("backbone", *_SECTIONS)
  top = checked_section({k: v for k, v in cfg.items() if k not in sections}, "model", ("embed_dim",),
                 _TOP_LEVEL_OPTIONAL)
  for name in sections:
    if name not in cfg:
      raise ValueError(f"model: missing section {name!r}; expected sections {list(sections)}.")
  p, d, t = (checked_section(cfg[name], f"model.{name}", *_SECTIONS[name]) for name in _SECTIONS)
  try:
    dtype = jnp.dtype(top["dtype"])
  except TypeError as e:
    raise ValueError(f"model.dtype={top['dtype']!r} is not a dtype; use 'float32' or 'bfloat16'.") from e
  return SSeg(
      backbone=build_backbone(cfg["backbone"], p["conv_dim"], dtype),
      conv_dim=p["conv_dim"], mask_dim=p["mask_dim"],
      num_queries=d["num_queries"], decoder_dim=d["dim"], decoder_heads=d["num_heads"],
      decoder_mlp_dim=d["mlp_dim"], decoder_layers=d["num_layers"], decoder_dropout=d["dropout_rate"],
      text_width=t["width"], text_depth=t["depth"], text_heads=t["num_heads"], vocab_size=t["vocab_size"],
      context_length=t["context_length"],
      embed_dim=top["embed_dim"], pool_order=top["pool_order"],
      mask_feature_source=top["mask_feature_source"], logit_scale_init=top["logit_scale_init"],
      dtype=dtype)
