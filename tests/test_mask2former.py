"""Mask2Former: parity with Hugging Face's `Mask2FormerForUniversalSegmentation` on the tiny random checkpoints
(Swin and ResNet backbones) in tests/fixtures/mask2former (made by tools/make_mask2former_fixtures.py), the
same models read from detectron2 and timm key layouts, bilinear sampling against
`F.grid_sample`, the masked-attention rule, and clear errors for bad directories."""
import json
import pickle
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ovseg_jax.models import deformable_attention, resize
from ovseg_jax.models.mask2former_decoder import MaskedAttentionDecoder, cross_attention_mask
from ovseg_jax.weights.mask2former import load_mask2former

FIXTURES = Path(__file__).parent / "fixtures" / "mask2former"


def _relative_error(actual, expected):
  return float(np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected)))


@pytest.fixture(scope="module")
def reference():
  return dict(np.load(FIXTURES / "reference.npz"))


@pytest.fixture(scope="module")
def loaded():
  return load_mask2former(FIXTURES / "hf")


@pytest.fixture(scope="module")
def run(loaded, reference):
  """(outputs, the backbone's and the pixel decoder's outputs) from one compiled forward pass."""
  module, params = loaded
  capture = lambda mdl, method: method == "__call__" and mdl.name in ("backbone", "pixel_decoder")
  forward = lambda p, x: module.apply({"params": p}, x, capture_intermediates=capture, mutable=["intermediates"])
  outputs, state = jax.jit(forward)(params, reference["images"])
  captured = state["intermediates"]
  return outputs, captured["backbone"]["__call__"][0], captured["pixel_decoder"]["__call__"][0]


@pytest.fixture(scope="module")
def outputs(run):
  return run[0]


def test_grid_sample_equals_torch(reference):
  ours = deformable_attention.grid_sample_bilinear(jnp.asarray(reference["grid_image"]),
                                                   jnp.asarray(reference["grid_points"]))
  np.testing.assert_allclose(ours, reference["grid_output"], atol=1e-6)
  outside = np.abs(reference["grid_points"]).min(-1) > 1 + 1 / 5  # Every corner off the 5x7 map.
  assert outside.any() and np.all(np.asarray(ours)[outside] == 0)


def test_multi_scale_deformable_attention_equals_reference(reference):
  shapes = [tuple(int(v) for v in s) for s in reference["msda_shapes"]]
  ours = deformable_attention.multi_scale_deformable_attention(
      jnp.asarray(reference["msda_value"]), shapes, jnp.asarray(reference["msda_locations"]),
      jnp.asarray(reference["msda_weights"]))
  np.testing.assert_allclose(ours, reference["msda_output"], atol=1e-5)


