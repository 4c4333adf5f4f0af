r"""Writes the Swin parity fixtures: a tiny random timm Swin, its weights and its stage outputs.

Needs torch and timm (never a dependency of the project); run by hand from the repository root:

  python tools/make_swin_fixtures.py --out=tests/fixtures/swin

timm's Swin with `always_partition=True` shifts and partitions windows at every size, as the segmentation
Swin does; at 224 every stage is a multiple of the window, so no padding order question arises.
"""
import argparse
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import save_file

CONFIG = dict(img_size=224, patch_size=4, window_size=7, embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2),
              num_classes=0, always_partition=True, strict_img_size=False)
SUBSAMPLE = (3, 2, 1, 1)  # Spatial stride at which each stage's output is stored.


def fixture_images() -> np.ndarray:
  """The NHWC input the stored outputs belong to; tests regenerate it from the same seed."""
  return np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype(np.float32)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", type=Path, required=True)
  out = parser.parse_args().out
  out.mkdir(parents=True, exist_ok=True)
  torch.manual_seed(0)
  model = timm.models.swin_transformer.SwinTransformer(**CONFIG).eval()
  with torch.no_grad():  # Non-trivial norms and biases, so a swapped or missing parameter shows.
    for name, p in model.named_parameters():
      if p.ndim == 1:
        p.add_(0.2 * torch.randn_like(p))
      if "relative_position_bias_table" in name:
        p.normal_(0, 0.5)
  images = torch.from_numpy(fixture_images().transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    x = model.patch_embed(images)
    stages = {}
    for i, layer in enumerate(model.layers):
      x = layer(x)
      stages[f"stride{4 * 2 ** i}"] = x.numpy()[:, ::SUBSAMPLE[i], ::SUBSAMPLE[i]]  # Keeps the files small.
  weights = {k: p.detach().contiguous() for k, p in model.named_parameters()}  # No buffers: they are derived.
  save_file(weights, str(out / "timm_swin_tiny.safetensors"))
  np.savez_compressed(out / "timm_swin_tiny_outputs.npz", **stages)


if __name__ == "__main__":
  main()
