"""ResNet weights from the files users have -> the architecture and params of `models.resnet.ResNet`.

Reads, by content rather than suffix:
- torchvision and timm state dicts (`conv1`, `bn1`, `layer1.0.conv1`, `layer1.0.downsample.0/1`, `fc`) as
  `.pth`, `.bin` or `.safetensors`, bare or under 'state_dict' / 'model';
- detectron2 checkpoints (`stem.conv1`, `res2.0.conv1.norm`, `res2.0.shortcut`): the `.pkl` files of its
  ImageNet-pretrained torchvision conversions (convert-torchvision-to-d2.py: `stem.fc` kept, under 'model')
  and of Mask2Former's model zoo (`backbone.`-prefixed inside the whole model), or detectron2's `.pth`;
- Hugging Face `ResNetModel` / `ResNetBackbone` / `ResNetForImageClassification` directories (config.json
  and model.safetensors or pytorch_model.bin).

Each layout is one function from detectron2's key names to its own, so inferring, checking and converting
follow a single path and errors name the file's own keys. Depths and widths are read from the tensors (for
Hugging Face directories from config.json, which the tensors must then match). Where the stride sits is not
visible in the tensors: torchvision, timm and Mask2Former put it in the 3x3 conv (detectron2's STRIDE_IN_1X1
False), Hugging Face says so in `downsample_in_bottleneck`; detectron2's own detectors trained from MSRA's
weights use `stride_in_1x1=True`, which must then be passed.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ovseg_jax.models.resnet import BOTTLENECK_WIDTHS, OUT_CHANNELS, STEM_WIDTH, VARIANTS, ResNet
import ovseg_jax.weights.convert as convert
import ovseg_jax.weights.pickle_files as pickle_files
import ovseg_jax.weights.torch_files as torch_files
from ovseg_jax.weights.hf_directory import read_hf_directory

_NORM_ENTRIES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
# Classifiers and BatchNorm step counters, which the backbone does not use.
_IGNORED = re.compile(r"((stem\.)?fc|classifier\.\d+)\.(weight|bias)$|.*\.num_batches_tracked$")
_LEGACY_TORCH_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


@dataclasses.dataclass(frozen=True)
class ResNetArchitecture:
  """The `ResNet` fields a checkpoint determines."""
  depths: tuple[int, ...]
  stem_width: int
  bottleneck_widths: tuple[int, ...]
  out_channels: tuple[int, ...]
  stride_in_1x1: bool


def _rename(rules: tuple[tuple[str, str], ...]) -> Callable[[str], str]:
  def rename(key: str) -> str:
    for pattern, replacement in rules:
      key = re.sub(pattern, replacement, key)
    return key
  return rename


# Layout name -> the function from a detectron2 key name to that layout's name of the same tensor.
LAYOUTS: dict[str, Callable[[str], str]] = {
    "detectron2": lambda key: key,
    "torchvision": _rename((
        (r"^stem\.conv1\.norm\.", "bn1."), (r"^stem\.conv1\.", "conv1."),
        (r"^res(\d)\.", lambda m: f"layer{int(m.group(1)) - 1}."), (r"\.conv(\d)\.norm\.", r".bn\1."),
        (r"\.shortcut\.norm\.", ".downsample.1."), (r"\.shortcut\.", ".downsample.0."))),
    "Hugging Face": _rename((
        (r"^stem\.conv1\.norm\.", "embedder.embedder.normalization."),
        (r"^stem\.conv1\.", "embedder.embedder.convolution."),
        (r"^res(\d)\.(\d+)\.", lambda m: f"encoder.stages.{int(m.group(1)) - 2}.layers.{m.group(2)}."),
        (r"\.conv(\d)\.norm\.", lambda m: f".layer.{int(m.group(1)) - 1}.normalization."),
        (r"\.conv(\d)\.", lambda m: f".layer.{int(m.group(1)) - 1}.convolution."),
        (r"\.shortcut\.norm\.", ".shortcut.normalization."), (r"\.shortcut\.weight$", ".shortcut.convolution.weight"))),
}


def _blocks(a: ResNetArchitecture) -> list[tuple[str, int, int, int, bool]]:
  """(detectron2 prefix, in channels, bottleneck width, out channels, has a projected shortcut) per block."""
  blocks, cin = [], a.stem_width
  for s, (depth, width, out) in enumerate(zip(a.depths, a.bottleneck_widths, a.out_channels)):
    for b in range(depth):
      blocks.append((f"res{s + 2}.{b}", cin, width, out, b == 0 and (cin != out or s > 0)))
      cin = out
  return blocks


def expected_shapes(a: ResNetArchitecture) -> dict[str, tuple[int, ...]]:
  """Every detectron2 key of the backbone and its shape."""
  shapes = {}
  def conv(key, out, cin, k):
    shapes[f"{key}.weight"] = (out, cin, k, k)
    shapes.update({f"{key}.norm.{entry}": (out,) for entry in _NORM_ENTRIES})
  conv("stem.conv1", a.stem_width, 3, 7)
  for prefix, cin, width, out, shortcut in _blocks(a):
    conv(f"{prefix}.conv1", width, cin, 1)
    conv(f"{prefix}.conv2", width, width, 3)
    conv(f"{prefix}.conv3", out, width, 1)
    if shortcut:
      conv(f"{prefix}.shortcut", out, cin, 1)
  return shapes


def _unwrap(obj: Any, path: Path) -> dict[str, np.ndarray]:
  """The backbone's tensors: under 'model' / 'state_dict' if there, without `module.`; only the `backbone.`
  entries (prefix removed) of a whole detection or segmentation model; without `resnet.` (HF classifier)."""
  for key in ("model", "state_dict"):
    if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
      obj = obj[key]
  if not isinstance(obj, Mapping) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    found = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
    raise ValueError(f"{path}: expected a ResNet state dict of tensors (possibly under 'model'), found {found}.")
  state = {k.removeprefix("module."): v for k, v in obj.items()}
  if any(k.startswith("backbone.") for k in state):
    state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
  return {k.removeprefix("resnet."): v for k, v in state.items()}


def _detect_layout(state: Mapping[str, np.ndarray], path: Path) -> str:
  layout = next((name for name, key in LAYOUTS.items() if key("stem.conv1.weight") in state), None)
  if layout is not None:
    return layout
  if "conv1_w" in state or any(re.match(r"res\d_\d+_branch", k) for k in state):
    raise ValueError(f"{path}: holds Caffe2-named weights (MSRA's original ResNets: conv1_w, res2_0_branch2a_w, "
                     "with folded norms), which are not read here; use the torchvision-converted R-50.pkl "
                     "(detectron2's convert-torchvision-to-d2.py) or torchvision's .pth.")
  raise ValueError(f"{path}: not a ResNet state dict: no stem convolution (conv1.weight, stem.conv1.weight or "
                   f"embedder.embedder.convolution.weight) among its {len(state)} keys, which begin "
                   f"{sorted(state)[:6]}.")


def infer_architecture(state: Mapping[str, np.ndarray], name: Callable[[str], str], path: Path,
           stride_in_1x1: bool) -> ResNetArchitecture:
  """Depths and widths from the tensors: blocks per stage counted, widths from conv1/conv3 shapes."""
  depths, widths, outs = [], [], []
  while name(f"res{len(depths) + 2}.0.conv1.weight") in state:
    stage = f"res{len(depths) + 2}"
    if name(f"{stage}.0.conv3.weight") not in state:
      raise ValueError(f"{path}: a ResNet with basic blocks (two 3x3 convs, as ResNet-18/34: no "
                       f"{name(f'{stage}.0.conv3.weight')}); only bottleneck ResNets (R50, R101, R152) are read.")
    depth = 0
    while name(f"{stage}.{depth}.conv1.weight") in state:
      depth += 1
    depths.append(depth)
    widths.append(state[name(f"{stage}.0.conv1.weight")].shape[0])
    outs.append(state[name(f"{stage}.0.conv3.weight")].shape[0])
  if not depths:
    raise ValueError(f"{path}: a ResNet stem without stages (no {name('res2.0.conv1.weight')}).")
  return ResNetArchitecture(tuple(depths), state[name("stem.conv1.weight")].shape[0], tuple(widths),
                            tuple(outs), stride_in_1x1)


def _variant_architecture(variant: str, stride_in_1x1: bool) -> ResNetArchitecture:
  if variant not in VARIANTS:
    raise ValueError(f"unknown ResNet variant {variant!r}; use one of {sorted(VARIANTS)}.")
  return ResNetArchitecture(VARIANTS[variant], STEM_WIDTH, BOTTLENECK_WIDTHS, OUT_CHANNELS, stride_in_1x1)


def to_params(state: Mapping[str, np.ndarray], name: Callable[[str], str], a: ResNetArchitecture) -> dict[str, Any]:
  """Conv OIHW -> HWIO kernels; norm weight/bias/running_mean/running_var -> scale/bias/mean/var."""
  def conv_norm(key):
    norm = {ours: convert.f32(state[name(f"{key}.norm.{theirs}")]) for theirs, ours in _NORM_ENTRIES.items()}
    return {"conv": {"kernel": convert.f32(state[name(f"{key}.weight")].transpose(2, 3, 1, 0))}, "norm": norm}
  params = {"stem_conv1": conv_norm("stem.conv1")}
  for prefix, _, _, _, shortcut in _blocks(a):
    convs = ("conv1", "conv2", "conv3") + (("shortcut",) if shortcut else ())
    params[prefix.replace(".", "_")] = {c: conv_norm(f"{prefix}.{c}") for c in convs}
  return params


def _check_and_convert(state: Mapping[str, np.ndarray], layout: str, a: ResNetArchitecture,
                       path: Path) -> dict[str, Any]:
  name = LAYOUTS[layout]
  expected = {name(k): shape for k, shape in expected_shapes(a).items()}
  what = next((f"{v} " for v in VARIANTS if a == _variant_architecture(v, a.stride_in_1x1)), "")
  convert.check_keys(state, expected, _IGNORED, path, f"a {layout}-layout bottleneck ResNet {what}(depths "
                     f"{a.depths}, stem {a.stem_width}, widths {a.bottleneck_widths}, outputs {a.out_channels})")
  return to_params(state, name, a)


def _load_file(path: Path) -> Any:
  with open(path, "rb") as f:
    head = f.read(16)
  if head[:1] == b"\x80" and _LEGACY_TORCH_MAGIC not in head:  # A plain pickle: detectron2's .pkl.
    return pickle_files.load_numpy_pickle(path)
  return torch_files.load_tensors(path)


def read_resnet(path: str | Path, variant: str | None = None, *,
                stride_in_1x1: bool | None = None) -> tuple[ResNetArchitecture, dict[str, Any]]:
  """(architecture, params) for `ResNet` from a torchvision/timm state dict, a detectron2 `.pkl`/`.pth` or a
  Hugging Face directory. `variant` ('R50', 'R101', 'R152') requires the file to hold that standard ResNet;
  `stride_in_1x1` overrides where the file's format puts the stride (see the module docstring)."""
  path = Path(path)
  if path.is_dir():
    return _read_hf_directory(path, variant, stride_in_1x1)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file or directory; expected a ResNet checkpoint (torchvision "
                            ".pth, detectron2 .pkl) or a Hugging Face ResNet directory.")
  state = _unwrap(_load_file(path), path)
  layout = _detect_layout(state, path)
  if layout == "Hugging Face":
    raise ValueError(f"{path}: holds Hugging Face ResNet weights; pass the directory that holds this file and "
                     "its config.json instead (it says where the stride sits).")
  stride_in_1x1 = bool(stride_in_1x1)
  architecture = (_variant_architecture(variant, stride_in_1x1) if variant else
                  infer_architecture(state, LAYOUTS[layout], path, stride_in_1x1))
  return architecture, _check_and_convert(state, layout, architecture, path)


