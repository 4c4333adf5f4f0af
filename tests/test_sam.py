"""SAM image encoder: parity with the PyTorch references (segment_anything's ImageEncoderViT and Hugging Face's
SamModel) on the tiny random checkpoints in tests/fixtures/sam (made by tools/make_sam_fixtures.py), at the
native size and at another one (EBSeg's bicubic position-embedding resize), and clear errors for bad files."""
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from ovseg_jax.models.resize import linear_resize_matrix
from ovseg_jax.models.sam import (relative_positions, resize_position_embedding,
                                  sam_image_encoder, window_partition, window_unpartition)
from ovseg_jax.weights import torch_files
from ovseg_jax.weights.sam import load_sam_image_encoder

FIXTURES = Path(__file__).parent / "fixtures" / "sam"
SOURCES = ("sam_vit_tiny.pth", "hf", "hf_bin")


@pytest.fixture(scope="module")
def reference():
  return dict(np.load(FIXTURES / "reference.npz"))


@pytest.fixture(scope="module")
def loaded():
  return {source: load_sam_image_encoder(FIXTURES / source) for source in SOURCES}


def _relative_error(actual, expected):
  return float(np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected)))


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("size", ["", "_other"])  # Native 96x96 (12x12 grid), then 80x112 (10x14 grid).
def test_matches_pytorch_reference(reference, loaded, source, size):
  module, params = loaded[source]
  out = jax.jit(module.apply)({"params": params}, reference[f"images{size}"].astype(np.float32))
  assert len(out["hidden_states"]) == 4
  for i, hidden in enumerate(out["hidden_states"]):
    assert _relative_error(hidden, reference[f"hidden_states{size}"][i]) < 1e-4, i
  assert _relative_error(out["image_embeddings"], reference[f"image_embeddings{size}"]) < 1e-4


def test_architecture_read_from_files(loaded):
  for module, _ in loaded.values():
    architecture = (module.width, module.depth, module.num_heads, module.mlp_dim, module.out_channels,
                    module.patch_size, module.image_size, module.window_size, tuple(module.global_attn_indexes))
    assert architecture == (32, 4, 2, 128, 16, 8, 96, 5, (1, 3))
    assert module.use_abs_pos and module.use_rel_pos and module.qkv_bias


def _bare_state():
  """The fixture's image-encoder state dict without the `image_encoder.` prefix and the other SAM parts."""
  full = torch_files.load_torch_file(FIXTURES / "sam_vit_tiny.pth")
  return {k.removeprefix("image_encoder."): v for k, v in full.items() if k.startswith("image_encoder.")}


def test_bare_encoder_state_dict(tmp_path, loaded):
  safetensors.numpy.save_file(_bare_state(), str(tmp_path / "encoder.safetensors"))
  module, params = load_sam_image_encoder(tmp_path / "encoder.safetensors")
  expected_module, expected = loaded["sam_vit_tiny.pth"]
  assert module == expected_module
  jax.tree.map(np.testing.assert_array_equal, params, expected)


def test_position_embedding_resize_matches_torch(reference, loaded):
  _, params = loaded["sam_vit_tiny.pth"]
  resized = resize_position_embedding(params["pos_embed"], 10, 14)  # torch's bicubic, align_corners=False.
  np.testing.assert_allclose(resized, reference["pos_embed_resized"], atol=1e-5)
  table = reference["rel_pos_table"]  # 23 rows (global block, 12x12 grid) -> 27 rows (14 columns).
  np.testing.assert_allclose(linear_resize_matrix(23, 27) @ table, reference["rel_pos_table_resized"], atol=1e-5)
  positions = np.asarray(relative_positions(jnp.asarray(table), 14))
  for i, j in [(0, 0), (0, 13), (13, 0), (5, 9)]:
    np.testing.assert_allclose(positions[i, j], reference["rel_pos_table_resized"][i - j + 13], atol=1e-5)
  np.testing.assert_array_equal(relative_positions(jnp.asarray(table), 12)[3, 7], table[3 - 7 + 11])


def test_window_partition_pads_and_round_trips():
  x = jnp.arange(2 * 7 * 9 * 3, dtype=jnp.float32).reshape(2, 7, 9, 3) + 1
  windows, padded = window_partition(x, 4)
  assert windows.shape == (2 * 2 * 3, 4, 4, 3) and padded == (8, 12)
  np.testing.assert_array_equal(windows[1], x[0, :4, 4:8])  # Windows in row-major order per image.
  assert float(jnp.abs(windows[2, :, 1:]).sum()) == 0.0  # Column 9 onward is zero padding.
  np.testing.assert_array_equal(window_unpartition(windows, 4, padded, (7, 9)), x)


