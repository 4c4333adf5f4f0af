"""Readers of the weight files users have (torch zips read without torch, safetensors, Hugging Face directories).

The public loaders return `(module, params)` ready for `module.apply({'params': params}, ...)`.
"""
from ovseg_jax.weights.clip import load_clip
from ovseg_jax.weights.dino import load_dino

__all__ = ["load_clip", "load_dino"]
