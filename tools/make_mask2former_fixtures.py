r"""Writes the Mask2Former parity fixtures: a tiny random Hugging Face `Mask2FormerForUniversalSegmentation`
saved as a model directory, its outputs on random images, and (Swin only) `F.grid_sample` / multi-scale
deformable attention on random inputs.

Needs torch and transformers (never dependencies of the project); run by hand from the repository root:

  python tools/make_mask2former_fixtures.py --out=tests/fixtures/mask2former
  python tools/make_mask2former_fixtures.py --out=tests/fixtures/mask2former --backbone=resnet

The ResNet-backed model is written to hf_resnet/ and reference_resnet.npz beside the Swin one.

The image is not square (64x96) so that any swap of height and width shows; the Swin stages (16x24 ... 2x3
tokens, window 4) exercise shifted windows, padding and windows larger than the map.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, ResNetConfig, SwinConfig
from transformers.models.mask2former import modeling_mask2former

IMAGE_HW = (64, 96)
SWIN = dict(image_size=64, patch_size=4, embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 1, 2, 2], window_size=4,
            drop_path_rate=0.0, out_features=["stage1", "stage2", "stage3", "stage4"])
# Two blocks in res3 so that a block without a projected shortcut is covered.
RESNET = dict(embedding_size=8, hidden_sizes=[16, 32, 48, 64], depths=[1, 2, 1, 1],
              out_features=["stage1", "stage2", "stage3", "stage4"])
MASK2FORMER = dict(feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=48,
                   dim_feedforward=64, encoder_layers=2, decoder_layers=4, num_queries=8, num_labels=5,
                   num_attention_heads=8)
MIN_MARGIN = 1e-3


def randomize(model: torch.nn.Module) -> None:
  """Non-trivial norms, biases and zero-initialised weights, so a swapped or missing parameter shows; a wider
  mask MLP, so that the attention masks neither keep nor drop everything."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "relative_position_bias_table" in name:
        p.normal_(0, 0.5)
      elif "mask_embedder" in name and p.ndim == 2:  # Masks that differ between queries and pixels.
        p.normal_(0, 0.5)
      elif p.ndim == 1:
        p.add_(0.2 * torch.randn_like(p))
      elif float(p.std()) == 0.0:  # Deformable attention's offset and weight projections start at zero.
        p.normal_(0, 0.1)
    for name, b in model.named_buffers():  # Batch norm statistics of a ResNet backbone.
      if name.endswith("running_mean"):
        b.normal_(0, 0.2)
      elif name.endswith("running_var"):
        b.uniform_(0.5, 1.5)


def attention_mask_statistics(result) -> tuple[float, float]:
  """(smallest |mask logit| where the next layers' attention masks are decided, smallest fraction of pixels
  masked out in one of those masks). Parity needs decisions well above float rounding and masks that
  actually mask."""
  sizes = [feature.shape[-2:] for feature in result.pixel_decoder_hidden_states]
  margins, masked = [], []
  for i, aux in enumerate(result.auxiliary_logits):
    resized = F.interpolate(aux["masks_queries_logits"], size=sizes[i % len(sizes)], mode="bilinear",
                            align_corners=False)
    margins.append(float(resized.abs().min()))
    fraction = float((resized < 0).float().mean())
    masked.append(min(fraction, 1 - fraction))
  return min(margins), min(masked)


def deformable_attention_case(rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Random inputs of the sampling core and its output; locations reach past [0, 1] to test zero padding."""
  shapes = [(3, 5), (6, 4), (2, 2)]
  value = rng.normal(size=(2, sum(h * w for h, w in shapes), 2, 3)).astype(np.float32)
  locations = rng.uniform(-0.2, 1.2, size=(2, 7, 2, len(shapes), 4, 2)).astype(np.float32)
  weights = rng.uniform(size=(2, 7, 2, len(shapes), 4)).astype(np.float32)
  out = modeling_mask2former.multi_scale_deformable_attention(
      torch.from_numpy(value), shapes, torch.from_numpy(locations), torch.from_numpy(weights))
  return {"msda_value": value, "msda_shapes": np.asarray(shapes), "msda_locations": locations,
          "msda_weights": weights, "msda_output": out.numpy()}


def grid_sample_case(rng: np.random.Generator) -> dict[str, np.ndarray]:
  """One map [H, W, C] and points [N, P, 2] in (x, y), including exact pixel centres and far outside."""
  image = rng.normal(size=(5, 7, 3)).astype(np.float32)
  grid = rng.uniform(-1.4, 1.4, size=(20, 6, 2)).astype(np.float32)
  grid[0, :, 0] = (2 * np.arange(6) + 1) / 7 - 1  # Pixel centres of row 0.
  grid[0, :, 1] = 1 / 5 - 1
  out = F.grid_sample(torch.from_numpy(image.transpose(2, 0, 1))[None], torch.from_numpy(grid)[None],
                      mode="bilinear", padding_mode="zeros", align_corners=False)
  return {"grid_image": image, "grid_points": grid, "grid_output": out[0].numpy().transpose(1, 2, 0)}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", type=Path, required=True)
  parser.add_argument("--backbone", choices=("swin", "resnet"), default="swin")
  args = parser.parse_args()
  out, swin = args.out, args.backbone == "swin"
  out.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, *IMAGE_HW, 3)).astype(np.float32)
  pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  backbone = SwinConfig(**SWIN) if swin else ResNetConfig(**RESNET)
  config = Mask2FormerConfig(backbone_config=backbone, output_auxiliary_logits=True, **MASK2FORMER)
  for seed in range(1000):  # The first model whose attention masks mask, decided well above float noise.
    torch.manual_seed(seed)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    randomize(model)
    with torch.no_grad():
      result = model(pixels, output_hidden_states=True)
    margin, masked = attention_mask_statistics(result)
    if margin > MIN_MARGIN and masked > 0.2:
      break
  print(f"seed {seed}: smallest |mask logit| at an attention-mask threshold {margin:.2g}, at least "
        f"{masked:.0%} of the pixels masked and kept in each attention mask")
  suffix = "" if swin else "_resnet"
  model.save_pretrained(out / f"hf{suffix}")
  nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)
  reference = {"images": images, "class_queries_logits": result.class_queries_logits.numpy(),
               "masks_queries_logits": result.masks_queries_logits.numpy(),
               "mask_features": nhwc(result.pixel_decoder_last_hidden_state)}
  for i, feature in enumerate(result.encoder_hidden_states):
    reference[f"backbone_stride{4 * 2 ** i}"] = nhwc(feature)
  for i, feature in enumerate(result.pixel_decoder_hidden_states):
    reference[f"multi_scale_{i}"] = nhwc(feature)
  for i, aux in enumerate(result.auxiliary_logits):
    reference[f"aux_{i}_class_queries_logits"] = aux["class_queries_logits"].numpy()
    reference[f"aux_{i}_masks_queries_logits"] = aux["masks_queries_logits"].numpy()
  if swin:
    reference.update(deformable_attention_case(rng))
    reference.update(grid_sample_case(rng))
  np.savez_compressed(out / f"reference{suffix}.npz", **reference)
  print(json.dumps({k: list(v.shape) for k, v in reference.items()}))


if __name__ == "__main__":
  main()
