"""Tests for the S-Seg model: shapes, dtypes, the causal text tower, EOS pooling, logit scale, DETR's sine
encoding and the mask head against numpy float64 references, and finite gradients."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sseg_demo
from ovseg_jax.models.layers import sine_position_encoding
from ovseg_jax.models.maskformer import MaskHead
from ovseg_jax.models.pixel_decoder import resize_nearest
from ovseg_jax.models.sseg import build_sseg
from ovseg_jax.models.vit import ViT, ViTBackbone

VOCAB, CONTEXT, EOT = 1000, 16, 999
BATCH, HEIGHT, WIDTH = 2, 32, 64  # Non-square, so the stride-32 memory has two positions (1x2).
TINY = dict(
    backbone=dict(patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64),
    pixel_decoder=dict(conv_dim=32, mask_dim=32),
    decoder=dict(num_queries=4, dim=32, num_heads=2, mlp_dim=64, num_layers=2, dropout_rate=0.1),
    text=dict(vocab_size=VOCAB, width=32, depth=2, num_heads=2, context_length=CONTEXT),
    embed_dim=24)


def _tokens(rng: np.random.Generator, batch: int) -> np.ndarray:
  """CLIP-like rows: random ids, EOT (the largest id) at a random position, zero padding after it."""
  tokens = np.zeros((batch, CONTEXT), np.int32)
  for row, eos in enumerate(rng.integers(2, CONTEXT - 2, size=batch)):
    tokens[row, :eos] = rng.integers(1, EOT, size=eos)
    tokens[row, eos] = EOT
  return tokens


@pytest.fixture(scope="module")
def tiny():
  rng = np.random.default_rng(0)
  model = build_sseg(TINY)
  images = jnp.asarray(rng.normal(size=(BATCH, HEIGHT, WIDTH, 3)), jnp.float32)
  tokens = jnp.asarray(_tokens(rng, BATCH))
  # One compiled initialisation for every test: the parameters do not depend on pool order or mask feature source.
  init = jax.jit(lambda k: model.init(k, images, tokens, train=False))
  params = init(jax.random.key(0))["params"]
  outputs = jax.jit(lambda p: model.apply({"params": p}, images, tokens, train=False))(params)
  return dict(model=model, init=init, params=params, images=images, tokens=tokens, outputs=outputs)


def test_output_shapes_and_dtypes(tiny):
  out, n, layers = tiny["outputs"], TINY["decoder"]["num_queries"], TINY["decoder"]["num_layers"]
  shapes = {k: v.shape for k, v in out.items()}
  assert shapes == {"pred_masks": (layers, BATCH, n, HEIGHT // 4, WIDTH // 4),
                    "mask_embeddings": (BATCH, n, 24), "image_embedding": (BATCH, 24),
                    "text_embedding": (BATCH, 24), "logit_scale": ()}
  assert all(v.dtype == jnp.float32 for v in out.values())
  model, params = tiny["model"], {"params": tiny["params"]}
  encode_text = lambda t: jax.eval_shape(lambda p: model.apply(p, t, method="encode_text"), params)
  text = encode_text(tiny["tokens"])
  assert text.shape == (BATCH, 24) and text.dtype == jnp.float32
  # A shorter token sequence uses the first rows of the position embeddings.
  assert encode_text(tiny["tokens"][:, :8]).shape == (BATCH, 24)


def test_encode_image_equals_call(tiny):
  model, params = tiny["model"], {"params": tiny["params"]}
  image_out = jax.jit(lambda p: model.apply(p, tiny["images"], method="encode_image"))(params)
  assert set(image_out) == {"pred_masks", "mask_embeddings", "image_embedding"}
  for name, value in image_out.items():
    np.testing.assert_allclose(value, tiny["outputs"][name], rtol=1e-5, atol=1e-5)


def test_pool_orders(tiny):
  """'project_then_mean' averages the mask embeddings; the paper's order projects the averaged features."""
  model, params = tiny["model"], {"params": tiny["params"]}
  mask_embeddings = tiny["outputs"]["mask_embeddings"]
  other = model.clone(pool_order="project_then_mean")
  out = jax.jit(lambda p: other.apply(p, tiny["images"], method="encode_image"))(params)
  np.testing.assert_allclose(out["image_embedding"], np.mean(mask_embeddings, axis=1), rtol=1e-5, atol=1e-6)
  assert not np.allclose(tiny["outputs"]["image_embedding"], out["image_embedding"], atol=1e-3)


