"""Writes the DINO weight-loading parity fixtures in tests/fixtures/dino/ from PyTorch reference models.

Needs torch and transformers, which the library and its tests never import; run by hand from the repo root:

  pip install torch==2.13.0 transformers
  python tools/make_dino_fixtures.py

A tiny DINO ViT (patch 8, width 32, depth 2, 4 heads, 32x32 images) with random weights is written as
  dino_vit.pth                  plain state dict (torch.save), float32
  dino_full_checkpoint.pth      DINO training-checkpoint layout: {'teacher': {'backbone.*', 'head.*'}, ...},
                                bfloat16 (weights are rounded to bfloat16 first, so every file holds the
                                same values)
  hf/                           Hugging Face ViTModel directory (config.json, model.safetensors), eps 1e-12
  hf_bin/                       the same as pytorch_model.bin, with q/k/v stored as views of one fused
                                tensor and transposed (non-contiguous) MLP weights, to exercise offsets
                                and strides
  reference.npz                 inputs and reference outputs (patch tokens and last-block keys) at 32x32
                                and 40x48 (position-embedding interpolation), and bicubic resizes.
"""
from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import ViTConfig, ViTModel

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "dino"
PATCH, WIDTH, DEPTH, HEADS, MLP, IMAGE = 8, 32, 2, 4, 128, 32


# DINO's VisionTransformer (facebookresearch/dino, vision_transformer.py), inference path only.
class Attention(nn.Module):

  def __init__(self, dim, num_heads):
    super().__init__()
    self.num_heads = num_heads
    self.scale = (dim // num_heads) ** -0.5
    self.qkv = nn.Linear(dim, dim * 3, bias=True)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    self.keys = k.transpose(1, 2).reshape(b, n, c)  # What DINO-feature pseudo masks read.
    attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):

  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):

  def __init__(self, dim, num_heads, hidden):
    super().__init__()
    self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, num_heads)
    self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, hidden)

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):

  def __init__(self, patch_size, dim):
    super().__init__()
    self.patch_size = patch_size
    self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):

  def __init__(self, img_size, patch_size, dim, depth, num_heads, hidden):
    super().__init__()
    self.patch_embed = PatchEmbed(patch_size, dim)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
    self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (img_size // patch_size) ** 2, dim))
    self.blocks = nn.ModuleList([Block(dim, num_heads, hidden) for _ in range(depth)])
    self.norm = nn.LayerNorm(dim, eps=1e-6)
    self.head = nn.Identity()

  def interpolate_pos_encoding(self, x, w, h):
    npatch = x.shape[1] - 1
    n = self.pos_embed.shape[1] - 1
    if npatch == n and w == h:
      return self.pos_embed
    class_pos_embed = self.pos_embed[:, 0]
    patch_pos_embed = self.pos_embed[:, 1:]
    dim = x.shape[-1]
    w0 = w // self.patch_embed.patch_size
    h0 = h // self.patch_embed.patch_size
    w0, h0 = w0 + 0.1, h0 + 0.1
    patch_pos_embed = nn.functional.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(n)), int(math.sqrt(n)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)), mode="bicubic")
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)

  def prepare_tokens(self, x):
    b, _, w, h = x.shape
    x = self.patch_embed(x)
    x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
    return x + self.interpolate_pos_encoding(x, w, h)

  def get_intermediate_layers(self, x, n=1):
    x = self.prepare_tokens(x)
    output = []
    for i, blk in enumerate(self.blocks):
      x = blk(x)
      if len(self.blocks) - i <= n:
        output.append(self.norm(x))
    return output


def randomize(model: nn.Module, generator: torch.Generator) -> None:
  """Weights far from their initialisation (so norms, biases and position embeddings all matter),
  rounded to bfloat16 so that the bfloat16 file holds exactly the same values."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=generator)
      if name.endswith("weight") and "norm" in name:
        value = 1.0 + 0.2 * noise
      elif p.ndim >= 2 and not name.endswith(("pos_embed", "cls_token")):
        value = noise / math.sqrt(math.prod(p.shape[1:]))
      else:
        value = 0.5 * noise
      p.copy_(value.bfloat16().float())


def to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
  """DINO state dict -> Hugging Face ViTModel state dict (query/key/value as views of DINO's fused qkv)."""
  out = {"embeddings.cls_token": state["cls_token"], "embeddings.position_embeddings": state["pos_embed"],
         "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"]}
  for s in ("weight", "bias"):
    out[f"embeddings.patch_embeddings.projection.{s}"] = state[f"patch_embed.proj.{s}"]
    for i in range(DEPTH):
      hf, dino = f"encoder.layer.{i}.", f"blocks.{i}."
      for j, name in enumerate(("query", "key", "value")):
        out[hf + f"attention.attention.{name}.{s}"] = state[dino + f"attn.qkv.{s}"][j * WIDTH:(j + 1) * WIDTH]
      out[hf + f"attention.output.dense.{s}"] = state[dino + f"attn.proj.{s}"]
      out[hf + f"layernorm_before.{s}"] = state[dino + f"norm1.{s}"]
      out[hf + f"layernorm_after.{s}"] = state[dino + f"norm2.{s}"]
      out[hf + f"intermediate.dense.{s}"] = state[dino + f"mlp.fc1.{s}"]
      out[hf + f"output.dense.{s}"] = state[dino + f"mlp.fc2.{s}"]
  return out