def _read_hf_directory(path: Path, variant: str | None,
                       stride_in_1x1: bool | None) -> tuple[ResNetArchitecture, dict[str, Any]]:
  config, config_file, state, weights = read_hf_directory(path, "ResNet")
  architecture = hf_architecture(config, config_file)
  if stride_in_1x1 is not None:
    architecture = dataclasses.replace(architecture, stride_in_1x1=stride_in_1x1)
  if variant and dataclasses.replace(architecture, stride_in_1x1=False) != _variant_architecture(variant, False):
    raise ValueError(f"{config_file}: describes depths {architecture.depths}, stem {architecture.stem_width}, "
                     f"outputs {architecture.out_channels}, not a standard {variant}.")
  state = _unwrap(state, weights)
  return architecture, _check_and_convert(state, "Hugging Face", architecture, weights)


def hf_architecture(config: Mapping[str, Any], config_file: Path) -> ResNetArchitecture:
  """The architecture a ResNetConfig describes (absent fields take ResNetConfig's defaults, as in transformers)."""
  get = lambda key, default: config.get(key, default)
  problems = []
  for key, default, wanted in (("model_type", "resnet", "resnet"), ("layer_type", "bottleneck", "bottleneck"),
                               ("hidden_act", "relu", "relu"), ("num_channels", 3, 3),
                               ("downsample_in_first_stage", False, False)):
    if get(key, default) != wanted:
      problems.append(f"{key} {config[key]!r} (expected {wanted!r})")
  depths, hidden_sizes = tuple(get("depths", VARIANTS["R50"])), tuple(get("hidden_sizes", OUT_CHANNELS))
  if len(depths) != len(hidden_sizes):
    problems.append(f"{len(depths)} depths for {len(hidden_sizes)} hidden_sizes")
  if problems:
    raise ValueError(f"{config_file}: not a bottleneck ResNet config this backbone reads: {'; '.join(problems)}.")
  # transformers' bottleneck narrows to a quarter of the output channels.
  return ResNetArchitecture(depths, get("embedding_size", STEM_WIDTH), tuple(h // 4 for h in hidden_sizes),
                            hidden_sizes, bool(get("downsample_in_bottleneck", False)))


def load_resnet(path: str | Path, variant: str | None = None, *, stride_in_1x1: bool | None = None,
                **module_kwargs: Any) -> tuple[ResNet, dict[str, Any]]:
  """(module, params) with `module.apply({'params': params}, images)` -> `{4: res2, 8: res3, 16: res4,
  32: res5}` NHWC, equal to the PyTorch model's stage outputs. `module_kwargs` (e.g. dtype) go to `ResNet`."""
  architecture, params = read_resnet(path, variant, stride_in_1x1=stride_in_1x1)
  return ResNet(**dataclasses.asdict(architecture), **module_kwargs), params
