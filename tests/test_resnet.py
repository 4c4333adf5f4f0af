"""ResNet backbone and its weight readers: parity with the PyTorch reference models (timm's torchvision-layout
ResNet and Hugging Face's ResNetModel) on the tiny random checkpoints in tests/fixtures/resnet (made by
tools/make_resnet_fixtures.py), detectron2 pickles read safely, and clear errors for bad files."""
import json
import os
import pickle
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from ovseg_jax.models import resnet
from ovseg_jax.weights import torch_files
from ovseg_jax.weights.pickle_files import load_numpy_pickle
from ovseg_jax.weights.resnet import load_resnet, read_resnet

FIXTURES = Path(__file__).parent / "fixtures" / "resnet"
STRIDES = (4, 8, 16, 32)


@pytest.fixture(scope="module")
def reference():
  return dict(np.load(FIXTURES / "reference.npz"))


@pytest.fixture(scope="module")
def torchvision_state():
  return torch_files.load_torch_file(FIXTURES / "torchvision.pth")


def _relative_error(actual, expected):
  return float(np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected)))


def _assert_same_params(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("source,reference_model", [
    ("torchvision.pth", "torchvision"),
    ("detectron2.pkl", "torchvision"),  # The same tensors under detectron2's names.
    ("hf", "hf"),  # downsample_in_bottleneck: the stride in the first 1x1 conv.
])
def test_stage_outputs_equal_pytorch(reference, source, reference_model):
  module, params = load_resnet(FIXTURES / source)
  apply = jax.jit(module.apply)
  for size in ("64", "45x37"):  # 45x37: PyTorch's floor rounding of padded strided convs and pooling.
    outputs = apply({"params": params}, reference[f"images_{size}"])
    assert sorted(outputs) == list(STRIDES)
    for stage, stride in enumerate(STRIDES):
      expected = reference[f"{reference_model}_res{stage + 2}_{size}"]
      assert outputs[stride].shape == expected.shape, (size, stride)
      assert _relative_error(outputs[stride], expected) < 1e-4, (source, size, stride)


def test_architectures_read_from_files():
  torchvision, _ = read_resnet(FIXTURES / "torchvision.pth")
  detectron2, _ = read_resnet(FIXTURES / "detectron2.pkl")
  hf, _ = read_resnet(FIXTURES / "hf")
  assert torchvision == detectron2
  assert (torchvision.depths, torchvision.stem_width) == ((2, 1, 2, 1), 64)  # timm's plain stem is 64 wide.
  assert (hf.depths, hf.stem_width) == ((2, 1, 2, 1), 8)
  for a in (torchvision, hf):
    assert (a.bottleneck_widths, a.out_channels) == ((4, 8, 16, 32), (16, 32, 64, 128))
  assert (torchvision.stride_in_1x1, hf.stride_in_1x1) == (False, True)
  assert read_resnet(FIXTURES / "detectron2.pkl", stride_in_1x1=True)[0].stride_in_1x1


def test_torchvision_and_detectron2_files_give_the_same_params():
  _assert_same_params(read_resnet(FIXTURES / "torchvision.pth")[1], read_resnet(FIXTURES / "detectron2.pkl")[1])


def test_mask2former_checkpoint_reads_its_backbone(tmp_path):
  """Mask2Former's model zoo: the whole model's numpy arrays under 'model', the backbone `backbone.`-prefixed."""
  d2 = load_numpy_pickle(FIXTURES / "detectron2.pkl")["model"]
  model = {f"backbone.{k}": v for k, v in d2.items() if not k.startswith("stem.fc.")}
  model["sem_seg_head.predictor.query_feat.weight"] = np.zeros((4, 8), np.float32)
  for protocol in (2, 5):  # Python 3's protocol-2 bytes go through _codecs.encode; 5 through _frombuffer.
    path = tmp_path / f"model_final_{protocol}.pkl"
    path.write_bytes(pickle.dumps({"model": model, "__author__": "Mask2Former"}, protocol=protocol))
    _assert_same_params(read_resnet(path)[1], read_resnet(FIXTURES / "detectron2.pkl")[1])


def test_wrapped_and_prefixed_state_dicts(tmp_path, torchvision_state):
  """A timm training checkpoint (under 'state_dict', DistributedDataParallel's `module.`) and a Hugging Face
  ResNetForImageClassification directory (`resnet.` prefix, classifier) read as the bare files do."""
  wrapped = {"state_dict": {f"module.{k}": v for k, v in torchvision_state.items()}, "epoch": 3}
  (tmp_path / "checkpoint.pkl").write_bytes(pickle.dumps(wrapped))
  _assert_same_params(read_resnet(tmp_path / "checkpoint.pkl")[1], read_resnet(FIXTURES / "torchvision.pth")[1])
  shutil.copytree(FIXTURES / "hf", tmp_path / "hf")
  weights = tmp_path / "hf" / "model.safetensors"
  state = {f"resnet.{k}": v for k, v in safetensors.numpy.load_file(str(weights)).items()}
  state["classifier.1.weight"] = np.zeros((10, 128), np.float32)
  safetensors.numpy.save_file(state, str(weights))
  _assert_same_params(read_resnet(tmp_path / "hf")[1], read_resnet(FIXTURES / "hf")[1])


def test_numpy_pickles_of_every_protocol(tmp_path):
  obj = {"c": np.arange(6, dtype=np.float32).reshape(2, 3), "f": np.asfortranarray(np.ones((2, 3))),
         "h": np.float16([1, 2]), "empty": np.zeros((0, 3)), "step": np.int64(7), "names": {"a", "b"}}
  for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
    path = tmp_path / f"p{protocol}.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    read = load_numpy_pickle(path)
    for key in ("c", "f", "h", "empty"):
      assert read[key].dtype == obj[key].dtype and read[key].flags.writeable
      np.testing.assert_array_equal(read[key], obj[key])
    assert read["step"] == 7 and read["names"] == {"a", "b"}


def test_pickled_code_is_refused(tmp_path):
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps({"model": {"stem.conv1.weight": os.system}}))
  with pytest.raises(ValueError, match=r"evil\.pkl: the pickle calls `(posix|nt)\.system`.*arbitrary code"):
    read_resnet(path)
  path.write_bytes(pickle.dumps(np.ma.masked_array([1.0])))  # An ndarray subclass is code too.
  with pytest.raises(ValueError, match=r"evil\.pkl.*numpy\.ma\."):
    load_numpy_pickle(path)


