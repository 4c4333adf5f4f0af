"""Mask prompt tuning: the prompted image tower against a float64 transcription of OVSeg's released forward
(third_party/CLIP/clip/model.py VisionTransformer.forward with a mask), and a prompt-tuning step that changes the
prompts alone."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import clip_demo
from ovseg_jax.methods.clip import objective, setup, trainer
from ovseg_jax.models.clip import CLIP, ClipArchitecture
from ovseg_jax.train import sharding

ARCH = dict(embed_dim=8, image_size=16, patch_size=4, vision_width=16, vision_layers=3, vision_heads=2,
            context_length=8, vocab_size=64, text_width=8, text_layers=1, text_heads=1)


def _layer_norm(x, p, eps=1e-5):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _block(x, p, heads):
  b, n, width = x.shape
  y = _layer_norm(x, p["ln_1"])
  q, k, v = np.split(y @ p["in_proj"]["kernel"] + p["in_proj"]["bias"], 3, axis=-1)
  split = lambda t: t.reshape(b, n, heads, width // heads).transpose(0, 2, 1, 3)
  logits = split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(width // heads)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  attended = (weights @ split(v)).transpose(0, 2, 1, 3).reshape(b, n, width)
  x = x + attended @ p["out_proj"]["kernel"] + p["out_proj"]["bias"]
  h = _layer_norm(x, p["ln_2"]) @ p["c_fc"]["kernel"] + p["c_fc"]["bias"]
  h = h / (1 + np.exp(-1.702 * h))  # QuickGELU.
  return x + h @ p["c_proj"]["kernel"] + p["c_proj"]["bias"]


def _released_forward(images, masks, p, a):
  """OVSeg's VisionTransformer.forward(x, m) in float64 numpy, NHWC."""
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), p)
  b, size = images.shape[:2]
  s, g = a["patch_size"], size // a["patch_size"]
  patches = images.reshape(b, g, s, g, s, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, s * s * 3)
  x = patches @ p["conv1"]["kernel"].reshape(s * s * 3, -1)  # conv1, stride = kernel = patch.
  m = np.ceil(masks.reshape(b, g, s, g, s).mean(axis=(2, 4)).reshape(b, g * g, 1))  # mask_pool, then ceil.
  prompts = p["mask_prompts"]
  x = x * m + prompts[0][None] * (1 - m)
  cls = np.broadcast_to(p["class_embedding"], (b, 1, x.shape[-1]))
  x = _layer_norm(np.concatenate([cls, x], axis=1) + p["positional_embedding"], p["ln_pre"])
  for i in range(a["vision_layers"]):
    x = _block(x, p[f"resblocks_{i}"], a["vision_heads"])
    d = i + 1
    if d < len(prompts):
      x = np.concatenate([x[:, :1], x[:, 1:] * m + prompts[d][None] * (1 - m)], axis=1)
  return _layer_norm(x[:, 0], p["ln_post"]) @ p["proj"]


@pytest.mark.parametrize("depth", [1, 3])
def test_prompted_forward_equals_released_transcription(depth):
  a = ClipArchitecture(**ARCH, mask_prompt_depth=depth)
  model = CLIP(a)
  rng = np.random.default_rng(depth)
  images = rng.normal(size=(3, 16, 16, 3)).astype(np.float32)
  masks = rng.random((3, 16, 16)) < 0.03  # Sparse: some patches keep one pixel, many keep none.
  masks[1] = False
  masks[1, 5, 5] = True  # One kept pixel keeps its whole patch.
  masks[2] = True
  params = jax.jit(model.init)(jax.random.key(0), images, np.zeros((3, 8), np.int32))["params"]
  params["visual"]["mask_prompts"] = rng.normal(size=params["visual"]["mask_prompts"].shape).astype(np.float32)
  encode = lambda p, *masks: model.apply({"params": p}, images, *masks, method="encode_image")
  got, plain = jax.jit(lambda p, m: (encode(p, m), encode(p)))(params, masks)
  want = _released_forward(images.astype(np.float64), masks.astype(np.float64), params["visual"], ARCH)
  np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=2e-5 * np.abs(want).max())
  assert np.allclose(plain[2], got[2], atol=1e-5)  # Every patch kept: the prompts change nothing.
  assert not np.allclose(plain[1], got[1], atol=1e-3)


