"""Hugging Face Mask2Former directories (`config.json` + `model.safetensors` or `pytorch_model.bin`) -> the
`ovseg_jax.models.mask2former.Mask2Former` they describe and its params, read without torch.

Both key layouts are read: the one checkpoints on the Hub use (`attention.self.query`, ...) and the one of
newer transformers releases (`swin.` prefix, `attention.q_proj`, ...), which is renamed to the first. The
backbone (Swin, ResNet or a timm ResNet) is read by `ovseg_jax.weights.mask2former_backbones`. A
`Mask2FormerModel` directory (no class head) gives a model with `num_classes=0`.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import numpy as np

from ovseg_jax.models.mask2former import Mask2Former
from ovseg_jax.models.mask2former_decoder import MaskedAttentionDecoder
from ovseg_jax.models.mask2former_pixel_decoder import MSDeformAttnPixelDecoder
import ovseg_jax.weights.convert as convert
import ovseg_jax.weights.mask2former_backbones as mask2former_backbones
import ovseg_jax.weights.mask2former_detectron2 as mask2former_detectron2
from ovseg_jax.weights.hf_directory import read_hf_directory

_BACKBONE = mask2former_backbones.PREFIX
_PIXEL = "model.pixel_level_module.decoder."
_TRANSFORMER = "model.transformer_module."
_IGNORED = re.compile(  # The loss's class weights, SwinModel's unused final norm, derived buffers.
    r"criterion\.|model\.pixel_level_module\.encoder\.(swin\.)?layernorm\.|.*relative_position_index$"
    r"|.*\.num_batches_tracked$")


def load_mask2former(path: str | Path) -> tuple[Mask2Former, dict[str, Any]]:
  """(module, params) for a Hugging Face Mask2Former directory or a released detectron2 checkpoint file
  (`.pkl`, `.pth`); `module.apply({'params': params}, images)` with NHWC float32 images normalised as the
  checkpoint expects (ImageNet mean/std of RGB pixels for the released Swin models)."""
  path = Path(path)
  if path.is_file():
    config, state = mask2former_detectron2.read_detectron2(path)
    return _build(config, str(path), state, path)
  if not path.is_dir():
    raise FileNotFoundError(f"{path}: no such file or directory; expected a Hugging Face Mask2Former directory "
                            f"with config.json and model.safetensors or pytorch_model.bin, or a detectron2 .pkl checkpoint.")
  config, config_file, state, weights = read_hf_directory(path, "Mask2Former")
  return _build(config, str(config_file), _hub_layout(state, weights), weights)


def _build(config: Mapping[str, Any], config_name: str, state: Mapping[str, np.ndarray],
           path: Path) -> tuple[Mask2Former, dict[str, Any]]:
  num_classes = len(config.get("id2label") or {}) if "class_predictor.weight" in state else 0
  backbone = mask2former_backbones.backbone_reader(config.get("backbone_config") or {}, config_name, state, path)
  module = _module(config, config_name, num_classes, backbone.module)
  convert.check_keys(state, {**backbone.expected, **_expected(module, backbone.channels)}, _IGNORED, path,
                     f"a Mask2Former state dict matching {Path(config_name).name}")
  return module, {"backbone": backbone.read(state, path), **_params(state, module)}


def _hub_layout(obj: Any, path: Path) -> dict[str, np.ndarray]:
  if not isinstance(obj, Mapping) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    raise ValueError(f"{path}: expected a state dict of tensors, found "
                     f"{list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__}.")
  if not any(k.startswith("model.") for k in obj):  # Saved from Mask2FormerModel: no head, no prefix.
    obj = {f"model.{k}": v for k, v in obj.items()}
  state = {}
  for key, value in obj.items():
    if key.startswith(_BACKBONE):
      key = _BACKBONE + mask2former_backbones.hub_key(key.removeprefix(_BACKBONE))
    state[key] = value
  return state


def _module(config: Mapping[str, Any], config_name: str, num_classes: int, encoder: nn.Module) -> Mask2Former:
  expected = {"model_type": ("mask2former", config.get("model_type")),
              "pre_norm": (False, config.get("pre_norm", False)),
              "activation_function": ("relu", config.get("activation_function", "relu")),
              "feature_strides": ([4, 8, 16, 32], list(config.get("feature_strides", [4, 8, 16, 32])))}
  problems = [f"{k} {found!r} (expected {want!r})" for k, (want, found) in expected.items() if want != found]
  if problems:
    raise ValueError(f"{config_name}: not a supported Mask2Former config (post-norm decoder): "
                     f"{'; '.join(problems)}.")
  dropout = float(config.get("dropout", 0.0))
  pixel_decoder = MSDeformAttnPixelDecoder(
      conv_dim=config.get("feature_size", 256), mask_dim=config.get("mask_feature_size", 256),
      num_layers=config.get("encoder_layers", 6), num_heads=config.get("num_attention_heads", 8),
      ffn_dim=config.get("encoder_feedforward_dim", 1024), common_stride=config.get("common_stride", 4),
      dropout_rate=dropout)
  decoder = MaskedAttentionDecoder(
      num_classes=num_classes, num_queries=config.get("num_queries", 100), hidden_dim=config.get("hidden_dim", 256),
      num_heads=config.get("num_attention_heads", 8), ffn_dim=config.get("dim_feedforward", 2048),
      num_layers=config.get("decoder_layers", 10) - 1, mask_dim=config.get("mask_feature_size", 256),
      enforce_input_projection=config.get("enforce_input_projection", False), dropout_rate=dropout)
  return Mask2Former(encoder, pixel_decoder, decoder)


def _fpn_strides(module: Mask2Former) -> list[int]:
  """Strides below the deformable encoder's levels down to the common stride (the FPN step), finest first."""
  p = module.pixel_decoder
  return [s for s in (4, 8, 16, 32)[:-p.num_levels] if s >= p.common_stride]