@pytest.mark.parametrize("name", ["torchvision.pth", "detectron2.pkl"])
def test_truncated_files(tmp_path, name):
  data = (FIXTURES / name).read_bytes()
  cut = tmp_path / f"cut_{name}"
  cut.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=rf"cut_{name.replace('.', '[.]')}.*truncated"):
    read_resnet(cut)


def test_truncated_hf_weights(tmp_path):
  shutil.copytree(FIXTURES / "hf", tmp_path / "hf")
  weights = tmp_path / "hf" / "model.safetensors"
  weights.write_bytes(weights.read_bytes()[:5000])
  with pytest.raises(ValueError, match=r"model\.safetensors.*truncated"):
    read_resnet(tmp_path / "hf")


def test_files_that_are_not_resnets(tmp_path):
  with pytest.raises(ValueError, match=r"dino_vit\.pth: not a ResNet state dict.*blocks\.0\.attn"):
    read_resnet(FIXTURES.parent / "dino" / "dino_vit.pth")
  with pytest.raises(ValueError, match=r"model\.safetensors: holds Hugging Face ResNet weights; pass the directory"):
    read_resnet(FIXTURES / "hf" / "model.safetensors")
  caffe2 = tmp_path / "R-50.pkl"
  caffe2.write_bytes(pickle.dumps({"blobs": {"conv1_w": np.zeros((64, 3, 7, 7), np.float32),
                                             "res2_0_branch2a_w": np.zeros((64, 64, 1, 1), np.float32)}}))
  with pytest.raises(ValueError, match=r"R-50\.pkl.*expected a ResNet state dict"):
    read_resnet(caffe2)  # Detectron's nesting under 'blobs' is not a state dict here.
  caffe2.write_bytes(pickle.dumps({"conv1_w": np.zeros((64, 3, 7, 7), np.float32),
                                   "res2_0_branch2a_w": np.zeros((64, 64, 1, 1), np.float32)}))
  with pytest.raises(ValueError, match=r"R-50\.pkl: holds Caffe2-named weights"):
    read_resnet(caffe2)
  with pytest.raises(FileNotFoundError, match="missing.pth"):
    read_resnet(tmp_path / "missing.pth")
  (tmp_path / "empty_dir").mkdir()
  with pytest.raises(FileNotFoundError, match="config.json and model.safetensors"):
    read_resnet(tmp_path / "empty_dir")


def test_wrong_architectures(tmp_path, torchvision_state):
  with pytest.raises(ValueError, match=r"torchvision\.pth: expected a torchvision-layout bottleneck ResNet R50 "
                                       r".*missing keys: layer1\.2\.conv1\.weight"):
    read_resnet(FIXTURES / "torchvision.pth", "R50")
  basic = {k: v for k, v in torchvision_state.items() if ".conv3." not in k and ".bn3." not in k}
  safetensors.numpy.save_file(basic, str(tmp_path / "resnet18.safetensors"))
  with pytest.raises(ValueError, match=r"resnet18\.safetensors: a ResNet with basic blocks .*layer1\.0\.conv3"):
    read_resnet(tmp_path / "resnet18.safetensors")
  grouped = dict(torchvision_state, **{"layer1.0.conv2.weight": np.zeros((4, 2, 3, 3), np.float32)})
  safetensors.numpy.save_file(grouped, str(tmp_path / "resnext.safetensors"))
  with pytest.raises(ValueError, match=r"wrong shapes: layer1\.0\.conv2\.weight \(4, 2, 3, 3\) "
                                       r"\(expected \(4, 4, 3, 3\)\)"):
    read_resnet(tmp_path / "resnext.safetensors")