def test_bilinear_resize_matrix_by_hand():
  np.testing.assert_allclose(resize.linear_resize_matrix(2, 4),
                             [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
  np.testing.assert_allclose(resize.linear_resize_matrix(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
  x = jnp.arange(24.0).reshape(1, 2, 3, 4)
  assert resize.resize_bilinear(x, (4, 6)).shape == (1, 4, 6, 4)
  np.testing.assert_allclose(resize.resize_bilinear(x, (4, 6))[0, :, 0, 0], [0, 3, 9, 12])


def test_outputs_equal_hugging_face(outputs, reference):
  assert outputs["pred_logits"].shape == (2, 8, 6) and outputs["pred_masks"].shape == (2, 8, 16, 24)
  assert _relative_error(outputs["pred_logits"], reference["class_queries_logits"]) < 1e-4
  assert _relative_error(outputs["pred_masks"], reference["masks_queries_logits"]) < 1e-4
  assert len(outputs["aux_outputs"]) == 3
  for i, aux in enumerate(outputs["aux_outputs"]):
    assert _relative_error(aux["pred_logits"], reference[f"aux_{i}_class_queries_logits"]) < 1e-4, i
    assert _relative_error(aux["pred_masks"], reference[f"aux_{i}_masks_queries_logits"]) < 1e-4, i
  assert _relative_error(outputs["mask_features"], reference["mask_features"]) < 1e-4


def test_backbone_and_pixel_decoder_equal_hugging_face(run, reference):
  _, features, (mask_features, multi_scale) = run
  for stride in (4, 8, 16, 32):
    assert _relative_error(features[stride], reference[f"backbone_stride{stride}"]) < 1e-4, stride
  assert _relative_error(mask_features, reference["mask_features"]) < 1e-4
  assert [m.shape[1:3] for m in multi_scale] == [(2, 3), (4, 6), (8, 12)]  # Coarsest first.
  for i, level in enumerate(multi_scale):
    assert _relative_error(level, reference[f"multi_scale_{i}"]) < 1e-4, i


def test_cross_attention_mask_rule():
  logits = jnp.asarray([[[[-1.0, -2.0], [-0.5, -3.0]],  # Empty mask: attends everywhere.
                         [[2.0, -1.0], [0.0, -0.1]],  # sigmoid(0) = 0.5 is kept, only < 0.5 is masked.
                         [[1.0, 1.0], [1.0, 1.0]]]])
  np.testing.assert_array_equal(cross_attention_mask(logits, (2, 2))[0],
                                [[True] * 4, [True, False, True, False], [True] * 4])
  # Resized first (bilinear, 4x4 -> 2x2 averages 2x2 blocks): only the top-left block is positive.
  big = jnp.full((1, 1, 4, 4), -1.0).at[0, 0, :2, :2].set(3.0)
  np.testing.assert_array_equal(cross_attention_mask(big, (2, 2))[0, 0], [True, False, False, False])


def test_headless_model_directory(tmp_path, reference):
  """A `Mask2FormerModel` directory (no class head, no `model.` prefix) loads with num_classes=0."""
  state = {k.removeprefix("model."): v for k, v in load_file(FIXTURES / "hf" / "model.safetensors").items()
           if not k.startswith(("class_predictor.", "criterion."))}
  save_file(state, str(tmp_path / "model.safetensors"))
  shutil.copy(FIXTURES / "hf" / "config.json", tmp_path / "config.json")
  module, params = load_mask2former(tmp_path)
  assert module.decoder.num_classes == 0 and "class_embed" not in params["decoder"]
  out = jax.jit(lambda p, x: module.apply({"params": p}, x))(params, reference["images"][:1])
  assert "pred_logits" not in out and out["query_embeddings"].shape == (1, 8, 32)
  assert _relative_error(out["pred_masks"], reference["masks_queries_logits"][:1]) < 1e-4


def test_newer_transformers_key_names_and_bin_file(tmp_path, loaded):
  """Keys as newer transformers name them in memory read the same; `pytorch_model.bin` is found too."""
  renames = [("encoder.encoder.", "encoder.swin.encoder."), ("encoder.embeddings.", "encoder.swin.embeddings."),
             ("attention.self.query", "attention.q_proj"), ("attention.output.dense", "attention.o_proj"),
             ("attention.self.relative_position_bias_table", "attention.relative_position_bias."
              "relative_position_bias_table"), ("intermediate.dense", "mlp.fc1")]
  state = {}
  for key, value in load_file(FIXTURES / "hf" / "model.safetensors").items():
    if key.startswith("model.pixel_level_module.encoder."):
      for old, new in renames:
        key = key.replace(old, new)
    state[key] = value
  assert any("q_proj" in k for k in state) and any("swin.encoder" in k for k in state)
  save_file(state, str(tmp_path / "pytorch_model.bin"))  # Read by content, whatever its name.
  shutil.copy(FIXTURES / "hf" / "config.json", tmp_path / "config.json")
  _, params = load_mask2former(tmp_path)
  for a, b in zip(jax.tree.leaves(loaded[1]), jax.tree.leaves(params), strict=True):
    np.testing.assert_array_equal(a, b)


def test_decoder_gradients_are_finite_when_every_mask_is_empty():
  """Masked attention uses -inf logits; queries whose masks are empty everywhere attend to every pixel
  instead, so neither outputs nor gradients turn into NaN."""
  decoder = MaskedAttentionDecoder(num_classes=3, num_queries=4, hidden_dim=16, num_heads=2, ffn_dim=32,
                                   num_layers=2, mask_dim=16)
  rng = np.random.default_rng(0)
  multi_scale = [jnp.asarray(rng.normal(size=(1, s, s + 1, 16)), jnp.float32) for s in (2, 4, 8)]
  mask_features = -jnp.ones((1, 16, 18, 16))
  params = jax.jit(decoder.init)(jax.random.key(0), multi_scale, mask_features)["params"]
  head = params["mask_embed"]["dense_2"]
  params["mask_embed"]["dense_2"] = {"kernel": jnp.zeros_like(head["kernel"]), "bias": jnp.ones_like(head["bias"])}
  forward = lambda p, x: decoder.apply({"params": p}, x, mask_features)
  loss = lambda p, x: jnp.mean(forward(p, x)["pred_logits"] ** 2)
  out, grads = jax.jit(lambda p, x: (forward(p, x), jax.grad(loss, argnums=(0, 1))(p, x)))(params, multi_scale)
  assert all(bool(jnp.all(a["pred_masks"] < 0)) for a in out["aux_outputs"])  # Every mask empty.
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads[1][0]).max()) > 0  # The memory is still attended to.


def test_sampling_gradients_reach_the_offsets():
  attention = deformable_attention.MSDeformAttn(dim=8, num_levels=2, num_heads=2, num_points=2)
  shapes = ((3, 4), (2, 2))
  rng = np.random.default_rng(1)
  query = jnp.asarray(rng.normal(size=(1, 16, 8)), jnp.float32)
  reference = jnp.asarray(rng.uniform(size=(1, 16, 2, 2)), jnp.float32)
  params = jax.jit(lambda key: attention.init(key, query, reference, query, shapes))(jax.random.key(0))["params"]
  loss = lambda p: jnp.sum(attention.apply({"params": p}, query, reference, query, shapes) ** 2)
  grads = jax.jit(jax.grad(loss))(params)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads["sampling_offsets"]["kernel"]).max()) > 0


