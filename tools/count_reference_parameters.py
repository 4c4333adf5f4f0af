r"""Writes tests/fixtures/parameter_counts.json: parameter counts of the PyTorch reference backbones (timm),
reduced to the parts the Flax backbones have, for the parameter-count parity tests.

Needs torch and timm (never dependencies of the project); run by hand from the repository root:

  python tools/count_reference_parameters.py --out=tests/fixtures/parameter_counts.json
"""
import argparse
import json
from pathlib import Path

import timm

SWIN = {"Swin-T": "swin_tiny_patch4_window7_224", "Swin-S": "swin_small_patch4_window7_224",
        "Swin-B": "swin_base_patch4_window7_224"}
# name -> (timm model, overrides); ViT-L/14 as timm's ViT-L with 14-pixel patches (its CLIP variant has no
# patch-embedding bias and a pre-norm, which the supervised-style backbone here does not share).
VIT = {"S/16": ("vit_small_patch16_224", {}), "B/16": ("vit_base_patch16_224", {}),
       "L/14": ("vit_large_patch16_224", {"patch_size": 14})}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", type=Path, required=True)
  out = parser.parse_args().out
  counts = {}
  for name, timm_name in SWIN.items():
    model = timm.create_model(timm_name, pretrained=False, num_classes=0)
    # The segmentation backbone drops the classifier's final norm and adds one LayerNorm per stage output.
    n = sum(p.numel() for k, p in model.named_parameters() if not k.startswith("norm."))
    counts[name] = n + sum(2 * model.embed_dim * 2 ** i for i in range(4))
  for name, (timm_name, overrides) in VIT.items():
    model = timm.create_model(timm_name, pretrained=False, num_classes=0, **overrides)
    # No class token (nor its position embedding) in the Flax ViT backbone.
    n = sum(p.numel() for k, p in model.named_parameters() if k != "cls_token")
    counts[f"ViT-{name}"] = n - model.embed_dim  # The class token's position.
  out.write_text(json.dumps(counts, indent=1) + "\n")


if __name__ == "__main__":
  main()
