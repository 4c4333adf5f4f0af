"""DINO ViT loading: parity with the PyTorch reference models (DINO's VisionTransformer and Hugging Face's
ViTModel) on the tiny random checkpoints in tests/fixtures/dino (made by tools/make_dino_fixtures.py),
and clear errors for bad files."""
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from ovseg_jax.models.resize import bicubic_resize_matrix
from ovseg_jax.weights import load_dino
from ovseg_jax.weights import torch_files

FIXTURES = Path(__file__).parent / "fixtures" / "dino"


@pytest.fixture(scope="module")
def reference():
  return dict(np.load(FIXTURES / "reference.npz"))


def _relative_error(actual, expected):
  return float(np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected)))


@pytest.mark.parametrize("source,kwargs,reference_model", [
    ("dino_vit.pth", {"num_heads": 4}, "dino"),
    ("dino_full_checkpoint.pth", {"num_heads": 4}, "dino"),
    ("hf", {}, "hf"),
    ("hf_bin", {}, "hf"),
])
def test_matches_pytorch_reference(reference, source, kwargs, reference_model):
  module, params = load_dino(FIXTURES / source, **kwargs)
  assert module.patch_size == 8
  for resolution in ("32", "40x48"):  # Native grid, then bicubic position interpolation to 5x6.
    images = reference[f"images_{resolution}"]
    tokens, keys = module.apply({"params": params}, images, return_keys=True)
    assert _relative_error(tokens, reference[f"{reference_model}_tokens_{resolution}"]) < 1e-4, resolution
    assert _relative_error(keys, reference[f"{reference_model}_keys_{resolution}"]) < 1e-4, resolution
    np.testing.assert_array_equal(module.apply({"params": params}, images), tokens)


def test_architectures_read_from_files():
  dino, _ = load_dino(FIXTURES / "dino_vit.pth", num_heads=4)
  hf, _ = load_dino(FIXTURES / "hf")
  for module in (dino, hf):
    architecture = (module.width, module.depth, module.num_heads, module.mlp_dim, module.image_size)
    assert architecture == (32, 2, 4, 128, 32)
  assert (dino.layer_norm_eps, dino.dino_interpolation) == (1e-6, True)
  assert (hf.layer_norm_eps, hf.dino_interpolation) == (1e-12, False)


def test_bicubic_matrix_matches_torch_interpolate(reference):
  grid = reference["bicubic_grid"]  # 5x6
  scaled = bicubic_resize_matrix(5, 7, 7.1 / 5) @ grid @ bicubic_resize_matrix(6, 3, 3.1 / 6).T
  np.testing.assert_allclose(scaled, reference["bicubic_scaled"], atol=1e-12)
  sized = bicubic_resize_matrix(5, 9) @ grid @ bicubic_resize_matrix(6, 11).T
  np.testing.assert_allclose(sized, reference["bicubic_sized"], atol=1e-12)


def test_torch_reader_handles_views_strides_and_bfloat16():
  # hf_bin stores q/k/v as offset views of one fused storage and transposed MLP weights; the safetensors
  # copy of the same weights, read by the safetensors package, is the reference.
  from_bin = torch_files.load_torch_file(FIXTURES / "hf_bin" / "pytorch_model.bin")
  from_safetensors = safetensors.numpy.load_file(str(FIXTURES / "hf" / "model.safetensors"))
  assert sorted(from_bin) == sorted(from_safetensors)
  for key, value in from_safetensors.items():
    np.testing.assert_array_equal(from_bin[key], value, err_msg=key)
  full = torch_files.load_torch_file(FIXTURES / "dino_full_checkpoint.pth")
  assert full["epoch"] == 100 and full["args"].patch_size == 8
  teacher = full["teacher"]["backbone.pos_embed"]
  assert teacher.dtype == ml_dtypes.bfloat16
  plain = torch_files.load_torch_file(FIXTURES / "dino_vit.pth")["pos_embed"]
  np.testing.assert_array_equal(teacher.astype(np.float32), plain)


def _dino_state():
  return torch_files.load_torch_file(FIXTURES / "dino_vit.pth")


def test_truncated_files(tmp_path):
  data = (FIXTURES / "dino_vit.pth").read_bytes()
  (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=r"cut\.pth.*truncated"):
    load_dino(tmp_path / "cut.pth", num_heads=4)
  shutil.copytree(FIXTURES / "hf", tmp_path / "hf")
  weights = tmp_path / "hf" / "model.safetensors"
  weights.write_bytes(weights.read_bytes()[:5000])
  with pytest.raises(ValueError, match=r"model\.safetensors.*truncated"):
    load_dino(tmp_path / "hf")


def test_unknown_and_legacy_formats(tmp_path):
  (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(64))
  with pytest.raises(ValueError, match=r"random\.pth: expected a torch.save zip archive"):
    load_dino(tmp_path / "random.pth")
  legacy = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b".\x80\x02"
  (tmp_path / "legacy.pth").write_bytes(legacy)
  with pytest.raises(ValueError, match="legacy"):
    load_dino(tmp_path / "legacy.pth")
  with pytest.raises(FileNotFoundError, match="missing.pth"):
    load_dino(tmp_path / "missing.pth")
  (tmp_path / "empty_dir").mkdir()
  with pytest.raises(FileNotFoundError, match="ViTModel directory with config.json"):
    load_dino(tmp_path / "empty_dir")


def test_refuses_pickled_code(tmp_path):
  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("evil/data.pkl", pickle.dumps(print))  # Any callable other than tensor rebuilders.
  with pytest.raises(ValueError, match=r"evil\.pth.*builtins\.print.*arbitrary code"):
    load_dino(path)


def test_wrong_architecture_for_config(tmp_path):
  shutil.copytree(FIXTURES / "hf", tmp_path / "hf")
  config_file = tmp_path / "hf" / "config.json"
  config = json.loads(config_file.read_text())
  config.update(hidden_size=64, intermediate_size=256)  # A bigger model's config beside small weights.
  config_file.write_text(json.dumps(config))
  wrong_shape = r"wrong shapes: embeddings\.cls_token \(1, 1, 32\) \(expected \(1, 1, 64\)\)"
  with pytest.raises(ValueError, match=wrong_shape):
    load_dino(tmp_path / "hf")
  config.update(hidden_size=32, intermediate_size=128, num_hidden_layers=3)
  config_file.write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"missing keys: encoder\.layer\.2\."):
    load_dino(tmp_path / "hf")


def test_missing_and_unexpected_keys(tmp_path):
  state = _dino_state()
  del state["blocks.1.norm2.weight"]
  state["blocks.0.attn.relative_position"] = np.zeros(3, np.float32)
  safetensors.numpy.save_file(state, str(tmp_path / "edited.safetensors"))
  with pytest.raises(ValueError, match=r"edited\.safetensors.*missing keys: blocks\.1\.norm2\.weight; "
                                       r"unexpected keys: blocks\.0\.attn\.relative_position"):
    load_dino(tmp_path / "edited.safetensors", num_heads=4)


def test_head_count_must_be_given_for_non_standard_widths():
  with pytest.raises(ValueError, match="num_heads="):
    load_dino(FIXTURES / "dino_vit.pth")


def test_checkpoint_key_names_missing_entry():
  with pytest.raises(ValueError, match="'student'.*checkpoint_key="):
    load_dino(FIXTURES / "dino_full_checkpoint.pth", num_heads=4, checkpoint_key="student")
