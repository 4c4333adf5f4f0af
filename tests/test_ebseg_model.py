"""EBSeg's model pieces against float64 numpy transcriptions of the released code (slonetime/EBSeg): the CLIP branch
(layer features, SAN's recognition head with its bias matrix, CLIP Surgery's value-value stream) and adaptive max
pooling; the whole model's outputs and shapes."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovseg_jax.models import clip_surgery
from ovseg_jax.models.clip import CLIP, ClipArchitecture

ARCH = ClipArchitecture(embed_dim=12, image_size=32, patch_size=8, vision_width=16, vision_layers=6, vision_heads=2,
                        context_length=8, vocab_size=64, text_width=8, text_layers=1, text_heads=2)
FIRST = 4  # Recognition blocks 4..5; fused features after blocks 1..4; value-value stream from block 1 (6 // 6).


def _ln(x, p, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * p["scale"] + p["bias"]


def _dense(x, p):
  return x @ p["kernel"] + p["bias"]


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _attn(q, k, v, heads, mask=None):
  """The released `Attention`: (q @ k^T) * scale (+ attn_mask), softmax, @ v; tokens [N, B, C]."""
  n, b, c = q.shape
  split = lambda t: t.reshape(n, b, heads, c // heads).transpose(1, 2, 0, 3)
  logits = split(q) @ split(k).transpose(0, 1, 3, 2) * (c // heads) ** -0.5
  if mask is not None:
    logits = logits + mask
  return (_softmax(logits) @ split(v)).transpose(2, 0, 1, 3).reshape(n, b, c)


def _block(x, p, heads, mask=None, surgery=None):
  """`Surgery_ResidualAttentionBlock.forward`: plain when `surgery` is None, else the list form [x, x_ori]."""
  y = _ln(x, p["ln_1"])
  q, k, v = np.split(_dense(y, p["in_proj"]), 3, axis=-1)
  x_ori = x + _dense(_attn(q, k, v, heads, mask), p["out_proj"])
  h = _dense(_ln(x_ori, p["ln_2"]), p["c_fc"])
  x_ori = x_ori + _dense(h * (1 / (1 + np.exp(-1.702 * h))), p["c_proj"])
  if surgery is None:
    return x_ori
  return surgery + _dense(_attn(v, v, v, heads, mask), p["out_proj"]), x_ori  # k = v; q = k


def _reference(params, images, biases, inference):
  """CLIP_surgery_FeatureExtractor (last_layer_idx=FIRST) then CLIP_surgery_RecWithAttnbiasHead (first_layer_idx=
  FIRST), token-first [N, B, C] as there. Returns (saved features {i: [B, h, w, C]}, B, D or None)."""
  v = jax.tree.map(lambda a: np.asarray(a, np.float64), params["visual"])
  b, s = images.shape[0], images.shape[1] // ARCH.patch_size
  patches = images.reshape(b, s, 8, s, 8, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, s * s, -1)
  x = patches @ v["conv1"]["kernel"].reshape(-1, ARCH.vision_width)  # The 32 px image needs no position resize.
  x = np.concatenate([np.broadcast_to(v["class_embedding"], (b, 1, ARCH.vision_width)), x], 1)
  x = _ln(x + v["positional_embedding"], v["ln_pre"]).transpose(1, 0, 2)
  saved, surgery = {0: x}, None
  for i in range(1, FIRST + 1):  # 1-based as released; blocks i > layers / 6 take the dual path at inference.
    p = v[f"resblocks_{i - 1}"]
    if inference and i > ARCH.vision_layers // 6:
      surgery, x = _block(x, p, ARCH.vision_heads, surgery=x if surgery is None else surgery)
    else:
      x = _block(x, p, ARCH.vision_heads)
    saved[i] = x
  q, length = biases.shape[2], s * s
  pooled = biases.reshape(b, ARCH.vision_heads, q, s, biases.shape[3] // s, s, biases.shape[4] // s).max((4, 6))
  n = q + 1 + length
  mask = np.zeros((b, ARCH.vision_heads, n, n))  # `_build_attn_biases` (its three matrices are one tensor).
  mask[..., :, :q] = -100
  mask[..., np.arange(q), np.arange(q)] = 0
  mask[..., :q, q] = -100
  mask[..., :q, -length:] = pooled.reshape(b, ARCH.vision_heads, q, length)
  x = saved[FIRST]
  x = np.concatenate([np.repeat(x[:1], q, 0), x])
  if inference:
    surgery = np.concatenate([np.repeat(surgery[:1], q, 0), surgery])
  for i in range(FIRST, ARCH.vision_layers):
    p = v[f"resblocks_{i}"]
    if inference:
      surgery, x = _block(x, p, ARCH.vision_heads, mask, surgery)
    else:
      x = _block(x, p, ARCH.vision_heads, mask)
  unit = lambda t: t / np.linalg.norm(t, axis=-1, keepdims=True)
  emb = unit(_ln(x[:q].transpose(1, 0, 2), v["ln_post"]) @ v["proj"])
  dense = None
  if inference:
    dense = unit(_ln(surgery[q + 1:].transpose(1, 0, 2), v["ln_post"]) @ v["proj"]).reshape(b, s, s, -1)
  grids = {i: t[1:].transpose(1, 0, 2).reshape(b, s, s, -1) for i, t in saved.items()}
  return grids, emb, dense


@pytest.fixture(scope="module")
def clip_setup():
  model = CLIP(ARCH)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  params = jax.jit(lambda k, x: model.init(k, x, method="encode_image"))(jax.random.key(1), images)["params"]
  # Non-zero biases and norm affines, so every parameter's role is checked.
  params = jax.tree.map(lambda a: np.asarray(a) + 0.1 * rng.normal(size=a.shape).astype(np.float32), params)
  biases = (3 * rng.normal(size=(2, ARCH.vision_heads, 5, 8, 8))).astype(np.float32)
  return model, params, images, biases


@pytest.mark.parametrize("inference", [False, True])
def test_clip_branch_matches_released_transcription(clip_setup, inference):
  model, params, images, biases = clip_setup

  def run(module, images, biases):
    tokens, surgery, grid = clip_surgery.layer_features(module.visual, images, FIRST, inference)
    emb, dense = clip_surgery.recognize(module.visual, tokens, surgery, FIRST, biases, grid)
    return [clip_surgery.grid_tokens(t, grid) for t in tokens], emb, dense

  tokens, emb, dense = jax.jit(nn.apply(run, model))({"params": params}, images, biases)
  grids, ref_emb, ref_dense = _reference(params, images.astype(np.float64), biases.astype(np.float64), inference)
  for i in range(FIRST + 1):
    np.testing.assert_allclose(tokens[i], grids[i], atol=2e-4, err_msg=f"features after block {i}")
  np.testing.assert_allclose(emb, ref_emb, atol=2e-5)
  assert (dense is None) == (not inference)
  if inference:
    np.testing.assert_allclose(dense, ref_dense, atol=2e-5)


def test_recognition_embeddings_follow_their_biases(clip_setup):
  """B depends on each query's own bias map: changing query 0's changes its embedding and no other query's."""
  model, params, images, biases = clip_setup

  def run(module, biases):
    tokens, _, grid = clip_surgery.layer_features(module.visual, images, FIRST, False)
    return clip_surgery.recognize(module.visual, tokens, None, FIRST, biases, grid)[0]

  apply = jax.jit(nn.apply(run, model))
  changed = biases.copy()
  changed[:, :, 0] = -changed[:, :, 0]
  before, after = apply({"params": params}, biases), apply({"params": params}, changed)
  assert np.abs(before[:, 0] - after[:, 0]).max() > 1e-3
  np.testing.assert_allclose(before[:, 1:], after[:, 1:], atol=1e-6)


