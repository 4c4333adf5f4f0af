"""Swin backbone: window geometry against numpy, parity with timm's Swin (committed fixture), weight files."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ovseg_jax.models import swin
from ovseg_jax.models.backbones import VIT_VARIANTS
from ovseg_jax.models.vit import ViT
from ovseg_jax.weights import swin as swin_weights

FIXTURES = Path(__file__).parent / "fixtures" / "swin"
TINY = dict(embed_dim=8, depths=(2, 2, 2, 2), heads=(1, 1, 2, 2))
SUBSAMPLE = (3, 2, 1, 1)  # As written by tools/make_swin_fixtures.py.


def test_relative_position_index_by_enumeration():
  w = 3
  index = swin.relative_position_index(w)
  coords = [(i, j) for i in range(w) for j in range(w)]
  for q, (qi, qj) in enumerate(coords):
    for k, (ki, kj) in enumerate(coords):
      assert index[q, k] == (qi - ki + w - 1) * (2 * w - 1) + (qj - kj + w - 1)


def test_shifted_window_mask_separates_regions_the_roll_joined():
  h, w, ws, shift = 8, 12, 4, 2
  mask = swin.shifted_window_mask(h, w, ws, shift)
  # Independent construction: a pixel of the rolled map came from original row (r + shift) mod h; two pixels
  # may attend iff they came from the same side of each wrap-around seam.
  rows = (np.arange(h) + shift) % h
  cols = (np.arange(w) + shift) % w
  row_side = (rows >= h - shift).astype(int) + (np.arange(h) >= h - ws).astype(int)
  col_side = (cols >= w - shift).astype(int) + (np.arange(w) >= w - ws).astype(int)
  region = row_side[:, None] * 3 + col_side[None, :]
  n = 0
  for wi in range(h // ws):
    for wj in range(w // ws):
      r = region[wi * ws:(wi + 1) * ws, wj * ws:(wj + 1) * ws].reshape(-1)
      np.testing.assert_array_equal(mask[n] == 0, r[:, None] == r[None, :])
      n += 1
  assert mask.shape == (n, ws * ws, ws * ws) and set(np.unique(mask)) == {0.0, -100.0}


@pytest.fixture(scope="module")
def tiny_model():
  return swin.Swin(TINY["embed_dim"], TINY["depths"], TINY["heads"], output_norms=False)


def test_stage_outputs_equal_timm(tiny_model):
  params = swin_weights.read_swin(FIXTURES / "timm_swin_tiny.safetensors", **TINY)
  images = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype(np.float32)
  outputs = jax.jit(lambda p, x: tiny_model.apply({"params": p}, x))(params, images)
  reference = np.load(FIXTURES / "timm_swin_tiny_outputs.npz")
  for i, stride in enumerate((4, 8, 16, 32)):
    ours = np.asarray(outputs[stride])[:, ::SUBSAMPLE[i], ::SUBSAMPLE[i]]
    ref = reference[f"stride{stride}"]
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours - ref)) / np.max(np.abs(ref)) < 1e-4, stride


def test_released_layout_reads_the_same_weights(tmp_path):
  """The released layout stores patch merging at the end of stages 0-2 and nests weights under 'model'."""
  timm_state = load_file(FIXTURES / "timm_swin_tiny.safetensors")
  released = {}
  for key, value in timm_state.items():
    m = key.split(".")
    if len(m) > 2 and m[0] == "layers" and m[2] == "downsample":
      key = ".".join(["layers", str(int(m[1]) - 1), *m[2:]])
    released["backbone." + key] = value
  released["backbone.norm1.weight"] = np.full(16, 2.0, np.float32)
  released["backbone.norm1.bias"] = np.zeros(16, np.float32)
  save_file(released, str(tmp_path / "released.safetensors"))
  a = swin_weights.read_swin(FIXTURES / "timm_swin_tiny.safetensors", **TINY)
  b = swin_weights.read_swin(tmp_path / "released.safetensors", **TINY)
  assert set(b) == set(a) | {"norm1"}
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves({k: v for k, v in b.items() if k != "norm1"})):
    np.testing.assert_array_equal(x, y)


def test_wrong_and_truncated_files_are_named(tmp_path):
  with pytest.raises(ValueError, match=r"timm_swin_tiny\.safetensors: expected a Swin-T .*wrong shapes"):
    swin_weights.read_swin(FIXTURES / "timm_swin_tiny.safetensors", *swin.VARIANTS["Swin-T"])
  truncated = tmp_path / "cut.safetensors"
  truncated.write_bytes((FIXTURES / "timm_swin_tiny.safetensors").read_bytes()[:5000])
  with pytest.raises(Exception, match="cut.safetensors"):
    swin_weights.read_swin(truncated, **TINY)
  with pytest.raises(FileNotFoundError, match="missing.pth"):
    swin_weights.read_swin(tmp_path / "missing.pth", **TINY)


def _count(model) -> int:
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("variant", ["Swin-T", "Swin-S", "Swin-B", "ViT-S/16", "ViT-B/16", "ViT-L/14"])
def test_parameter_counts_equal_timm(variant):
  """Counts of timm's models (tools/count_reference_parameters.py) reduced to the parts these backbones have."""
  counts = json.loads((FIXTURES.parent / "parameter_counts.json").read_text())
  if variant.startswith("Swin"):
    model = swin.swin(variant)
  else:
    patch, width, depth, heads = VIT_VARIANTS[variant.removeprefix("ViT-")]
    model = ViT(patch, width, depth, heads, 4 * width)
  assert _count(model) == counts[variant]


def test_any_input_size_and_drop_path_only_in_training():
  model = swin.Swin(8, (2, 2), (1, 2), drop_path_rate=0.5)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 50, 38, 3)), jnp.float32)
  params = jax.jit(model.init)(jax.random.key(0), x)
  apply = jax.jit(model.apply, static_argnames="train")
  out = apply(params, x)
  assert out[4].shape == (2, 13, 10, 8) and out[8].shape == (2, 7, 5, 16)
  again = apply(params, x)
  np.testing.assert_array_equal(out[8], again[8])
  trained = apply(params, x, train=True, rngs={"dropout": jax.random.key(3)})
  assert not np.allclose(trained[8], out[8])


def test_bfloat16_compute_is_close_to_float32_with_float32_params():
  model = swin.Swin(8, (2, 2), (1, 2))
  x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 56, 56, 3)), jnp.float32)
  params = jax.jit(model.init)(jax.random.key(0), x)
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  full = jax.jit(model.apply)(params, x)[8]
  half = jax.jit(swin.Swin(8, (2, 2), (1, 2), dtype=jnp.bfloat16).apply)(params, x)[8]
  assert half.dtype == jnp.bfloat16
  assert float(jnp.max(jnp.abs(half.astype(jnp.float32) - full)) / jnp.max(jnp.abs(full))) < 5e-2
