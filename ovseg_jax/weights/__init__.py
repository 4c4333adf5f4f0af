"""Readers of the weight files users have (torch zips read without torch, safetensors, Hugging Face directories).

The public loaders return `(module, params)` ready for `module.apply({'params': params}, ...)`.
"""
from ovseg_jax.weights.clip import load_clip
from ovseg_jax.weights.dino import load_dino
from ovseg_jax.weights.mask2former import load_mask2former
from ovseg_jax.weights.resnet import load_resnet
from ovseg_jax.weights.sam import load_sam_image_encoder

__all__ = ["load_clip", "load_dino", "load_mask2former", "load_resnet", "load_sam_image_encoder"]