def _expected(module: Mask2Former, channels: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
  """Shape of every key of the Hugging Face checkpoint of `module` but the backbone's, whose stages have
  `channels` (strides 4 to 32)."""
  p, d = module.pixel_decoder, module.decoder
  shapes: dict[str, tuple[int, ...]] = {}
  linear = lambda key, out, inp, bias=True: shapes.update(
      {f"{key}.weight": (out, inp), **({f"{key}.bias": (out,)} if bias else {})})
  norm = lambda key, n: shapes.update({f"{key}.weight": (n,), f"{key}.bias": (n,)})
  c = p.conv_dim
  for i, stride_channels in enumerate(channels[::-1][:p.num_levels]):
    shapes[f"{_PIXEL}input_projections.{i}.0.weight"] = (c, stride_channels, 1, 1)
    shapes[f"{_PIXEL}input_projections.{i}.0.bias"] = (c,)
    norm(f"{_PIXEL}input_projections.{i}.1", c)
  shapes[f"{_PIXEL}level_embed"] = (p.num_levels, c)
  points = p.num_heads * p.num_levels * p.num_points
  for i in range(p.num_layers):
    k = f"{_PIXEL}encoder.layers.{i}"
    linear(f"{k}.self_attn.sampling_offsets", 2 * points, c)
    linear(f"{k}.self_attn.attention_weights", points, c)
    linear(f"{k}.self_attn.value_proj", c, c)
    linear(f"{k}.self_attn.output_proj", c, c)
    norm(f"{k}.self_attn_layer_norm", c)
    linear(f"{k}.fc1", p.ffn_dim, c)
    linear(f"{k}.fc2", c, p.ffn_dim)
    norm(f"{k}.final_layer_norm", c)
  for n, stride in enumerate(_fpn_strides(module), start=1):
    shapes[f"{_PIXEL}adapter_{n}.0.weight"] = (c, channels[(4, 8, 16, 32).index(stride)], 1, 1)
    norm(f"{_PIXEL}adapter_{n}.1", c)
    shapes[f"{_PIXEL}layer_{n}.0.weight"] = (c, c, 3, 3)
    norm(f"{_PIXEL}layer_{n}.1", c)
  shapes[f"{_PIXEL}mask_projection.weight"] = (p.mask_dim, c, 1, 1)
  shapes[f"{_PIXEL}mask_projection.bias"] = (p.mask_dim,)
  h, t = d.hidden_dim, _TRANSFORMER
  for name in ("queries_embedder", "queries_features"):
    shapes[f"{t}{name}.weight"] = (d.num_queries, h)
  shapes[f"{t}level_embed.weight"] = (p.num_levels, h)
  if c != h or d.enforce_input_projection:
    for i in range(p.num_levels):
      shapes[f"{t}input_projections.{i}.weight"] = (h, c, 1, 1)
      shapes[f"{t}input_projections.{i}.bias"] = (h,)
  norm(f"{t}decoder.layernorm", h)
  for i in range(d.num_layers):
    k = f"{t}decoder.layers.{i}"
    shapes[f"{k}.cross_attn.in_proj_weight"] = (3 * h, h)
    shapes[f"{k}.cross_attn.in_proj_bias"] = (3 * h,)
    linear(f"{k}.cross_attn.out_proj", h, h)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
      linear(f"{k}.self_attn.{name}", h, h)
    for name in ("cross_attn_layer_norm", "self_attn_layer_norm", "final_layer_norm"):
      norm(f"{k}.{name}", h)
    linear(f"{k}.fc1", d.ffn_dim, h)
    linear(f"{k}.fc2", h, d.ffn_dim)
  for j in range(3):
    linear(f"{t}decoder.mask_predictor.mask_embedder.{j}.0", d.mask_dim if j == 2 else h, h)
  if d.num_classes:
    linear("class_predictor", d.num_classes + 1, h)
  return shapes


def _conv_norm(state: Mapping[str, np.ndarray], key: str, bias: bool) -> dict[str, Any]:
  """torch Sequential(Conv2d, GroupNorm) -> `ConvNorm` params."""
  conv = {"kernel": convert.f32(state[f"{key}.0.weight"].transpose(2, 3, 1, 0))}
  if bias:
    conv["bias"] = convert.f32(state[f"{key}.0.bias"])
  return {"conv": conv, "norm": convert.layer_norm(state, f"{key}.1")}


def _params(state: Mapping[str, np.ndarray], module: Mask2Former) -> dict[str, Any]:
  """The pixel decoder's and the transformer decoder's params."""
  p, d = module.pixel_decoder, module.decoder
  pixel: dict[str, Any] = {"level_embed": convert.f32(state[f"{_PIXEL}level_embed"]),
                           "mask_features": convert.conv(state, f"{_PIXEL}mask_projection")}
  for i in range(p.num_levels):
    pixel[f"input_proj_{i}"] = _conv_norm(state, f"{_PIXEL}input_projections.{i}", bias=True)
  for i in range(p.num_layers):
    k = f"{_PIXEL}encoder.layers.{i}"
    pixel[f"encoder_layers_{i}"] = {
        "self_attn": {n: convert.dense(state, f"{k}.self_attn.{n}")
                      for n in ("sampling_offsets", "attention_weights", "value_proj", "output_proj")},
        **{n: convert.layer_norm(state, f"{k}.{n}") for n in ("self_attn_layer_norm", "final_layer_norm")},
        "fc1": convert.dense(state, f"{k}.fc1"), "fc2": convert.dense(state, f"{k}.fc2")}
  for n, stride in enumerate(_fpn_strides(module), start=1):
    pixel[f"lateral_{stride}"] = _conv_norm(state, f"{_PIXEL}adapter_{n}", bias=False)
    pixel[f"output_{stride}"] = _conv_norm(state, f"{_PIXEL}layer_{n}", bias=False)
  t, h = _TRANSFORMER, d.hidden_dim
  decoder: dict[str, Any] = {
      "query_embed": convert.f32(state[f"{t}queries_embedder.weight"]),
      "query_feat": convert.f32(state[f"{t}queries_features.weight"]),
      "level_embed": convert.f32(state[f"{t}level_embed.weight"]),
      "decoder_norm": convert.layer_norm(state, f"{t}decoder.layernorm"),
      "mask_embed": {f"dense_{j}": convert.dense(state, f"{t}decoder.mask_predictor.mask_embedder.{j}.0")
                     for j in range(3)}}
  for i in range(p.num_levels):
    if f"{t}input_projections.{i}.weight" in state:
      decoder[f"input_proj_{i}"] = convert.conv(state, f"{t}input_projections.{i}")
  for i in range(d.num_layers):
    k = f"{t}decoder.layers.{i}"
    w, bias = state[f"{k}.cross_attn.in_proj_weight"], state[f"{k}.cross_attn.in_proj_bias"]
    cross = {f"{n}_proj": {"kernel": convert.f32(w[j * h:(j + 1) * h].T),
                           "bias": convert.f32(bias[j * h:(j + 1) * h])} for j, n in enumerate("qkv")}
    decoder[f"layers_{i}"] = {
        "cross_attn": {**cross, "out_proj": convert.dense(state, f"{k}.cross_attn.out_proj")},
        "self_attn": {n: convert.dense(state, f"{k}.self_attn.{n}")
                      for n in ("q_proj", "k_proj", "v_proj", "out_proj")},
        **{n: convert.layer_norm(state, f"{k}.{n}")
           for n in ("cross_attn_layer_norm", "self_attn_layer_norm", "final_layer_norm")},
        "ffn": {"dense_0": convert.dense(state, f"{k}.fc1"), "dense_1": convert.dense(state, f"{k}.fc2")}}
  if d.num_classes:
    decoder["class_embed"] = convert.dense(state, "class_predictor")
  return {"pixel_decoder": pixel, "decoder": decoder}
