r"""Writes the CLIP parity fixtures: tiny random CLIPs in every supported file format and their outputs.

Needs torch, the OpenAI `clip` package, open_clip and transformers (never dependencies of the project); run by
hand from the repository root:

  python tools/make_clip_fixtures.py --out=tests/fixtures/clip

Writes `openai_jit.pt` (TorchScript archive, as OpenAI releases), `open_clip.bin` (a state dict) and
`open_clip/open_clip.safetensors` with its `open_clip_config.json`, a Hugging Face directory `hf/` (a separate
random model with exact GELU), and `outputs.npz` with the inputs (`images` NHWC, `tokens`) and the image, text
and dense (value-path) embeddings the models give for them.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ARCH = dict(embed_dim=16, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
            context_length=16, vocab_size=300, transformer_width=64, transformer_heads=1, transformer_layers=2)


def fixture_inputs():
  """NHWC images and token ids (end of text = the largest id, zero padding) the stored outputs belong to."""
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  tokens = np.zeros((2, 16), np.int64)
  tokens[0, :6] = [298, 17, 5, 88, 140, 299]
  tokens[1, :10] = [298, 3, 250, 9, 9, 61, 7, 200, 13, 299]
  return images, tokens


def _perturb(model: torch.nn.Module) -> None:
  """Non-trivial norms, biases and embeddings, so a swapped or missing parameter shows in the outputs."""
  torch.manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.add_(0.05 * torch.randn_like(p) if p.ndim > 1 else 0.2 * torch.randn_like(p))
      if name.endswith("logit_scale"):
        p.fill_(np.log(50.0))


def _openai_dense(model, images: torch.Tensor) -> torch.Tensor:
  """The value-path dense features, computed with the module's own weights (NLD layout)."""
  v = model.visual
  x = v.conv1(images)
  b, c, h, w = x.shape
  x = x.reshape(b, c, h * w).permute(0, 2, 1)
  x = torch.cat([v.class_embedding.expand(b, 1, c), x], dim=1) + v.positional_embedding
  x = v.ln_pre(x)
  blocks = list(v.transformer.resblocks)
  for block in blocks[:-1]:
    x = block(x.permute(1, 0, 2)).permute(1, 0, 2)
  last = blocks[-1]
  value = F.linear(last.ln_1(x), last.attn.in_proj_weight[2 * c:], last.attn.in_proj_bias[2 * c:])
  x = x + last.attn.out_proj(value)
  x = x + last.mlp(last.ln_2(x))
  return (v.ln_post(x[:, 1:]) @ v.proj).reshape(b, h, w, -1)


def main() -> None:
  import clip.model
  import open_clip
  import transformers
  from safetensors.torch import save_file

  parser = argparse.ArgumentParser()
  parser.add_argument("--out", type=Path, required=True)
  out = parser.parse_args().out
  out.mkdir(parents=True, exist_ok=True)
  images_nhwc, tokens = fixture_inputs()
  images = torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())
  tokens_t = torch.from_numpy(tokens)

  model = clip.model.CLIP(**ARCH).eval()
  _perturb(model)
  with torch.no_grad():
    outputs = {"openai_image": model.encode_image(images).numpy(), "openai_text": model.encode_text(tokens_t).numpy(),
               "openai_dense": _openai_dense(model, images).numpy()}
    traced = torch.jit.trace_module(model, {"encode_image": images, "encode_text": tokens_t})
  torch.jit.save(traced, str(out / "openai_jit.pt"))

  state = {k: v.contiguous() for k, v in model.state_dict().items()}
  oc = open_clip.model.CLIP(
      embed_dim=ARCH["embed_dim"], quick_gelu=True,
      vision_cfg=open_clip.model.CLIPVisionCfg(layers=2, width=64, head_width=64, patch_size=8, image_size=32),
      text_cfg=open_clip.model.CLIPTextCfg(context_length=16, vocab_size=300, width=64, heads=1, layers=2)).eval()
  oc.load_state_dict(state, strict=False)  # open_clip's attn_mask is a non-persistent buffer of its own.
  with torch.no_grad():
    outputs["open_clip_image"] = oc.encode_image(images).numpy()
    outputs["open_clip_text"] = oc.encode_text(tokens_t).numpy()
  torch.save(state, out / "open_clip.bin")
  (out / "open_clip").mkdir(exist_ok=True)
  save_file(state, str(out / "open_clip" / "open_clip.safetensors"))
  (out / "open_clip" / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": True}}) + "\n")

  config = transformers.CLIPConfig(
      projection_dim=16,
      text_config=dict(vocab_size=300, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=2, max_position_embeddings=16, hidden_act="gelu", eos_token_id=2),
      vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                         image_size=32, patch_size=8, hidden_act="gelu"))
  hf = transformers.CLIPModel(config).eval()
  _perturb(hf)
  with torch.no_grad():
    image_features = hf.get_image_features(pixel_values=images)
    text_features = hf.get_text_features(input_ids=tokens_t)
  pooled = lambda o: o if isinstance(o, torch.Tensor) else o.pooler_output
  outputs["hf_image"], outputs["hf_text"] = pooled(image_features).numpy(), pooled(text_features).numpy()
  hf.save_pretrained(out / "hf", safe_serialization=True)
  np.savez_compressed(out / "outputs.npz", images=images_nhwc, tokens=tokens.astype(np.int32), **outputs)


if __name__ == "__main__":
  main()