def _pytorch_windows(size, out):
  """(i, j, rows, cols) of PyTorch's adaptive pooling windows: [floor(i * H / h), ceil((i + 1) * H / h))."""
  for i, j in np.ndindex(*out):
    r0, r1 = (i * size[0]) // out[0], -(-((i + 1) * size[0]) // out[0])
    c0, c1 = (j * size[1]) // out[1], -(-((j + 1) * size[1]) // out[1])
    yield i, j, slice(r0, r1), slice(c0, c1)


@pytest.mark.parametrize("size,out", [((8, 8), (4, 4)), ((7, 10), (3, 4)), ((5, 5), (5, 5))])
def test_adaptive_max_pool_is_pytorchs(size, out):
  x = np.random.default_rng(2).normal(size=(2, 3, *size)).astype(np.float32)
  expected = np.empty((2, 3, *out))
  for i, j, rows, cols in _pytorch_windows(size, out):
    expected[..., i, j] = x[..., rows, cols].max((-2, -1))
  np.testing.assert_array_equal(clip_surgery.adaptive_max_pool(jnp.asarray(x), out), expected)


@pytest.mark.parametrize("size,out", [((7, 10), (3, 4)), ((8, 8), (4, 4))])
def test_adaptive_max_pool_routes_each_windows_gradient_to_its_maximum(size, out):
  """As PyTorch's max pooling backward: one element per window (overlapping windows add up), ties included."""
  rng = np.random.default_rng(5)
  x = rng.normal(size=(2, 3, *size)).astype(np.float32)
  g = rng.normal(size=(2, 3, *out)).astype(np.float32)
  grad = jax.jit(jax.grad(lambda v: jnp.sum(clip_surgery.adaptive_max_pool(v, out) * g)))
  expected = np.zeros_like(x, np.float64)
  for i, j, rows, cols in _pytorch_windows(size, out):
    for b, c in np.ndindex(2, 3):
      window = x[b, c, rows, cols]
      r, k = np.unravel_index(np.argmax(window), window.shape)
      expected[b, c, rows.start + r, cols.start + k] += g[b, c, i, j]
  np.testing.assert_allclose(grad(jnp.asarray(x)), expected, rtol=1e-6, atol=1e-6)
  tied = np.asarray(grad(jnp.zeros_like(x)))  # Every element is a maximum: still one per window, never NaN.
  assert np.all(np.isfinite(tied)) and np.count_nonzero(tied) <= np.prod(out) * 6
  np.testing.assert_allclose(tied.sum((-2, -1)), g.sum((-2, -1)), rtol=1e-5)
