"""Mask2Former (Cheng et al. 2022): backbone -> MSDeformAttn pixel decoder -> masked-attention decoder.

Any backbone that maps NHWC images to `{stride: NHWC map}` (Swin, ResNet, ...) plugs in; the main output is
the last decoder layer's prediction and `aux_outputs` holds the earlier ones (the learnable queries' own
prediction first), as the training losses want them.
"""
from __future__ import annotations

import flax.linen as nn
import jax

from ovseg_jax.models.mask2former_decoder import MaskedAttentionDecoder
from ovseg_jax.models.mask2former_pixel_decoder import MSDeformAttnPixelDecoder


class Mask2Former(nn.Module):
  """images [B, H, W, 3] (normalised as the backbone expects) -> {'pred_logits': [B, Q, K+1],
  'pred_masks': [B, Q, H/4, W/4], 'query_embeddings': [B, Q, D], 'mask_features': [B, H/4, W/4, mask_dim],
  'aux_outputs': [{'pred_logits', 'pred_masks', 'query_embeddings'} per earlier prediction]}.

  With `decoder.num_classes == 0` there is no class head: a `classifier` (`models.query_classifiers`) then
  gives every prediction's 'pred_logits' from its 'query_embeddings' and the `class_embeddings` passed in (any
  vocabulary); without one there is no 'pred_logits'.
  """
  backbone: nn.Module
  pixel_decoder: MSDeformAttnPixelDecoder
  decoder: MaskedAttentionDecoder
  classifier: nn.Module | None = None

  def __call__(self, images: jax.Array, train: bool = False, class_embeddings: jax.Array | None = None) -> dict:
    if self.classifier is not None and self.decoder.num_classes:
      raise ValueError("Mask2Former has both a K+1 class head (decoder.num_classes "
                       f"{self.decoder.num_classes}) and a classifier: build the decoder with num_classes=0.")
    features = self.backbone(images, train=train)
    mask_features, multi_scale = self.pixel_decoder(features, train=train)
    outputs = self.decoder(multi_scale, mask_features, train=train)
    if self.classifier is not None:
      classify = lambda p: {**p, "pred_logits": self.classifier(p["query_embeddings"], class_embeddings)}
      outputs = {**classify(outputs), "aux_outputs": [classify(a) for a in outputs["aux_outputs"]]}
    return {**outputs, "mask_features": mask_features}