def test_mask_pooled_features_average_pixel_embeddings_under_each_mask(tiny):
  """Each mask's feature is the sigmoid-mask-weighted mean of the pixel embeddings; the image embedding is
  the area-weighted mean of the mask embeddings (project_then_mean), checked in float64 numpy."""
  model = tiny["model"].clone(mask_feature_source="mask_pooled", pool_order="project_then_mean")
  params = tiny["init"](jax.random.key(3))
  out = jax.jit(lambda p: model.apply(p, tiny["images"], method="encode_image"))(params)
  pixels, _ = jax.jit(lambda p: model.apply(p, tiny["images"], method=lambda m, x: m.pixel_decoder(m.backbone(x))))(
      params)
  prob = 1 / (1 + np.exp(-np.asarray(out["pred_masks"][-1], np.float64)))
  area = prob.sum((-2, -1))
  pooled = np.einsum("bnhw,bhwc->bnc", prob, np.asarray(pixels, np.float64)) / (area[..., None] + 1e-6)
  projected = model.apply(params, jnp.asarray(pooled, jnp.float32), method=lambda m, f: m.image_projection(f))
  np.testing.assert_allclose(out["mask_embeddings"], projected, rtol=1e-4, atol=1e-5)
  weights = area / area.sum(1, keepdims=True)
  np.testing.assert_allclose(out["image_embedding"], np.einsum("bn,bnc->bc", weights, projected),
                             rtol=1e-4, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params():
  model = build_sseg({**TINY, "dtype": "bfloat16"})
  images, tokens = jnp.zeros((1, HEIGHT, WIDTH, 3)), jnp.zeros((1, CONTEXT), jnp.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), images, tokens, train=False))
  out = jax.eval_shape(lambda p: model.apply(p, images, tokens, train=False), params)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  assert out["pred_masks"].dtype == out["text_embedding"].dtype == jnp.bfloat16
  assert out["logit_scale"].dtype == jnp.float32


def test_text_tower_is_causal_and_pools_at_eos(tiny):
  model, params = tiny["model"], {"params": tiny["params"]}
  encode = jax.jit(lambda t: model.apply(params, t, method="encode_text", capture_intermediates=True))
  tokens = _tokens(np.random.default_rng(5), 4)
  eos = tokens.argmax(-1)
  assert len(set(eos)) > 1  # Rows pool at different positions.
  out, state = encode(tokens)
  final_ln = state["intermediates"]["text_encoder"]["ln_final"]["__call__"][0]
  pooled = state["intermediates"]["text_encoder"]["__call__"][0]
  np.testing.assert_array_equal(pooled, final_ln[np.arange(4), eos])

  after, before = tokens.copy(), tokens.copy()
  rows = np.arange(4)
  after[rows, eos + 1] = 7  # Padding after EOS: invisible to a causal model.
  before[rows, eos - 1] = np.where(tokens[rows, eos - 1] == 7, 8, 7)
  np.testing.assert_allclose(encode(after)[0], out, rtol=1e-6, atol=1e-6)
  assert np.all(np.abs(np.asarray(encode(before)[0]) - np.asarray(out)).max(-1) > 1e-4)


def test_logit_scale_init_and_clamp(tiny):
  model, params = tiny["model"], tiny["params"]
  scale = lambda log_scale: model.apply({"params": {**params, "logit_scale": log_scale}},
                                       method="logit_scale")
  np.testing.assert_allclose(model.apply({"params": params}, method="logit_scale"), 1 / 0.07, rtol=1e-6)
  np.testing.assert_allclose(scale(jnp.log(200.0)), 100.0)
  assert jax.grad(scale)(jnp.log(200.0)) == 0.0
  np.testing.assert_allclose(jax.grad(scale)(jnp.log(50.0)), 50.0, rtol=1e-5)


def _detr_position_embedding_sine(h, w, num_pos_feats, temperature=10000, scale=2 * math.pi):
  """numpy float64 transcription of DETR's PositionEmbeddingSine(normalize=True) on an unpadded mask."""
  not_mask = np.ones((1, h, w))
  y_embed, x_embed = not_mask.cumsum(1), not_mask.cumsum(2)
  eps = 1e-6
  y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
  x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
  dim_t = np.arange(num_pos_feats, dtype=np.float64)
  dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
  pos_x = x_embed[:, :, :, None] / dim_t
  pos_y = y_embed[:, :, :, None] / dim_t
  pos_x = np.stack((np.sin(pos_x[:, :, :, 0::2]), np.cos(pos_x[:, :, :, 1::2])), axis=4).reshape(1, h, w, -1)
  pos_y = np.stack((np.sin(pos_y[:, :, :, 0::2]), np.cos(pos_y[:, :, :, 1::2])), axis=4).reshape(1, h, w, -1)
  return np.concatenate((pos_y, pos_x), axis=3)[0]


def test_sine_position_encoding_matches_detr():
  rng = np.random.default_rng(1)
  for _ in range(3):
    h, w = rng.integers(1, 12, size=2)
    feats = 2 * int(rng.integers(2, 33))
    got = jax.jit(sine_position_encoding, static_argnums=(0, 1, 2))(int(h), int(w), feats)
    assert got.shape == (h, w, 2 * feats) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, _detr_position_embedding_sine(h, w, feats), atol=2e-6)
  with pytest.raises(ValueError, match="even"):
    sine_position_encoding(4, 4, 7)


