"""Writes the SAM image-encoder parity fixtures in tests/fixtures/sam/ from PyTorch reference models.

Needs torch, segment-anything and transformers, which the library and its tests never import; run by hand
from the repo root:

  pip install torch==2.13.0 transformers segment-anything
  python tools/make_sam_fixtures.py

A tiny `segment_anything.modeling.ImageEncoderViT` (96x96 images, patch 8 -> a 12x12 grid, width 32, depth 4,
2 heads, window 5 so windows are padded, global blocks 1 and 3, relative positions, a 16-channel neck) gets
random weights, position embeddings and relative-position tables included (SAM initialises those to zero).
It is written as
  sam_vit_tiny.pth      Meta's layout: the whole SAM state dict (`image_encoder.*` plus a few prompt-encoder
                        and mask-decoder tensors), float32
  hf/                   a Hugging Face SamModel directory (config.json, model.safetensors) holding the same
                        encoder weights and a tiny random prompt encoder and mask decoder
  hf_bin/               the same as pytorch_model.bin
  reference.npz         inputs and outputs (every block's output and the neck's, NHWC) at the native 96x96
                        (Meta's and Hugging Face's models, checked here to agree) and at 80x112, where the
                        position embedding is resized bicubically as EBSeg does and SAM's global blocks
                        resize their relative-position tables linearly; the resized position embedding and
                        a linear resize of a table on their own.
"""
from __future__ import annotations

import re
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT
from transformers import SamConfig, SamModel

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "sam"
IMAGE, PATCH, WIDTH, DEPTH, HEADS, WINDOW, GLOBAL, NECK = 96, 8, 32, 4, 2, 5, (1, 3), 16
OTHER_SIZE = (80, 112)  # A 10x14 grid: no padding along rows, padding along columns.


def build_meta_encoder() -> ImageEncoderViT:
  encoder = ImageEncoderViT(img_size=IMAGE, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS,
                            mlp_ratio=4, out_chans=NECK, qkv_bias=True,
                            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                            window_size=WINDOW, global_attn_indexes=GLOBAL)
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, param in encoder.named_parameters():
      noise = torch.randn(param.shape, generator=generator)
      is_norm_scale = re.search(r"norm\d?\.weight$|neck\.[13]\.weight$", name)
      param.copy_(1.0 + 0.1 * noise if is_norm_scale else 0.3 * noise if "pos" in name else 0.1 * noise)
  return encoder.eval()


def hf_name(meta_key: str) -> str:
  """segment_anything image-encoder key -> Hugging Face SamModel key."""
  key = meta_key.replace("patch_embed.proj.", "patch_embed.projection.")
  key = re.sub(r"^blocks\.(\d+)\.norm([12])\.", r"layers.\1.layer_norm\2.", key)
  key = re.sub(r"^blocks\.", "layers.", key)
  for index, name in enumerate(("conv1", "layer_norm1", "conv2", "layer_norm2")):
    key = key.replace(f"neck.{index}.", f"neck.{name}.")
  return "vision_encoder." + key


