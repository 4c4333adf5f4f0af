"""Released Mask2Former checkpoints (detectron2's `model_final_*.pkl`, or `.pth` files saved by its trainer)
-> the Hugging Face config and key layout that `ovseg_jax.weights.mask2former` reads.

The checkpoint has no config: the architecture is read from the tensor shapes (the transformer's head count
from the deformable attention's sampling offsets: 3 levels x 4 points x 2 coordinates per head, as
detectron2 builds it; the decoder shares that head count). The backbone is Swin or detectron2's ResNet; the
released R50/R101 models put the stride in the 3x3 conv (RESNETS.STRIDE_IN_1X1 False).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

import ovseg_jax.weights.pickle_files as pickle_files
import ovseg_jax.weights.resnet as resnet
import ovseg_jax.weights.torch_files as torch_files

_PIXEL, _PREDICTOR = "sem_seg_head.pixel_decoder.", "sem_seg_head.predictor."
_ENCODER = "model.pixel_level_module.encoder."
_STAGES = ["stage1", "stage2", "stage3", "stage4"]
# (detectron2 pattern, Hugging Face name) for everything but the backbone and the fused self-attention.
_RENAMES = [(re.compile(p), r) for p, r in [
    (rf"^{_PIXEL}input_proj\.", "model.pixel_level_module.decoder.input_projections."),
    (rf"^{_PIXEL}transformer\.level_embed$", "model.pixel_level_module.decoder.level_embed"),
    (rf"^{_PIXEL}transformer\.encoder\.layers\.(\d+)\.norm1\.", r"model.pixel_level_module.decoder.encoder.layers.\1."
                                                                 "self_attn_layer_norm."),
    (rf"^{_PIXEL}transformer\.encoder\.layers\.(\d+)\.norm2\.", r"model.pixel_level_module.decoder.encoder.layers.\1."
                                                                 "final_layer_norm."),
    (rf"^{_PIXEL}transformer\.encoder\.layers\.(\d+)\.linear(\d)\.",
     r"model.pixel_level_module.decoder.encoder.layers.\1.fc\2."),
    (rf"^{_PIXEL}transformer\.encoder\.layers\.(\d+)\.self_attn\.",
     r"model.pixel_level_module.decoder.encoder.layers.\1.self_attn."),
    (rf"^{_PIXEL}(adapter|layer)_(\d+)\.weight$", r"model.pixel_level_module.decoder.\1_\2.0.weight"),
    (rf"^{_PIXEL}(adapter|layer)_(\d+)\.norm\.", r"model.pixel_level_module.decoder.\1_\2.1."),
    (rf"^{_PIXEL}mask_features\.", "model.pixel_level_module.decoder.mask_projection."),
    (rf"^{_PREDICTOR}query_feat\.", "model.transformer_module.queries_features."),
    (rf"^{_PREDICTOR}query_embed\.", "model.transformer_module.queries_embedder."),
    (rf"^{_PREDICTOR}level_embed\.", "model.transformer_module.level_embed."),
    (rf"^{_PREDICTOR}input_proj\.", "model.transformer_module.input_projections."),
    (rf"^{_PREDICTOR}transformer_cross_attention_layers\.(\d+)\.multihead_attn\.",
     r"model.transformer_module.decoder.layers.\1.cross_attn."),
    (rf"^{_PREDICTOR}transformer_cross_attention_layers\.(\d+)\.norm\.",
     r"model.transformer_module.decoder.layers.\1.cross_attn_layer_norm."),
    (rf"^{_PREDICTOR}transformer_self_attention_layers\.(\d+)\.self_attn\.out_proj\.",
     r"model.transformer_module.decoder.layers.\1.self_attn.out_proj."),
    (rf"^{_PREDICTOR}transformer_self_attention_layers\.(\d+)\.norm\.",
     r"model.transformer_module.decoder.layers.\1.self_attn_layer_norm."),
    (rf"^{_PREDICTOR}transformer_ffn_layers\.(\d+)\.linear(\d)\.",
     r"model.transformer_module.decoder.layers.\1.fc\2."),
    (rf"^{_PREDICTOR}transformer_ffn_layers\.(\d+)\.norm\.",
     r"model.transformer_module.decoder.layers.\1.final_layer_norm."),
    (rf"^{_PREDICTOR}decoder_norm\.", "model.transformer_module.decoder.layernorm."),
    (rf"^{_PREDICTOR}mask_embed\.layers\.(\d)\.",
     r"model.transformer_module.decoder.mask_predictor.mask_embedder.\1.0."),
    (rf"^{_PREDICTOR}class_embed\.", "class_predictor."),
]]
_SELF_ATTENTION = re.compile(
    rf"^{_PREDICTOR}transformer_self_attention_layers\.(\d+)\.self_attn\.in_proj_(weight|bias)$")
_SWIN_BLOCK = re.compile(r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.(.*)$")
_SWIN_NAMES = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
               "attn.relative_position_bias_table": "attention.self.relative_position_bias_table",
               "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}


def _load(path: Path) -> dict[str, np.ndarray]:
  if torch_files.is_safetensors(path) or not path.suffix == ".pkl":
    obj = torch_files.load_tensors(path)
  else:
    obj = pickle_files.load_numpy_pickle(path)
  if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
    obj = obj["model"]
  if not isinstance(obj, Mapping) or f"{_PREDICTOR}query_feat.weight" not in obj:
    raise ValueError(f"{path}: expected a detectron2 Mask2Former checkpoint (weights under 'model', keys such "
                     f"as {_PREDICTOR}query_feat.weight); found {list(obj)[:6] if isinstance(obj, Mapping) else obj}.")
  return {k: np.asarray(v) for k, v in obj.items()}


def read_detectron2(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(Hugging Face style config, state dict in the Hub's key layout) of a released Mask2Former checkpoint."""
  d2 = _load(path)
  is_resnet = "backbone.stem.conv1.weight" in d2
  state: dict[str, np.ndarray] = {}
  for key, value in d2.items():
    if m := _SELF_ATTENTION.match(key):
      layer, kind = m.groups()
      for name, part in zip(("q_proj", "k_proj", "v_proj"), np.split(value, 3)):
        state[f"model.transformer_module.decoder.layers.{layer}.self_attn.{name}.{kind}"] = part
    elif key.startswith("backbone.") and is_resnet:
      state[_ENCODER + resnet.LAYOUTS["Hugging Face"](key.removeprefix("backbone."))] = value
    elif key.startswith("backbone."):
      state.update(_swin_to_hub(key, value))
    else:
      new = key
      for pattern, replacement in _RENAMES:
        new = pattern.sub(replacement, new)
      state[new] = value
  backbone = _resnet_config(d2, path) if is_resnet else _swin_config(d2)
  return {"backbone_config": backbone, **_config(state)}, state


