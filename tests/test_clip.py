"""CLIP: image, text and dense embeddings equal the PyTorch models' for every supported file format."""
from pathlib import Path

import jax
import numpy as np
import pytest

from ovseg_jax.weights import load_clip

FIXTURES = Path(__file__).parent / "fixtures" / "clip"


def _relative_error(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.fixture(scope="module")
def reference():
  return np.load(FIXTURES / "outputs.npz")


@pytest.mark.parametrize("path,kwargs,prefix", [
    ("openai_jit.pt", {}, "openai"),
    ("open_clip.bin", {"activation": "quick_gelu"}, "open_clip"),
    ("open_clip/open_clip.safetensors", {}, "open_clip"),
    ("hf", {}, "hf"),
])
def test_embeddings_equal_pytorch(reference, path, kwargs, prefix):
  module, params = load_clip(FIXTURES / path, **kwargs)
  images, tokens = reference["images"], reference["tokens"]
  image = jax.jit(lambda p, x: module.apply({"params": p}, x, method="encode_image"))(params, images)
  text = jax.jit(lambda p, t: module.apply({"params": p}, t, method="encode_text"))(params, tokens)
  assert _relative_error(image, reference[f"{prefix}_image"]) < 1e-4
  assert _relative_error(text, reference[f"{prefix}_text"]) < 1e-4


def test_dense_value_path_features_equal_pytorch(reference):
  module, params = load_clip(FIXTURES / "openai_jit.pt")
  dense = jax.jit(lambda p, x: module.apply({"params": p}, x, method="encode_dense"))(params, reference["images"])
  assert dense.shape == (2, 4, 4, 16)
  assert _relative_error(dense, reference["openai_dense"]) < 1e-4


def test_other_image_sizes_resample_positions():
  module, params = load_clip(FIXTURES / "openai_jit.pt")
  images = np.random.default_rng(1).normal(size=(1, 48, 40, 3)).astype(np.float32)
  encode = lambda p, x, method: module.apply({"params": p}, x, method=method)
  dense, image = jax.jit(lambda p, x: (encode(p, x, "encode_dense"), encode(p, x, "encode_image")))(params, images)
  assert dense.shape == (1, 6, 5, 16)
  assert np.all(np.isfinite(image))


def test_wrong_checkpoints_name_the_file_and_what_was_expected(tmp_path):
  dino_file = Path(__file__).parent / "fixtures" / "dino" / "dino_vit.pth"
  with pytest.raises(ValueError, match=r"dino_vit\.pth: expected a CLIP ViT checkpoint.*missing"):
    load_clip(dino_file, activation="gelu")
  cut = tmp_path / "cut.pt"
  cut.write_bytes((FIXTURES / "openai_jit.pt").read_bytes()[:20000])
  with pytest.raises(ValueError, match="cut.pt"):
    load_clip(cut)
  unknown = tmp_path / "weights.npy"
  unknown.write_bytes(b"\x93NUMPY not a checkpoint")
  with pytest.raises(ValueError, match="weights.npy"):
    load_clip(unknown)
  with pytest.raises(ValueError, match="open_clip_config.json.*activation='quick_gelu'"):
    load_clip(FIXTURES / "open_clip.bin")
  (tmp_path / "hf").mkdir()
  (tmp_path / "hf" / "model.safetensors").write_bytes((FIXTURES / "hf" / "model.safetensors").read_bytes())
  with pytest.raises(FileNotFoundError, match="CLIPModel directory with config.json"):
    load_clip(tmp_path / "hf")
