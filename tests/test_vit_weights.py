"""A timm/MAE-layout ViT checkpoint read into the UperNet's `ViT` computes what the checkpoint's own model
computes on patch tokens, checked against a float64 numpy transcription of the PyTorch blocks."""
import jax
import numpy as np
import pytest
import safetensors.numpy
from scipy.special import erf

from ovseg_jax.models.vit import ViT
from ovseg_jax.weights.vit import read_vit_backbone

PATCH, WIDTH, DEPTH, HEADS, MLP, IMAGE = 4, 32, 2, 2, 48, 16


def random_vit_state(rng, depth: int = DEPTH) -> dict[str, np.ndarray]:
  """A random timm/MAE-layout ViT state dict (patch 4, width 32, 16-px images)."""
  n = lambda *shape: rng.normal(0, 0.2, shape).astype(np.float32)
  tokens = 1 + (IMAGE // PATCH) ** 2
  state = {"cls_token": n(1, 1, WIDTH), "pos_embed": n(1, tokens, WIDTH), "patch_embed.proj.weight": n(WIDTH, 3, PATCH, PATCH),
           "patch_embed.proj.bias": n(WIDTH), "norm.weight": 1 + n(WIDTH), "norm.bias": n(WIDTH)}
  for i in range(depth):
    b = f"blocks.{i}."
    state.update({b + "norm1.weight": 1 + n(WIDTH), b + "norm1.bias": n(WIDTH), b + "norm2.weight": 1 + n(WIDTH),
                  b + "norm2.bias": n(WIDTH), b + "attn.qkv.weight": n(3 * WIDTH, WIDTH), b + "attn.qkv.bias": n(3 * WIDTH),
                  b + "attn.proj.weight": n(WIDTH, WIDTH), b + "attn.proj.bias": n(WIDTH),
                  b + "mlp.fc1.weight": n(MLP, WIDTH), b + "mlp.fc1.bias": n(MLP), b + "mlp.fc2.weight": n(WIDTH, MLP),
                  b + "mlp.fc2.bias": n(WIDTH)})
  return state


def _layer_norm(x, w, b):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-6) * w + b


def _reference(state, images):
  """images [B, H, W, 3] -> patch tokens after the final norm, without the class token (float64)."""
  s = {k: v.astype(np.float64) for k, v in state.items()}
  b, h, w, _ = images.shape
  gh, gw = h // PATCH, w // PATCH
  patches = images.reshape(b, gh, PATCH, gw, PATCH, 3).transpose(0, 1, 3, 5, 2, 4).reshape(b, gh * gw, -1)
  x = patches @ s["patch_embed.proj.weight"].reshape(WIDTH, -1).T + s["patch_embed.proj.bias"]
  x = x + s["pos_embed"][:, 1:]
  d = WIDTH // HEADS
  for i in range(DEPTH):
    p = f"blocks.{i}."
    y = _layer_norm(x, s[p + "norm1.weight"], s[p + "norm1.bias"])
    q, k, v = np.split(y @ s[p + "attn.qkv.weight"].T + s[p + "attn.qkv.bias"], 3, axis=-1)
    q, k, v = (t.reshape(b, -1, HEADS, d).transpose(0, 2, 1, 3) for t in (q, k, v))
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    out = (attn @ v).transpose(0, 2, 1, 3).reshape(b, -1, WIDTH)
    x = x + out @ s[p + "attn.proj.weight"].T + s[p + "attn.proj.bias"]
    y = _layer_norm(x, s[p + "norm2.weight"], s[p + "norm2.bias"])
    y = y @ s[p + "mlp.fc1.weight"].T + s[p + "mlp.fc1.bias"]
    y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
    x = x + y @ s[p + "mlp.fc2.weight"].T + s[p + "mlp.fc2.bias"]
  return _layer_norm(x, s["norm.weight"], s["norm.bias"]).reshape(b, gh, gw, WIDTH)


def test_mae_layout_checkpoint_matches_the_numpy_model(tmp_path):
  rng = np.random.default_rng(7)
  state = random_vit_state(rng)
  path = tmp_path / "mae_pretrain_vit_tiny.safetensors"
  safetensors.numpy.save_file(state, str(path))
  architecture, params = read_vit_backbone(path, num_heads=HEADS)
  assert (architecture.depth, architecture.width, architecture.patch_size) == (DEPTH, WIDTH, PATCH)
  images = rng.normal(size=(2, IMAGE, IMAGE, 3)).astype(np.float32)
  got = jax.jit(ViT(PATCH, WIDTH, DEPTH, HEADS, MLP).apply)({"params": params}, images)
  np.testing.assert_allclose(np.asarray(got), _reference(state, images), rtol=1e-4, atol=1e-4)


def test_checkpoint_without_vit_keys_is_named(tmp_path):
  path = tmp_path / "not_a_vit.safetensors"
  safetensors.numpy.save_file({"model.weight": np.zeros((2, 2), np.float32)}, str(path))
  with pytest.raises(ValueError, match="not_a_vit.safetensors"):
    read_vit_backbone(path)