def _swin_to_hub(key: str, value: np.ndarray) -> dict[str, np.ndarray]:
  e = _ENCODER
  if m := _SWIN_BLOCK.match(key):
    stage, block, rest = m.groups()
    prefix = f"{e}encoder.layers.{stage}.blocks.{block}."
    if rest.startswith("attn.qkv."):
      kind = rest.rsplit(".", 1)[1]
      parts = zip(("query", "key", "value"), np.split(value, 3))
      return {f"{prefix}attention.self.{n}.{kind}": part for n, part in parts}
    if rest in _SWIN_NAMES:  # The bias table: a bare parameter.
      return {prefix + _SWIN_NAMES[rest]: value}
    name, kind = rest.rsplit(".", 1)
    return {f"{prefix}{_SWIN_NAMES.get(name, name)}.{kind}": value}
  rest = key.removeprefix("backbone.")
  rest = re.sub(r"^layers\.(\d+)\.downsample\.", r"encoder.layers.\1.downsample.", rest)
  rest = re.sub(r"^norm(\d)\.", lambda m: f"hidden_states_norms.stage{int(m.group(1)) + 1}.", rest)
  rest = rest.replace("patch_embed.proj.", "embeddings.patch_embeddings.projection.")
  rest = rest.replace("patch_embed.norm.", "embeddings.norm.")
  return {e + rest: value}


def _count(state: Mapping[str, Any], pattern: str) -> int:
  return len({m.group(1) for k in state if (m := re.match(pattern, k))})


def _swin_config(d2: Mapping[str, np.ndarray]) -> dict[str, Any]:
  stages = _count(d2, r"backbone\.layers\.(\d+)\.")
  tables = [d2[f"backbone.layers.{s}.blocks.0.attn.relative_position_bias_table"] for s in range(stages)]
  return {"model_type": "swin", "embed_dim": int(d2["backbone.patch_embed.proj.weight"].shape[0]),
          "depths": [_count(d2, rf"backbone\.layers\.{s}\.blocks\.(\d+)\.") for s in range(stages)],
          "num_heads": [int(t.shape[1]) for t in tables],
          "window_size": (int(round(tables[0].shape[0] ** 0.5)) + 1) // 2,
          "out_features": [f"stage{s + 1}" for s in range(stages)]}


def _resnet_config(d2: Mapping[str, np.ndarray], path: Path) -> dict[str, Any]:
  """The Hugging Face ResNetConfig of detectron2's bottleneck ResNet in the checkpoint."""
  backbone = {k.removeprefix("backbone."): v for k, v in d2.items() if k.startswith("backbone.")}
  a = resnet.infer_architecture(backbone, resnet.LAYOUTS["detectron2"], path, stride_in_1x1=False)
  if tuple(w * 4 for w in a.bottleneck_widths) != a.out_channels:
    raise ValueError(f"{path}: a ResNet with bottleneck widths {a.bottleneck_widths} for outputs {a.out_channels}; "
                     "only the standard 4x expansion (R50, R101, R152) is read.")
  return {"model_type": "resnet", "embedding_size": a.stem_width, "hidden_sizes": list(a.out_channels),
          "depths": list(a.depths), "layer_type": "bottleneck", "downsample_in_bottleneck": False,
          "out_features": _STAGES[:len(a.depths)]}


def _config(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
  pixel = "model.pixel_level_module.decoder."
  query_feat = state["model.transformer_module.queries_features.weight"]
  config = {
      "model_type": "mask2former",
      "feature_size": int(state[f"{pixel}input_projections.0.0.weight"].shape[0]),
      "mask_feature_size": int(state[f"{pixel}mask_projection.weight"].shape[0]),
      "encoder_layers": _count(state, rf"{re.escape(pixel)}encoder\.layers\.(\d+)\."),
      "encoder_feedforward_dim": int(state[f"{pixel}encoder.layers.0.fc1.weight"].shape[0]),
      "num_attention_heads": int(state[f"{pixel}encoder.layers.0.self_attn.sampling_offsets.weight"].shape[0]) // 24,
      "hidden_dim": int(query_feat.shape[1]), "num_queries": int(query_feat.shape[0]),
      "decoder_layers": _count(state, r"model\.transformer_module\.decoder\.layers\.(\d+)\.") + 1,
      "dim_feedforward": int(state["model.transformer_module.decoder.layers.0.fc1.weight"].shape[0]),
      "enforce_input_projection": "model.transformer_module.input_projections.0.weight" in state}
  if "class_predictor.weight" in state:
    config["id2label"] = {str(i): str(i) for i in range(state["class_predictor.weight"].shape[0] - 1)}
  return config