def test_released_variants():
  module = sam_image_encoder("vit_b")
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 1024, 1024, 3)))["params"]
  # segment_anything's build_sam_vit_b().image_encoder has 89,670,912 parameters.
  assert sum(np.prod(s.shape) for s in jax.tree.leaves(shapes)) == 89_670_912
  assert shapes["block_0"]["attn"]["rel_pos_h"].shape == (27, 64)
  assert shapes["block_2"]["attn"]["rel_pos_h"].shape == (127, 64)
  assert (sam_image_encoder("vit_h").width, sam_image_encoder("vit_l").global_attn_indexes) == (1280, (5, 11, 17, 23))
  with pytest.raises(ValueError, match="vit_x"):
    sam_image_encoder("vit_x")


def test_non_sam_files(tmp_path):
  with pytest.raises(ValueError, match=r"dino_vit\.pth: not a SAM image encoder"):
    load_sam_image_encoder(FIXTURES.parent / "dino" / "dino_vit.pth")
  with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
    load_sam_image_encoder(tmp_path / "missing.pth")
  with pytest.raises(ValueError, match=r"model\.safetensors: holds Hugging Face SamModel weights; pass the directory"):
    load_sam_image_encoder(FIXTURES / "hf" / "model.safetensors")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=r"empty: expected a Hugging Face SamModel directory with config\.json"):
    load_sam_image_encoder(tmp_path / "empty")
  shutil.copytree(FIXTURES / "hf", tmp_path / "vit")
  (tmp_path / "vit" / "config.json").write_text(json.dumps({"model_type": "vit"}))
  with pytest.raises(ValueError, match=r"config\.json: model_type 'vit' is not a Hugging Face SAM"):
    load_sam_image_encoder(tmp_path / "vit")


def test_truncated_files(tmp_path):
  data = (FIXTURES / "sam_vit_tiny.pth").read_bytes()
  (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=r"cut\.pth.*truncated"):
    load_sam_image_encoder(tmp_path / "cut.pth")
  shutil.copytree(FIXTURES / "hf", tmp_path / "hf")
  weights = tmp_path / "hf" / "model.safetensors"
  weights.write_bytes(weights.read_bytes()[:5000])
  with pytest.raises(ValueError, match=r"model\.safetensors.*truncated"):
    load_sam_image_encoder(tmp_path / "hf")


def test_missing_keys_and_wrong_shapes(tmp_path):
  state = _bare_state()
  del state["blocks.2.mlp.lin2.bias"]
  state["neck.2.weight"] = state["neck.2.weight"][:, :, :1]
  safetensors.numpy.save_file(state, str(tmp_path / "broken.safetensors"))
  with pytest.raises(ValueError, match=r"broken\.safetensors: expected a SAM image encoder .*missing keys: "
                                       r"blocks\.2\.mlp\.lin2\.bias; wrong shapes: neck\.2\.weight"):
    load_sam_image_encoder(tmp_path / "broken.safetensors")
  shutil.copytree(FIXTURES / "hf", tmp_path / "deeper")
  config = json.loads((tmp_path / "deeper" / "config.json").read_text())
  config["vision_config"]["num_hidden_layers"] = 5
  (tmp_path / "deeper" / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"model\.safetensors: expected Hugging Face SamModel weights matching "
                                       r"config\.json .*missing keys: vision_encoder\.layers\.4\."):
    load_sam_image_encoder(tmp_path / "deeper")


def test_sharded_hugging_face_directory(tmp_path, loaded):
  state = safetensors.numpy.load_file(str(FIXTURES / "hf" / "model.safetensors"))
  keys = sorted(state)
  shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
            "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
  for name, shard_keys in shards.items():
    safetensors.numpy.save_file({k: state[k] for k in shard_keys}, str(tmp_path / name))
  index = {"weight_map": {k: name for name, shard_keys in shards.items() for k in shard_keys}}
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
  shutil.copy(FIXTURES / "hf" / "config.json", tmp_path / "config.json")
  _, params = load_sam_image_encoder(tmp_path)
  jax.tree.map(np.testing.assert_array_equal, params, loaded["hf"][1])