def test_bad_directories_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere: no such file or directory"):
    load_mask2former(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=r"config.json and model.safetensors or pytorch_model.bin"):
    load_mask2former(tmp_path)
  config = json.loads((FIXTURES / "hf" / "config.json").read_text())
  shutil.copy(FIXTURES / "hf" / "model.safetensors", tmp_path / "model.safetensors")
  (tmp_path / "config.json").write_text(json.dumps({**config, "backbone_config": {
      **config["backbone_config"], "model_type": "vit"}}))
  with pytest.raises(ValueError, match=r"config.json: not a supported .*backbone_config.model_type 'vit'"):
    load_mask2former(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({**config, "num_queries": 9}))
  with pytest.raises(ValueError, match=r"model.safetensors: expected a Mask2Former .*queries_embedder.weight"):
    load_mask2former(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps(config))
  state = load_file(FIXTURES / "hf" / "model.safetensors")
  del state["model.transformer_module.decoder.layers.1.fc2.bias"]
  save_file(state, str(tmp_path / "model.safetensors"))
  with pytest.raises(ValueError, match=r"missing keys: model.transformer_module.decoder.layers.1.fc2.bias"):
    load_mask2former(tmp_path)
  (tmp_path / "model.safetensors").write_bytes((FIXTURES / "hf" / "model.safetensors").read_bytes()[:4000])
  with pytest.raises(Exception, match="model.safetensors"):
    load_mask2former(tmp_path)