def test_mask_head_is_embedding_dot_pixels():
  rng = np.random.default_rng(2)
  head = MaskHead(dim=16, mask_dim=8)
  queries = jnp.asarray(rng.normal(size=(3, 2, 5, 16)), jnp.float32)  # [layers, B, N, dim]
  pixels = jnp.asarray(rng.normal(size=(2, 6, 7, 8)), jnp.float32)
  params = head.init(jax.random.key(0), queries, pixels)
  masks = head.apply(params, queries, pixels)
  embeddings = np.asarray(head.apply(params, queries, method="embed"), np.float64)
  expected = np.einsum("lbnc,bhwc->lbnhw", embeddings, np.asarray(pixels, np.float64))
  assert masks.shape == (3, 2, 5, 6, 7)
  np.testing.assert_allclose(masks, expected, rtol=1e-5, atol=1e-5)


# Besides key biases (softmax over keys is invariant to them): the first decoder layer's targets are zero,
# so its self-attention values do not depend on the value kernel.
_NO_GRADIENT_BY_DESIGN = ("['decoder']['layer_0']['self_attn']['value']['kernel']",)


def test_gradients_are_finite_and_reach_every_parameter(tiny):
  model, rng = tiny["model"], np.random.default_rng(3)
  weights = {k: jnp.asarray(rng.normal(size=v.shape), jnp.float32) for k, v in tiny["outputs"].items()}

  def loss(params):  # Random weights: plain sums cancel through LayerNorm and give zero gradients.
    out = model.apply({"params": params}, tiny["images"], tiny["tokens"], train=True,
                      rngs={"dropout": jax.random.key(1)})
    return sum(jnp.mean(out[k] * weights[k]) for k in out)

  # Perturbed away from the initialisation, whose zero biases make some gradients vanish exactly.
  leaves, treedef = jax.tree.flatten(jax.device_get(tiny["params"]))  # Host arrays: no per-leaf device programs.
  params = treedef.unflatten([x + 0.05 * rng.normal(size=x.shape).astype(np.float32) for x in leaves])
  grads = jax.device_get(jax.jit(jax.grad(loss))(params))
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    name = jax.tree_util.keystr(path)
    assert np.all(np.isfinite(g)), name
    if not (name.endswith("['key']['bias']") or name in _NO_GRADIENT_BY_DESIGN):
      assert np.any(g != 0), f"no gradient reaches {name}"


def test_vit_pyramid_strides_and_position_resize():
  images = jnp.zeros((1, 64, 64, 3))
  for patch in (8, 16):
    backbone = ViTBackbone(patch, width=32, depth=1, num_heads=2, mlp_dim=32, out_dim=16)
    feats = jax.eval_shape(lambda: backbone.init_with_output(jax.random.key(0), images)[0])
    assert {s: f.shape for s, f in feats.items()} == {s: (1, 64 // s, 64 // s, 16) for s in (4, 8, 16, 32)}
  vit = ViT(patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=16)
  params = jax.jit(vit.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  tokens = jax.jit(vit.apply)(params, jnp.ones((1, 48, 40, 3)))  # Embeddings learned on 4x4, used on 6x5.
  assert tokens.shape == (1, 6, 5, 16) and np.all(np.isfinite(tokens))


def test_resize_nearest_matches_torch_rule():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(1, 3, 5, 2))
  got = resize_nearest(jnp.asarray(x), (7, 10))
  rows = np.floor(np.arange(7) * (3 / 7)).astype(int)  # torch: floor(dst * in / out)
  cols = np.floor(np.arange(10) * (5 / 10)).astype(int)
  np.testing.assert_array_equal(got, x[:, rows][:, :, cols].astype(np.float32))


def test_demo_config_builds():
  for variant in ("tiny", None):
    config = sseg_demo.get_config(variant)
    model = build_sseg(config.model)
    size, length = config.data.image_size, config.data.context_length
    out = jax.eval_shape(lambda: model.init_with_output(
        jax.random.key(0), jnp.zeros((2, size, size, 3)), jnp.zeros((2, length), jnp.int32), train=False)[0])
    d = config.model.decoder
    assert out["pred_masks"].shape == (d.num_layers, 2, d.num_queries, size // 4, size // 4)
    assert out["image_embedding"].shape == out["text_embedding"].shape == (2, config.model.embed_dim)


def test_bad_input_errors():
  with pytest.raises(ValueError, match="unknown keys \\['num_layer'\\]"):
    build_sseg({**TINY, "decoder": {**TINY["decoder"], "num_layer": 2}})
  with pytest.raises(ValueError, match="missing section 'text'"):
    build_sseg({k: v for k, v in TINY.items() if k != "text"})
  with pytest.raises(ValueError, match="model.dtype"):
    build_sseg({**TINY, "dtype": "float33"})
  model = build_sseg({**TINY, "pool_order": "max"})
  tokens = jnp.zeros((1, CONTEXT), jnp.int32)
  with pytest.raises(ValueError, match="pool_order"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), tokens))
  model = build_sseg(TINY)
  with pytest.raises(ValueError, match="divisible by patch_size=8"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 36, 36, 3)), tokens))
  with pytest.raises(ValueError, match="context_length=16"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                      jnp.zeros((1, CONTEXT + 1), jnp.int32)))
