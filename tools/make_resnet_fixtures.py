r"""Writes the ResNet weight-loading parity fixtures in tests/fixtures/resnet/ from PyTorch reference models.

Needs torch, timm and transformers (never dependencies of the project); run by hand from the repository root:

  python tools/make_resnet_fixtures.py

Two tiny random bottleneck ResNets (bottleneck widths 4-32, outputs 16-128, depths 2,1,2,1; stem 64 for
timm's, whose plain stem is always 64 wide, and 8 for Hugging Face's), with random norm weights and running
statistics (not the defaults), so a swapped or missing statistic shows:
  torchvision.pth      timm's ResNet (torchvision's layout and names: conv1, bn1, layer1.0.downsample.0, fc),
                       a plain state dict written by torch.save, stride in the 3x3 conv
  detectron2.pkl       the same tensors renamed as detectron2's convert-torchvision-to-d2.py does (stem.conv1,
                       res2.0.conv1.norm, res2.0.shortcut, stem.fc), a pickle of numpy arrays under 'model'
  hf/                  a Hugging Face ResNetModel directory (config.json, model.safetensors) with
                       downsample_in_bottleneck=True, so the stride sits in the first 1x1 conv
  reference.npz        NHWC inputs at 64x64 and 45x37 (odd sizes exercise padding and pooling) and each
                       model's res2..res5 outputs, NHWC
  parameter_counts.json  timm's resnet50 and resnet101 without the classifier (BN statistics are buffers,
                       not parameters)
"""
from __future__ import annotations

import argparse
import json
import pickle
import re
from pathlib import Path

import numpy as np
import timm
import torch
from timm.models.resnet import Bottleneck, ResNet
from transformers import ResNetConfig, ResNetModel

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "resnet"
HF_STEM, WIDTHS, DEPTHS = 8, (4, 8, 16, 32), (2, 1, 2, 1)
SIZES = {"64": (64, 64), "45x37": (45, 37)}


def randomize_norms(model: torch.nn.Module, generator: torch.Generator) -> None:
  """Norm weights, biases and running statistics away from their initial values."""
  for module in model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      n = module.num_features
      module.weight.data = 1.0 + 0.3 * torch.randn(n, generator=generator)
      module.bias.data = 0.2 * torch.randn(n, generator=generator)
      module.running_mean.data = 0.3 * torch.randn(n, generator=generator)
      module.running_var.data = 0.5 + torch.rand(n, generator=generator)
      module.num_batches_tracked.fill_(1000)


def to_detectron2(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
  """torchvision names -> detectron2's (its convert-torchvision-to-d2.py rules, classifier included)."""
  renamed = {}
  for key, value in state.items():
    new = key if key.startswith("layer") else "stem." + key
    new = re.sub(r"^layer(\d)", lambda m: f"res{int(m.group(1)) + 1}", new)
    new = re.sub(r"bn(\d)", r"conv\1.norm", new)
    new = new.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
    renamed[new] = value.detach().numpy()
  return renamed


def stage_outputs_timm(model: ResNet, images: torch.Tensor) -> list[np.ndarray]:
  x = model.maxpool(model.act1(model.bn1(model.conv1(images))))
  outputs = []
  for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
    x = layer(x)
    outputs.append(x.numpy().transpose(0, 2, 3, 1))
  return outputs


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", type=Path, default=OUT)
  out = parser.parse_args().out
  (out / "hf").mkdir(parents=True, exist_ok=True)
  generator = torch.Generator().manual_seed(0)
  torch.manual_seed(0)

  tv = ResNet(Bottleneck, list(DEPTHS), num_classes=10, channels=WIDTHS).eval()
  randomize_norms(tv, generator)
  torch.save(tv.state_dict(), out / "torchvision.pth")
  with open(out / "detectron2.pkl", "wb") as f:
    pickle.dump({"model": to_detectron2(tv.state_dict()), "__author__": "torchvision",
                 "matching_heuristics": True}, f)

  config = ResNetConfig(embedding_size=HF_STEM, hidden_sizes=[4 * w for w in WIDTHS], depths=list(DEPTHS),
                        layer_type="bottleneck", downsample_in_bottleneck=True)
  hf = ResNetModel(config).eval()
  randomize_norms(hf, generator)
  hf.save_pretrained(out / "hf", safe_serialization=True)

  reference = {}
  rng = np.random.default_rng(0)
  for name, (h, w) in SIZES.items():
    images = rng.normal(size=(1, h, w, 3)).astype(np.float32)
    reference[f"images_{name}"] = images
    nchw = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
      tv_outputs = stage_outputs_timm(tv, nchw)
      hf_outputs = [x.numpy().transpose(0, 2, 3, 1)
                    for x in hf(nchw, output_hidden_states=True).hidden_states[1:]]
    for stage, (a, b) in enumerate(zip(tv_outputs, hf_outputs)):
      reference[f"torchvision_res{stage + 2}_{name}"] = a
      reference[f"hf_res{stage + 2}_{name}"] = b
  np.savez_compressed(out / "reference.npz", **reference)

  counts = {}
  for variant, timm_name in (("R50", "resnet50"), ("R101", "resnet101")):
    model = timm.create_model(timm_name, pretrained=False)
    counts[variant] = sum(p.numel() for k, p in model.named_parameters() if not k.startswith("fc."))
  (out / "parameter_counts.json").write_text(json.dumps(counts, indent=1) + "\n")


if __name__ == "__main__":
  main()