def _detectron2_state(hf: dict) -> dict:
  """The fixture's weights under the names of Mask2Former's own modules (detectron2 checkpoints)."""
  rules = [
      (r"model\.pixel_level_module\.encoder\.embeddings\.patch_embeddings\.projection\.", "backbone.patch_embed.proj."),
      (r"model\.pixel_level_module\.encoder\.embeddings\.norm\.", "backbone.patch_embed.norm."),
      (r"model\.pixel_level_module\.encoder\.encoder\.layers\.", "backbone.layers."),
      (r"model\.pixel_level_module\.encoder\.hidden_states_norms\.stage(\d)\.",
       lambda m: f"backbone.norm{int(m.group(1)) - 1}."),
      (r"layernorm_before", "norm1"), (r"layernorm_after", "norm2"), (r"attention\.output\.dense", "attn.proj"),
      (r"attention\.self\.relative_position_bias_table", "attn.relative_position_bias_table"),
      (r"intermediate\.dense", "mlp.fc1"), (r"blocks\.(\d+)\.output\.dense", r"blocks.\1.mlp.fc2"),
      (r"model\.pixel_level_module\.decoder\.", "sem_seg_head.pixel_decoder."),
      (r"pixel_decoder\.input_projections\.", "pixel_decoder.input_proj."),
      (r"pixel_decoder\.level_embed", "pixel_decoder.transformer.level_embed"),
      (r"pixel_decoder\.encoder\.", "pixel_decoder.transformer.encoder."),
      (r"encoder\.layers\.(\d+)\.self_attn_layer_norm", r"encoder.layers.\1.norm1"),
      (r"encoder\.layers\.(\d+)\.final_layer_norm", r"encoder.layers.\1.norm2"),
      (r"encoder\.layers\.(\d+)\.fc(\d)", r"encoder.layers.\1.linear\2"),
      (r"(adapter|layer)_1\.0\.", r"\1_1."), (r"(adapter|layer)_1\.1\.", r"\1_1.norm."),
      (r"mask_projection", "mask_features"),
      (r"model\.transformer_module\.", "sem_seg_head.predictor."), (r"queries_features", "query_feat"),
      (r"queries_embedder", "query_embed"), (r"decoder\.layernorm", "decoder_norm"),
      (r"decoder\.mask_predictor\.mask_embedder\.(\d)\.0\.", r"mask_embed.layers.\1."),
      (r"decoder\.layers\.(\d+)\.cross_attn\.", r"transformer_cross_attention_layers.\1.multihead_attn."),
      (r"decoder\.layers\.(\d+)\.cross_attn_layer_norm\.", r"transformer_cross_attention_layers.\1.norm."),
      (r"decoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"transformer_self_attention_layers.\1.self_attn.out_proj."),
      (r"decoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"transformer_self_attention_layers.\1.norm."),
      (r"decoder\.layers\.(\d+)\.fc(\d)\.", r"transformer_ffn_layers.\1.linear\2."),
      (r"decoder\.layers\.(\d+)\.final_layer_norm\.", r"transformer_ffn_layers.\1.norm."),
      (r"^class_predictor\.", "sem_seg_head.predictor.class_embed."),
      # ResNet: Hugging Face's names -> detectron2's.
      (r"model\.pixel_level_module\.encoder\.embedder\.embedder\.convolution\.", "backbone.stem.conv1."),
      (r"model\.pixel_level_module\.encoder\.embedder\.embedder\.normalization\.", "backbone.stem.conv1.norm."),
      (r"model\.pixel_level_module\.encoder\.encoder\.stages\.(\d)\.layers\.(\d+)\.",
       lambda m: f"backbone.res{int(m.group(1)) + 2}.{m.group(2)}."),
      (r"\.layer\.(\d)\.convolution\.", lambda m: f".conv{int(m.group(1)) + 1}."),
      (r"\.layer\.(\d)\.normalization\.", lambda m: f".conv{int(m.group(1)) + 1}.norm."),
      (r"\.shortcut\.convolution\.", ".shortcut."), (r"\.shortcut\.normalization\.", ".shortcut.norm.")]
  out, fused = {}, {}
  for key, value in hf.items():
    if key.endswith("num_batches_tracked"):  # detectron2's frozen norms count nothing.
      continue
    if m := re.match(r"(.*blocks\.\d+)\.attention\.self\.(query|key|value)\.(weight|bias)", key):
      fused.setdefault((m.group(1) + ".attn.qkv", m.group(3)), {})[m.group(2)] = value
      continue
    if m := re.match(r".*decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
      name = f"sem_seg_head.predictor.transformer_self_attention_layers.{m.group(1)}.self_attn.in_proj"
      fused.setdefault((name, m.group(3)), {})[m.group(2)] = value
      continue
    for pattern, replacement in rules:
      key = re.sub(pattern, replacement, key)
    out[key] = value
  for (name, kind), parts in fused.items():
    order = ("query", "key", "value") if "qkv" in name else "qkv"
    hf_key = f"{name}.{kind}" if "qkv" in name else f"{name}_{kind}"
    for pattern, replacement in rules[:4]:
      hf_key = re.sub(pattern, replacement, hf_key)
    out[hf_key] = np.concatenate([parts[p] for p in order])
  return out


def _same_model_from_detectron2(tmp_path, hf_directory, loaded, keys):
  """The fixture's weights under detectron2's names (with `keys` among them) load as the same model."""
  state = _detectron2_state(load_file(FIXTURES / hf_directory / "model.safetensors"))
  assert all(k in state for k in keys), keys
  with open(tmp_path / "model_final.pkl", "wb") as f:
    pickle.dump({"model": state, "__author__": "test"}, f)
  module, params = load_mask2former(tmp_path / "model_final.pkl")
  assert module == loaded[0]
  for a, b in zip(jax.tree.leaves(loaded[1]), jax.tree.leaves(params), strict=True):
    np.testing.assert_array_equal(a, b)


def test_detectron2_checkpoint_reads_the_same_model(tmp_path, loaded):
  _same_model_from_detectron2(tmp_path, "hf", loaded,
                              ["backbone.layers.0.blocks.1.attn.qkv.weight", "backbone.norm3.bias"])
  with open(tmp_path / "evil.pkl", "wb") as f:
    pickle.dump({"model": {"x": print}}, f)
  with pytest.raises(ValueError, match="evil.pkl: the pickle calls `builtins.print`.*could run arbitrary code"):
    load_mask2former(tmp_path / "evil.pkl")


@pytest.fixture(scope="module")
def resnet():
  """(reference outputs, (module, params)) of the ResNet-backed fixture."""
  return dict(np.load(FIXTURES / "reference_resnet.npz")), load_mask2former(FIXTURES / "hf_resnet")


def test_resnet_backed_model_equals_hugging_face(resnet):
  resnet_reference, (module, params) = resnet
  assert type(module.backbone).__name__ == "ResNet" and module.backbone.depths == (1, 2, 1, 1)
  capture = lambda mdl, method: method == "__call__" and mdl.name == "backbone"
  forward = lambda p, x: module.apply({"params": p}, x, capture_intermediates=capture, mutable=["intermediates"])
  outputs, state = jax.jit(forward)(params, resnet_reference["images"])
  features = state["intermediates"]["backbone"]["__call__"][0]
  for stride in (4, 8, 16, 32):
    assert _relative_error(features[stride], resnet_reference[f"backbone_stride{stride}"]) < 1e-4, stride
  assert _relative_error(outputs["pred_logits"], resnet_reference["class_queries_logits"]) < 1e-4
  assert _relative_error(outputs["pred_masks"], resnet_reference["masks_queries_logits"]) < 1e-4
  for i, aux in enumerate(outputs["aux_outputs"]):
    assert _relative_error(aux["pred_masks"], resnet_reference[f"aux_{i}_masks_queries_logits"]) < 1e-4, i

def test_detectron2_resnet_checkpoint_reads_the_same_model(tmp_path, resnet):
  _same_model_from_detectron2(tmp_path, "hf_resnet", resnet[1],
                              ["backbone.res3.1.conv2.norm.running_var", "backbone.res2.0.shortcut.weight"])


def test_timm_resnet_backbone_directory(tmp_path, resnet):
  """transformers' TimmBackbone holds timm's (torchvision's) ResNet names under `_backbone.`."""
  resnet_loaded = resnet[1]
  rules = [(r"embedder\.embedder\.convolution\.", "conv1."), (r"embedder\.embedder\.normalization\.", "bn1."),
           (r"encoder\.stages\.(\d)\.layers\.", lambda m: f"layer{int(m.group(1)) + 1}."),
           (r"\.layer\.(\d)\.convolution\.", lambda m: f".conv{int(m.group(1)) + 1}."),
           (r"\.layer\.(\d)\.normalization\.", lambda m: f".bn{int(m.group(1)) + 1}."),
           (r"\.shortcut\.convolution\.", ".downsample.0."), (r"\.shortcut\.normalization\.", ".downsample.1.")]
  prefix = "model.pixel_level_module.encoder."
  state = {}
  for key, value in load_file(FIXTURES / "hf_resnet" / "model.safetensors").items():
    if key.startswith(prefix):
      key = key.removeprefix(prefix)
      for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
      key = f"{prefix}_backbone.{key}"
    state[key] = value
  assert f"{prefix}_backbone.layer2.1.bn3.running_mean" in state
  save_file(state, str(tmp_path / "model.safetensors"))
  config = json.loads((FIXTURES / "hf_resnet" / "config.json").read_text())
  config["backbone_config"] = {"model_type": "timm_backbone", "backbone": "resnet50", "out_indices": [1, 2, 3, 4],
                               "features_only": True, "num_channels": 3}
  (tmp_path / "config.json").write_text(json.dumps(config))
  module, params = load_mask2former(tmp_path)
  assert module == resnet_loaded[0]
  for a, b in zip(jax.tree.leaves(resnet_loaded[1]), jax.tree.leaves(params), strict=True):
    np.testing.assert_array_equal(a, b)
  deep_stem = {k.replace("_backbone.conv1.", "_backbone.conv1.0."): v for k, v in state.items()}
  save_file(deep_stem, str(tmp_path / "model.safetensors"))
  with pytest.raises(ValueError, match=r"timm backbone 'resnet50' has no .*conv1.weight; only ResNets with the 7x7"):
    load_mask2former(tmp_path)
  config["backbone_config"]["out_indices"] = [2, 3, 4]
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"backbone_config.out_indices \[2, 3, 4\] \(expected \[1, 2, 3, 4\]\)"):
    load_mask2former(tmp_path)
