"""The backbone part of a Hugging Face Mask2Former checkpoint (keys under `model.pixel_level_module.encoder.`).

Three backbone configs are read: Swin (`SwinBackbone`, the checkpoints on the Hub), ResNet (`ResNetBackbone`,
its architecture from `backbone_config`) and a timm ResNet (`TimmBackbone`, torchvision key names under
`_backbone.`, its architecture read from the tensors). Each gives a `BackboneReader`: the module, its stage
channels, the shape of every key it owns and a function from the state dict to its params.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import numpy as np

from ovseg_jax.models.resnet import ResNet
from ovseg_jax.models.swin import Swin
import ovseg_jax.weights.resnet as resnet
import ovseg_jax.weights.swin as swin

PREFIX = "model.pixel_level_module.encoder."
_STAGES = ["stage1", "stage2", "stage3", "stage4"]
_TIMM_PREFIX = PREFIX + "_backbone."
# Newer transformers names of the Swin backbone -> the names of the checkpoints on the Hub.
_NEW_TO_HUB = [(re.compile(p), r) for p, r in [
    (r"^swin\.", ""), (r"attention\.q_proj", "attention.self.query"), (r"attention\.k_proj", "attention.self.key"),
    (r"attention\.v_proj", "attention.self.value"), (r"attention\.o_proj", "attention.output.dense"),
    (r"attention\.relative_position_bias\.relative_position_bias_table", "attention.self.relative_position_bias_table"),
    (r"mlp\.fc1", "intermediate.dense"), (r"mlp\.fc2", "output.dense")]]


@dataclasses.dataclass(frozen=True)
class BackboneReader:
  module: nn.Module
  channels: tuple[int, ...]  # Output channels at strides 4, 8, 16, 32.
  expected: dict[str, tuple[int, ...]]  # Every checkpoint key of the backbone (with PREFIX) and its shape.
  read: Callable[[Mapping[str, np.ndarray], Path], dict[str, Any]]  # (state, path) -> the module's params.


def hub_key(key: str) -> str:
  """A backbone key (without PREFIX) as the checkpoints on the Hub name it."""
  for pattern, replacement in _NEW_TO_HUB:
    key = pattern.sub(replacement, key)
  return key


def backbone_reader(backbone: Mapping[str, Any], config_name: str, state: Mapping[str, np.ndarray],
                    path: Path) -> BackboneReader:
  """The reader of the backbone `backbone` (the `backbone_config` of a Mask2Former config) describes."""
  kind = backbone.get("model_type")
  readers = {"swin": _swin, "resnet": _resnet, "timm_backbone": _timm_resnet}
  if kind not in readers:
    raise ValueError(f"{config_name}: not a supported Mask2Former config: backbone_config.model_type {kind!r} "
                     f"(expected one of {sorted(readers)}).")
  return readers[kind](backbone, config_name, state, path)


def _check(config_name: str, what: str, expected: Mapping[str, tuple[Any, Any]]) -> None:
  problems = [f"backbone_config.{k} {found!r} (expected {want!r})" for k, (want, found) in expected.items()
              if want != found]
  if problems:
    raise ValueError(f"{config_name}: not a supported Mask2Former config ({what}): {'; '.join(problems)}.")


def _swin(backbone: Mapping[str, Any], config_name: str, state: Mapping[str, np.ndarray],
          path: Path) -> BackboneReader:
  del state, path
  get = backbone.get
  _check(config_name, "Swin backbone", {
      "patch_size": (4, get("patch_size", 4)), "mlp_ratio": (4.0, get("mlp_ratio", 4.0)),
      "hidden_act": ("gelu", get("hidden_act", "gelu")), "layer_norm_eps": (1e-5, get("layer_norm_eps", 1e-5)),
      "use_absolute_embeddings": (False, get("use_absolute_embeddings", False)),
      "qkv_bias": (True, get("qkv_bias", True)), "out_features": (_STAGES, get("out_features"))})
  module = Swin(backbone["embed_dim"], tuple(backbone["depths"]), tuple(backbone["num_heads"]),
                window=backbone["window_size"], drop_path_rate=float(get("drop_path_rate", 0.0)))
  def read(state, path):
    return swin._read(path, _swin_released_layout(state, module.depths), module.embed_dim, module.depths,
                      module.num_heads, module.window, f"(embed {module.embed_dim}, depths {module.depths})")
  channels = tuple(module.embed_dim * 2 ** s for s in range(len(module.depths)))
  return BackboneReader(module, channels, _swin_expected(module), read)


def _swin_expected(b: Swin) -> dict[str, tuple[int, ...]]:
  shapes: dict[str, tuple[int, ...]] = {}
  linear = lambda key, out, inp, bias=True: shapes.update(
      {f"{key}.weight": (out, inp), **({f"{key}.bias": (out,)} if bias else {})})
  norm = lambda key, n: shapes.update({f"{key}.weight": (n,), f"{key}.bias": (n,)})
  e = PREFIX
  shapes[f"{e}embeddings.patch_embeddings.projection.weight"] = (b.embed_dim, 3, 4, 4)
  shapes[f"{e}embeddings.patch_embeddings.projection.bias"] = (b.embed_dim,)
  norm(f"{e}embeddings.norm", b.embed_dim)
  for s, (depth, heads) in enumerate(zip(b.depths, b.num_heads)):
    c = b.embed_dim * 2 ** s
    for i in range(depth):
      k = f"{e}encoder.layers.{s}.blocks.{i}"
      norm(f"{k}.layernorm_before", c)
      norm(f"{k}.layernorm_after", c)
      for name in ("self.query", "self.key", "self.value", "output.dense"):
        linear(f"{k}.attention.{name}", c, c)
      shapes[f"{k}.attention.self.relative_position_bias_table"] = ((2 * b.window - 1) ** 2, heads)
      linear(f"{k}.intermediate.dense", 4 * c, c)
      linear(f"{k}.output.dense", c, 4 * c)
    if s < len(b.depths) - 1:
      norm(f"{e}encoder.layers.{s}.downsample.norm", 4 * c)
      linear(f"{e}encoder.layers.{s}.downsample.reduction", 2 * c, 4 * c, bias=False)
    norm(f"{e}hidden_states_norms.stage{s + 1}", c)
  return shapes


def _swin_released_layout(state: Mapping[str, np.ndarray], depths: tuple[int, ...]) -> dict[str, np.ndarray]:
  """The backbone's Hub keys renamed to the released Swin layout that `weights.swin` reads."""
  get = lambda key: state[PREFIX + key]
  out = {"patch_embed.proj.weight": get("embeddings.patch_embeddings.projection.weight"),
         "patch_embed.proj.bias": get("embeddings.patch_embeddings.projection.bias"),
         "patch_embed.norm.weight": get("embeddings.norm.weight"), "patch_embed.norm.bias": get("embeddings.norm.bias")}
  for s, depth in enumerate(depths):
    for i in range(depth):
      hf, ours = f"encoder.layers.{s}.blocks.{i}", f"layers.{s}.blocks.{i}"
      renames = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.output.dense": "attn.proj",
                 "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}
      for name, new in renames.items():
        for param in ("weight", "bias"):
          out[f"{ours}.{new}.{param}"] = get(f"{hf}.{name}.{param}")
      for param in ("weight", "bias"):
        out[f"{ours}.attn.qkv.{param}"] = np.concatenate(
            [get(f"{hf}.attention.self.{n}.{param}") for n in ("query", "key", "value")])
      out[f"{ours}.attn.relative_position_bias_table"] = get(f"{hf}.attention.self.relative_position_bias_table")
    if s < len(depths) - 1:
      for param in ("norm.weight", "norm.bias", "reduction.weight"):
        out[f"layers.{s}.downsample.{param}"] = get(f"encoder.layers.{s}.downsample.{param}")
    for param in ("weight", "bias"):
      out[f"norm{s}.{param}"] = get(f"hidden_states_norms.stage{s + 1}.{param}")
  return out