def build_hf_model(encoder: ImageEncoderViT) -> SamModel:
  config = SamConfig(
      vision_config=dict(hidden_size=WIDTH, output_channels=NECK, num_hidden_layers=DEPTH,
                         num_attention_heads=HEADS, image_size=IMAGE, patch_size=PATCH, window_size=WINDOW,
                         global_attn_indexes=list(GLOBAL), mlp_dim=4 * WIDTH),
      prompt_encoder_config=dict(hidden_size=NECK, image_size=IMAGE, patch_size=PATCH, mask_input_channels=4),
      mask_decoder_config=dict(hidden_size=NECK, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=16))
  model = SamModel(config).eval()
  generator = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for param in model.parameters():
      param.copy_(0.1 * torch.randn(param.shape, generator=generator))
  state = {hf_name(k): v for k, v in encoder.state_dict().items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  assert not unexpected and not [k for k in missing if k.startswith("vision_encoder.")], (missing, unexpected)
  return model


def meta_outputs(encoder: ImageEncoderViT, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
  """Every block's output and the neck's (NCHW) from the module's own forward, via hooks."""
  hidden = []
  hooks = [block.register_forward_hook(lambda m, i, o: hidden.append(o)) for block in encoder.blocks]
  embeddings = encoder(images)
  for hook in hooks:
    hook.remove()
  return hidden, embeddings


def ebseg_outputs(encoder: ImageEncoderViT, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
  """The encoder run on another input size as EBSeg's ImageEncoderViT.forward does: the position
  embedding resized bicubically (align_corners=False) to the token grid; the neck kept."""
  x = encoder.patch_embed(images)
  pos = F.interpolate(encoder.pos_embed.permute(0, 3, 1, 2), size=x.shape[1:3], mode="bicubic",
                      align_corners=False).permute(0, 2, 3, 1)
  x = x + pos
  hidden = []
  for block in encoder.blocks:
    x = block(x)
    hidden.append(x)
  return hidden, encoder.neck(x.permute(0, 3, 1, 2))


def nhwc(x: torch.Tensor) -> np.ndarray:
  return x.permute(0, 2, 3, 1).numpy()


def main() -> None:
  torch.manual_seed(0)
  encoder = build_meta_encoder()
  model = build_hf_model(encoder)
  # Inputs are float16 values (stored as such: exact) to keep the fixture small.
  images = torch.randn(2, 3, IMAGE, IMAGE).half().float()
  other = torch.randn(1, 3, *OTHER_SIZE).half().float()
  with torch.no_grad():
    hidden, embeddings = meta_outputs(encoder, images)
    hf = model.vision_encoder(images, output_hidden_states=True)
    hf_hidden = hf.hidden_states[-DEPTH:]
    error = max([(hf.last_hidden_state - embeddings).abs().max().item()]
                + [(a - b).abs().max().item() for a, b in zip(hf_hidden, hidden)])
    assert len(hf_hidden) == DEPTH and error < 1e-5, f"segment_anything and transformers disagree: {error}"
    other_hidden, other_embeddings = ebseg_outputs(encoder, other)
    grid = (OTHER_SIZE[0] // PATCH, OTHER_SIZE[1] // PATCH)
    pos_resized = F.interpolate(encoder.pos_embed.permute(0, 3, 1, 2), size=grid, mode="bicubic",
                                align_corners=False).permute(0, 2, 3, 1)
    table = encoder.blocks[GLOBAL[0]].attn.rel_pos_h
    table_resized = F.interpolate(table.T[None], size=2 * grid[1] - 1, mode="linear")[0].T

  shutil.rmtree(OUT, ignore_errors=True)
  OUT.mkdir(parents=True)
  sam_state = {f"image_encoder.{k}": v for k, v in encoder.state_dict().items()}
  sam_state.update({"prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": torch.randn(2, NECK // 2),
                    "prompt_encoder.no_mask_embed.weight": torch.randn(1, NECK),
                    "mask_decoder.iou_token.weight": torch.randn(1, NECK)})
  torch.save(sam_state, OUT / "sam_vit_tiny.pth")
  model.save_pretrained(OUT / "hf")
  (OUT / "hf_bin").mkdir()
  shutil.copy(OUT / "hf" / "config.json", OUT / "hf_bin" / "config.json")
  torch.save(model.state_dict(), OUT / "hf_bin" / "pytorch_model.bin")
  np.savez_compressed(
      OUT / "reference.npz",
      images=nhwc(images).astype(np.float16), images_other=nhwc(other).astype(np.float16),
      hidden_states=np.stack([h.numpy() for h in hidden]), image_embeddings=nhwc(embeddings),
      hidden_states_other=np.stack([h.numpy() for h in other_hidden]),
      image_embeddings_other=nhwc(other_embeddings), pos_embed_resized=pos_resized.numpy(),
      rel_pos_table=table.detach().numpy(), rel_pos_table_resized=table_resized.numpy())
  sizes = {p.relative_to(OUT): p.stat().st_size for p in sorted(OUT.rglob("*")) if p.is_file()}
  for name, size in sizes.items():
    print(f"{name}: {size / 1e3:.0f} kB")
  print(f"total {sum(sizes.values()) / 1e6:.2f} MB; transformers vs segment_anything max error {error:.2e}")


if __name__ == "__main__":
  main()