def test_missing_and_unexpected_keys(tmp_path, torchvision_state):
  edited = {k: v for k, v in torchvision_state.items() if k != "layer3.1.bn2.running_var"}
  edited["layer3.1.se.fc.weight"] = np.zeros((2, 2), np.float32)
  safetensors.numpy.save_file(edited, str(tmp_path / "edited.safetensors"))
  with pytest.raises(ValueError, match=r"edited\.safetensors.*missing keys: layer3\.1\.bn2\.running_var; "
                                       r"unexpected keys: layer3\.1\.se\.fc\.weight"):
    read_resnet(tmp_path / "edited.safetensors")


@pytest.mark.parametrize("change,message", [
    ({"hidden_sizes": [32, 64, 128, 256]}, r"model\.safetensors: expected a Hugging Face-layout .*wrong shapes: "
                                           r"encoder\.stages\.0\.layers\.0\.layer\.0\.convolution\.weight"),
    ({"depths": [2, 1, 3, 1]}, r"missing keys: encoder\.stages\.2\.layers\.2\."),
    ({"layer_type": "basic"}, r"config\.json: not a bottleneck ResNet config.*layer_type 'basic'"),
    ({"downsample_in_first_stage": True}, r"downsample_in_first_stage True"),
])
def test_hf_config_must_match_its_weights(tmp_path, change, message):
  shutil.copytree(FIXTURES / "hf", tmp_path / "hf")
  config_file = tmp_path / "hf" / "config.json"
  config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **change}))
  with pytest.raises(ValueError, match=message):
    read_resnet(tmp_path / "hf")


@pytest.mark.parametrize("variant", ["R50", "R101"])
def test_parameter_counts_equal_torchvision(variant):
  """timm's (= torchvision's) resnet50/101 without fc; the stored running statistics are no parameters."""
  counts = json.loads((FIXTURES / "parameter_counts.json").read_text())
  shapes = jax.eval_shape(resnet.resnet(variant).init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  leaves = jax.tree_util.tree_leaves_with_path(shapes["params"])
  count = sum(int(np.prod(x.shape)) for path, x in leaves if path[-1].key not in ("mean", "var"))
  assert count == counts[variant] == {"R50": 23_508_032, "R101": 42_500_160}[variant]


@pytest.fixture(scope="module")
def tiny():
  """A tiny ResNet with random numpy weights and norms (drawing them with jax.random compiles slowly)."""
  model = resnet.ResNet((1, 1, 1, 1), 8, (4, 4, 8, 8), (8, 16, 16, 32))
  images = jnp.asarray(np.random.default_rng(1).normal(size=(2, 40, 40, 3)), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
  rng = np.random.default_rng(2)
  def draw(x):
    if len(x.shape) == 4:  # He-normal conv kernel.
      return rng.normal(0, np.sqrt(2 / np.prod(x.shape[:3])), x.shape).astype(np.float32)
    return (0.5 + rng.uniform(0, 1, x.shape)).astype(np.float32)  # Norm entries, away from the identity.
  return model, jax.tree.map(draw, shapes), images


def test_frozen_norms_get_no_gradient_and_train_changes_nothing(tiny):
  model, params, images = tiny
  forward = lambda p, train: model.apply({"params": p}, images, train=train)
  loss = lambda p: sum(jnp.sum(y ** 2) for y in forward(p, True).values())
  grads, out, trained = jax.jit(lambda p: (jax.grad(loss)(p), forward(p, False), forward(p, True)))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    in_norm = any(getattr(k, "key", None) == "norm" for k in path)
    assert bool(jnp.all(g == 0)) == in_norm, jax.tree_util.keystr(path)
  for stride in STRIDES:
    np.testing.assert_array_equal(out[stride], trained[stride])


def test_bfloat16_compute_is_close_to_float32(tiny):
  model, params, images = tiny
  full = jax.jit(model.apply)({"params": params}, images)[16]
  half = jax.jit(model.clone(dtype=jnp.bfloat16).apply)({"params": params}, images)[16]
  assert half.dtype == jnp.bfloat16
  assert _relative_error(half.astype(jnp.float32), np.asarray(full)) < 5e-2


def test_unknown_variant_and_inconsistent_widths():
  with pytest.raises(ValueError, match="unknown ResNet variant 'R34'"):
    resnet.resnet("R34")
  with pytest.raises(ValueError, match="one entry per stage"):
    jax.jit(resnet.ResNet((1, 1), 8, (4,), (8, 16)).init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