def test_masks_without_prompts_are_refused():
  model = CLIP(ClipArchitecture(**ARCH))
  images = np.zeros((1, 16, 16, 3), np.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), images, np.zeros((1, 8), np.int32))["params"]
  with pytest.raises(ValueError, match="mask_prompt_depth"):
    jax.eval_shape(lambda p: model.apply({"params": p}, images, np.ones((1, 16, 16), bool), method="encode_image"),
                   params)


def _prompt_config():
  config = clip_demo.get_config("tiny")
  config.model.mask_prompt_depth = 2
  config.freeze = ("image", "text", "logit_scale")
  config.optimizer.lr = 0.05
  return config


def _masked_crop_batch(config, seed=0):
  rng = np.random.default_rng(seed)
  b, size, length = config.batch_size, config.model.image_size, config.data.context_length
  images = rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)
  images[:, : size // 2] = objective.FILL_COLOUR  # The upper half is outside the crops' masks.
  tokens = np.zeros((b, length), np.int32)
  tokens[:, 0], tokens[:, 1:3], tokens[:, 3] = 49406, rng.integers(1, 500, (b, 2)), 49407
  return {"image": images, "tokens": tokens}


def test_prompt_tuning_step_changes_only_the_prompts():
  config = _prompt_config()
  mesh = sharding.make_mesh(config.mesh.axes)
  trainable = setup.build(config, mesh)
  before = jax.device_get(trainable.state.params)
  state = trainable.state
  for seed in range(2):  # The first step's learning rate is 0 (warmup).
    state, _ = trainable.step(state, sharding.host_batch_to_global(_masked_crop_batch(config, seed), mesh),
                              jax.random.key(0), None)
  after = jax.device_get(state.params)
  flat_before = jax.tree_util.tree_flatten_with_path(before)[0]
  for (path, old), new in zip(flat_before, jax.tree.leaves(after)):
    if "mask_prompts" in jax.tree_util.keystr(path):
      assert not np.array_equal(old, new)
    else:
      np.testing.assert_array_equal(old, new, err_msg=jax.tree_util.keystr(path))


def test_kept_pixels_are_those_not_of_the_fill_colour():
  images = np.zeros((1, 2, 2, 3), np.uint8)
  images[0, 0, 0] = objective.FILL_COLOUR
  images[0, 0, 1] = (objective.FILL_COLOUR[0], objective.FILL_COLOUR[1], 0)
  np.testing.assert_array_equal(objective.kept_pixels(jnp.asarray(images)), [[[False, True], [True, True]]])


def test_prompt_tuning_starts_from_a_trained_clip_workdir(tmp_path):
  config = clip_demo.get_config("tiny")
  config.data.demo_root = str(tmp_path / "demo")
  rows = trainer.train_and_evaluate(config, tmp_path / "clip")
  assert 0 <= rows[0]["crop_accuracy"] <= 1 and rows[0]["num_crops"] > 0
  arch, trained, step = setup.restore_params(tmp_path / "clip", sharding.make_mesh(config.mesh.axes))
  assert step == config.total_steps and arch.mask_prompt_depth == 0
  prompted = _prompt_config()
  prompted.init.clip = str(tmp_path / "clip")
  params = jax.device_get(setup.build(prompted, sharding.make_mesh(prompted.mesh.axes)).state.params)
  np.testing.assert_array_equal(params["visual"]["proj"], jax.device_get(trained["visual"]["proj"]))
  assert params["visual"]["mask_prompts"].shape == (2, 64, 32)