def _resnet_reader(architecture: resnet.ResNetArchitecture, layout: str, prefix: str) -> BackboneReader:
  name = lambda key: prefix + resnet.LAYOUTS[layout](key)
  expected = {name(k): shape for k, shape in resnet.expected_shapes(architecture).items()}
  def read(state, path):
    del path
    return resnet.to_params(state, name, architecture)
  return BackboneReader(ResNet(**dataclasses.asdict(architecture)), architecture.out_channels, expected, read)


def _resnet(backbone: Mapping[str, Any], config_name: str, state: Mapping[str, np.ndarray],
            path: Path) -> BackboneReader:
  del state, path
  _check(config_name, "ResNet backbone", {"out_features": (_STAGES, backbone.get("out_features"))})
  return _resnet_reader(resnet.hf_architecture(backbone, Path(config_name)), "Hugging Face", PREFIX)


def _timm_resnet(backbone: Mapping[str, Any], config_name: str, state: Mapping[str, np.ndarray],
                 path: Path) -> BackboneReader:
  _check(config_name, "timm ResNet backbone", {
      "out_indices": ([1, 2, 3, 4], list(backbone.get("out_indices") or [])),
      "num_channels": (3, backbone.get("num_channels", 3)),
      "output_stride": (None, backbone.get("output_stride"))})
  if f"{_TIMM_PREFIX}conv1.weight" not in state:
    raise ValueError(f"{path}: timm backbone {backbone.get('backbone')!r} has no {_TIMM_PREFIX}conv1.weight; only "
                     "ResNets with the 7x7 stem (timm's resnet26/50/101/152) are read.")
  backbone_state = {k.removeprefix(_TIMM_PREFIX): v for k, v in state.items() if k.startswith(_TIMM_PREFIX)}
  # timm's bottleneck strides in its 3x3 conv, as torchvision's does.
  architecture = resnet.infer_architecture(backbone_state, resnet.LAYOUTS["torchvision"], path, False)
  return _resnet_reader(architecture, "torchvision", _TIMM_PREFIX)