def dino_outputs(model: VisionTransformer, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  with torch.no_grad():
    tokens = model.get_intermediate_layers(torch.from_numpy(images).permute(0, 3, 1, 2))[0][:, 1:]
  return tokens.numpy(), model.blocks[-1].attn.keys[:, 1:].numpy()


def hf_outputs(model: ViTModel, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  keys = []
  hook = model.layers[-1].attention.k_proj.register_forward_hook(lambda m, i, o: keys.append(o))
  with torch.no_grad():
    out = model(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2), interpolate_pos_encoding=True)
  hook.remove()
  return out.last_hidden_state[:, 1:].numpy(), keys[0][:, 1:].numpy()


def main() -> None:
  generator = torch.Generator().manual_seed(0)
  model = VisionTransformer(IMAGE, PATCH, WIDTH, DEPTH, HEADS, MLP).eval()
  randomize(model, generator)
  state = model.state_dict()
  OUT.mkdir(parents=True, exist_ok=True)
  torch.save(state, OUT / "dino_vit.pth")

  head = {"head.mlp.0.weight": torch.randn(16, WIDTH, generator=generator),
          "head.last_layer.weight_g": torch.ones(8, 1)}  # DINO's projection head, which loading skips.
  teacher = {f"backbone.{k}": v.bfloat16() for k, v in state.items()}
  teacher |= {k: v.bfloat16() for k, v in head.items()}
  torch.save({"teacher": teacher, "epoch": 100, "args": argparse.Namespace(arch="vit_tiny", patch_size=PATCH)},
             OUT / "dino_full_checkpoint.pth")

  config = ViTConfig(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                     intermediate_size=MLP, image_size=IMAGE, patch_size=PATCH, layer_norm_eps=1e-12,
                     qkv_bias=True, hidden_act="gelu")
  hf_state = to_hf(state)
  for i in range(DEPTH):  # Stored transposed, so the file's strides are not row-major.
    name = f"encoder.layer.{i}.intermediate.dense.weight"
    hf_state[name] = hf_state[name].t().contiguous().t()
  pooler = ViTModel(config).pooler.state_dict()
  for name in ("hf", "hf_bin"):
    shutil.rmtree(OUT / name, ignore_errors=True)
  config.save_pretrained(OUT / "hf_bin")
  torch.save(hf_state | {f"pooler.{k}": v for k, v in pooler.items()}, OUT / "hf_bin" / "pytorch_model.bin")
  # transformers' own loader validates the key map: nothing may be missing or left over.
  hf, info = ViTModel.from_pretrained(OUT / "hf_bin", output_loading_info=True)
  assert not any(info.values()), info
  hf.eval().save_pretrained(OUT / "hf")

  rng = np.random.default_rng(0)
  arrays = {"images_32": rng.standard_normal((2, 32, 32, 3), np.float32),
            "images_40x48": rng.standard_normal((2, 40, 48, 3), np.float32)}
  for res in ("32", "40x48"):
    arrays[f"dino_tokens_{res}"], arrays[f"dino_keys_{res}"] = dino_outputs(model, arrays[f"images_{res}"])
    arrays[f"hf_tokens_{res}"], arrays[f"hf_keys_{res}"] = hf_outputs(hf, arrays[f"images_{res}"])
  grid = rng.standard_normal((5, 6))
  arrays["bicubic_grid"] = grid
  arrays["bicubic_scaled"] = nn.functional.interpolate(  # DINO-style: output 7x3, positions from the factor.
      torch.from_numpy(grid)[None, None], scale_factor=(7.1 / 5, 3.1 / 6), mode="bicubic")[0, 0].numpy()
  arrays["bicubic_sized"] = nn.functional.interpolate(
      torch.from_numpy(grid)[None, None], size=(9, 11), mode="bicubic", align_corners=False)[0, 0].numpy()
  np.savez(OUT / "reference.npz", **arrays)
  for path in sorted(OUT.rglob("*")):
    if path.is_file():
      print(f"{path.relative_to(OUT)}: {path.stat().st_size / 1024:.1f} KiB")


if __name__ == "__main__":
  main()
