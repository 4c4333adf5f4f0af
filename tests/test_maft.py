"""MAFT: IP-CLIP against a float64 numpy transcription of the released masked attention, its losses against
numpy, the freeze pattern, and a tiny end-to-end run (CLIP, Mask2Former, then MAFT) as `ovseg_jax.main` runs it."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovseg_jax.methods.maft import objective, setup
from ovseg_jax.models.clip import CLIP, ClipArchitecture
from ovseg_jax.models.ipclip import ipclip_embeddings
from ovseg_jax.models.resize import bicubic_resize_matrix, linear_resize_matrix

ARCH = ClipArchitecture(embed_dim=8, image_size=32, patch_size=8, vision_width=16, vision_layers=3, vision_heads=2,
                        context_length=8, vocab_size=50, text_width=16, text_layers=1, text_heads=2)


@pytest.fixture(scope="module")
def tiny_clip():
  model = CLIP(ARCH)
  init = lambda key: model.init(key, jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 8), jnp.int32))["params"]
  # Larger than init so that attention patterns matter.
  params = jax.jit(lambda key: jax.tree.map(lambda x: x * 3.0 if x.ndim == 2 else x, init(key)))(jax.random.key(0))
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  return model, params, images


def test_start_layers_at_depth_gives_the_plain_class_embedding(tiny_clip):
  model, params, images = tiny_clip
  masks = jax.random.uniform(jax.random.key(2), (2, 5, 32, 32))
  plain, out, unmasked = jax.jit(lambda p: (
      model.apply({"params": p}, images, method="encode_image"),
      ipclip_embeddings(ARCH, p["visual"], images, masks, ARCH.vision_layers),
      ipclip_embeddings(ARCH, p["visual"], images, None, 1)))(params)
  assert out.shape == (2, 5, ARCH.embed_dim)
  np.testing.assert_allclose(out, np.broadcast_to(plain[:, None], out.shape), atol=1e-5)
  np.testing.assert_allclose(unmasked, plain, atol=1e-5)


def _np(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _layer_norm(x, p, eps=1e-5):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _block(x, p, heads, blocked):
  """One released ResidualAttentionBlock on tokens [L, C]; `blocked` [L, L] bool (torch's bool attn_mask)."""
  n, c = x.shape
  y = _layer_norm(x, p["ln_1"])
  q, k, v = np.split(y @ p["in_proj"]["kernel"] + p["in_proj"]["bias"], 3, axis=-1)
  d = c // heads
  out = np.zeros_like(x)
  for h in range(heads):
    s = slice(h * d, (h + 1) * d)
    logits = q[:, s] @ k[:, s].T / np.sqrt(d)
    logits = np.where(blocked, -np.inf, logits)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    out[:, s] = (w / w.sum(-1, keepdims=True)) @ v[:, s]
  x = x + out @ p["out_proj"]["kernel"] + p["out_proj"]["bias"]
  hidden = _layer_norm(x, p["ln_2"]) @ p["c_fc"]["kernel"] + p["c_fc"]["bias"]
  hidden = hidden / (1 + np.exp(-1.702 * hidden))
  return x + hidden @ p["c_proj"]["kernel"] + p["c_proj"]["bias"]


def _released_ipclip(v, image, masks, start, heads):
  """The released IP_CLIP forward for one image [H, W, 3] and masks [N, 2g, 2g] (bilinear resizing by half is a
  2x2 mean), float64."""
  p = v["conv1"]["kernel"].shape[0]
  g = image.shape[0] // p
  patches = image.reshape(g, p, g, p, 3).transpose(0, 2, 1, 3, 4).reshape(g * g, -1)
  x = patches @ v["conv1"]["kernel"].reshape(-1, v["conv1"]["kernel"].shape[-1])
  pos = v["positional_embedding"]
  trained = int(round(np.sqrt(len(pos) - 1)))
  if g != trained:  # F.interpolate(bicubic, align_corners=True) of the patch positions.
    resize = bicubic_resize_matrix(trained, g, align_corners=True)
    grid = np.einsum("ia,abc,jb->ijc", resize, pos[1:].reshape(trained, trained, -1), resize)
    pos = np.concatenate([pos[:1], grid.reshape(g * g, -1)])
  x = np.concatenate([v["class_embedding"][None], x]) + pos
  x = _layer_norm(x, v["ln_pre"])
  n = masks.shape[0]
  small = masks.reshape(n, g, 2, g, 2).mean(axis=(2, 4)).reshape(n, g * g)
  pool_hw = np.ones((g * g, n + g * g))
  pool_hw[:, :n] = 0.0
  blocked = np.concatenate([np.concatenate([np.eye(n), small], -1), pool_hw], 0) < 0.5
  for i in range(len([k for k in v if k.startswith("resblocks_")])):
    if i == start:
      x = np.concatenate([np.repeat(x[:1], n - 1, axis=0), x])
    x = _block(x, v[f"resblocks_{i}"], heads, blocked if i >= start else np.zeros((len(x),) * 2, bool))
  return _layer_norm(x[:n], v["ln_post"]) @ v["proj"]


@pytest.mark.parametrize("start,size", [(0, 32), (1, 32), (2, 48)])
def test_forward_equals_the_released_attention_in_float64(tiny_clip, start, size):
  _, params, images = tiny_clip
  rng = np.random.default_rng(start)
  g = size // ARCH.patch_size
  masks = rng.uniform(size=(2, 5, 2 * g, 2 * g)) ** 2  # Half of the patches or fewer per proposal.
  masks[:, 0] = 0.0  # A proposal that covers nothing: its copy attends to itself only.
  def forward(visual, images, masks):
    images = jax.image.resize(images, (2, size, size, 3), "bilinear")
    return images, ipclip_embeddings(ARCH, visual, images, masks, start)
  images, out = jax.jit(forward)(params["visual"], images, jnp.asarray(masks, jnp.float32))
  v = _np(params["visual"])
  for b in range(2):
    ref = _released_ipclip(v, np.asarray(images[b], np.float64), masks[b], start, ARCH.vision_heads)
    np.testing.assert_allclose(out[b], ref, rtol=2e-4, atol=2e-4)


def test_align_corners_resize_matrices_keep_the_corners():
  for fn in (bicubic_resize_matrix, linear_resize_matrix):
    m = fn(14, 30, align_corners=True)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(m[0], np.eye(14)[0], atol=1e-12)
    np.testing.assert_allclose(m[-1], np.eye(14)[-1], atol=1e-12)
  np.testing.assert_allclose(linear_resize_matrix(2, 3, align_corners=True), [[1, 0], [0.5, 0.5], [0, 1]])
  # Halfway between samples 0 and 1 of 3 -> 5: cubic weights at t = 0.5 (a = -0.75), border tap clamped.
  np.testing.assert_allclose(bicubic_resize_matrix(3, 5, align_corners=True)[1],
                             [-0.09375 + 0.59375, 0.59375, -0.09375])


def _smooth_l1(x, y):
  d = np.abs(x - y)
  return np.where(d < 1, 0.5 * d * d, d - 0.5)


def test_mask_aware_loss_equals_float64_numpy():
  rng = np.random.default_rng(0)
  b, n, k, m, s = 2, 6, 4, 3, 8
  probs = rng.dirichlet(np.ones(k), size=(b, n))
  proposals = rng.uniform(size=(b, n, s, s))
  segments = rng.integers(-1, m, size=(b, s, s))
  classes = np.array([[2, 0, 3], [1, -1, -1]])
  segments[1][segments[1] > 0] = -1  # Image 1 has one target.
  loss, _ = jax.jit(objective.mask_aware_loss)(*(jnp.asarray(a, jnp.float32) for a in (probs, proposals)),
                                               jnp.asarray(segments), jnp.asarray(classes))
  terms = []
  for i in range(b):
    for t in range(m):
      if classes[i, t] < 0:
        continue
      target = (segments[i] == t).astype(np.float64).ravel()
      pred = proposals[i].reshape(n, -1)
      inter = pred @ target
      iou = inter / (target.sum() + pred.sum(-1) - inter + 1e-7)
      iou = (iou - iou.min()) / (iou.max() - iou.min() + 1e-8)
      terms.append(_smooth_l1(probs[i, :, classes[i, t]], iou))
  np.testing.assert_allclose(loss, np.mean(terms), rtol=1e-5)


def test_logits_and_distillation_equal_float64_numpy():
  rng = np.random.default_rng(1)
  student, teacher = rng.normal(size=(2, 3, 8)), rng.normal(size=(2, 3, 8))
  text = rng.normal(size=(5, 8))
  text /= np.linalg.norm(text, axis=-1, keepdims=True)
  no_object = rng.normal(size=8)

  def probs(x):
    logits = 100 * (x / np.linalg.norm(x, axis=-1, keepdims=True)) @ text.T  # The no-object column is dropped.
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
  f32 = lambda a: jnp.asarray(a, jnp.float32)

  def computed(student, teacher, text, no_object):
    both = [objective.class_probs(objective.class_logits(x, text, no_object)) for x in (student, teacher)]
    return objective.class_logits(student, text, no_object), both, objective.distillation_loss(*both)
  logits, ours, distillation = jax.jit(computed)(*(f32(a) for a in (student, teacher, text, no_object)))
  assert logits.shape == (2, 3, 6)
  np.testing.assert_allclose(logits[..., -1], 100 * (student / np.linalg.norm(student, axis=-1, keepdims=True))
                             @ (no_object / np.linalg.norm(no_object)), rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(ours[0], probs(student), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(distillation, np.mean(_smooth_l1(probs(student), probs(teacher))),
                             rtol=1e-4, atol=1e-7)


def test_trained_parameters_are_attention_layer_norms_and_ln_post(tiny_clip):
  _, params, _ = tiny_clip
  labels = jax.tree_util.tree_leaves_with_path(setup.trainable_labels(params))
  trained = sorted("/".join(str(getattr(k, "key", k)) for k in path) for path, label in labels if label == "train")
  expected = sorted([f"visual/resblocks_{i}/{part}/{leaf}" for i in range(ARCH.vision_layers)
                     for part, leaves in (("ln_1", ("scale", "bias")), ("ln_2", ("scale", "bias")),
                                          ("in_proj", ("kernel", "bias")), ("out_proj", ("kernel", "bias")))
                     for leaf in leaves] + ["visual/ln_post/scale", "visual/ln_post/bias"])
  assert trained == expected


@pytest.mark.slow
def test_tiny_run_trains_only_the_released_parameters_and_evaluates(tmp_path):
  """CLIP, Mask2Former, then MAFT on the tiny demo, each as `ovseg_jax.main` runs it (one image per fake device)."""
  from configs import clip_demo, maft_demo, mask2former_demo
  from ovseg_jax.methods import registry
  from ovseg_jax.methods.clip import setup as clip_setup
  from ovseg_jax.train import sharding
  configs = {"clip": clip_demo.get_config("tiny"), "m2f": mask2former_demo.get_config("tiny"),
             "maft": maft_demo.get_config("tiny")}
  configs["clip"].total_steps = 3
  for name, config in configs.items():
    config.data.demo_root = str(tmp_path / "demo")
    config.batch_size = 8
  configs["maft"].init.update(clip=str(tmp_path / "clip"), mask2former=str(tmp_path / "m2f"))
  for name, config in configs.items():
    rows = registry.get(config).train_and_evaluate(config, tmp_path / name)
  assert [r["predictor"] for r in rows[:4]] == ["MAFT at step 3: IP-CLIP", "MAFT at step 3: eq. 1 (lambda 0.8)",
                                                "frozen CLIP: IP-CLIP", "frozen CLIP: eq. 1 (lambda 0.8)"]
  assert all(np.isfinite(r["miou"]) for r in rows)
  ranking = json.loads((tmp_path / "maft" / "ranking.json").read_text())
  assert set(ranking) == {"MAFT at step 3", "frozen CLIP"}
  mesh = sharding.make_mesh(configs["clip"].mesh.axes)
  _, before, _ = clip_setup.restore_params(tmp_path / "clip", mesh)
  _, after, step = registry.get(configs["maft"]).restore_model(configs["maft"], tmp_path / "maft")
  assert step == 3
  leaves = list(zip(jax.tree.leaves(before), jax.tree.leaves(after), jax.tree.leaves(setup.trainable_labels(after))))
  assert len(leaves) == len(jax.tree.leaves(after))
  assert all(np.array_equal(a, b) for a, b, label in leaves if label == "frozen")  # Bit-identical.
  assert all(not np.array_equal(a, b) for a, b, label in leaves if label == "train")


def test_maft_classifiers_read_ipclip_when_given_one(tiny_clip):
  from ovseg_jax.eval import classify, ensembles
  model, params, images = tiny_clip
  text = jax.random.normal(jax.random.key(3), (4, ARCH.embed_dim))
  groups, seen = jnp.eye(4), jnp.asarray([True, True, False, False])
  mask_logits = jax.random.normal(jax.random.key(4), (2, 5, 8, 8)) * 4
  p_seg = jax.nn.softmax(jax.random.normal(jax.random.key(5), (2, 5, 4)))

  def scores(params):
    p_clip = classify.ipclip_class_probs(model, params, images, mask_logits, text, 1, 48)
    make = lambda name: classify.make_reclassifier(name, model, params, text, groups, seen, 32, ipclip=(1, 48))
    valid = jnp.any(classify.binary_masks(mask_logits, (32, 32), 0.5), axis=(-2, -1))
    return (p_clip, make("ensemble:maft_ipclip")(p_seg, images, mask_logits),
            make("ensemble:maft_ipclip_ensemble")(p_seg, images, mask_logits),
            ensembles.maft_frozen_clip(p_seg, p_clip, seen, 0.8, valid))
  p_clip, ipclip, ensemble, expected_ensemble = jax.jit(scores)(params)
  assert p_clip.shape == (2, 5, 4)
  np.testing.assert_allclose(ipclip, p_clip, rtol=1e-5)
  np.testing.assert_allclose(ensemble, expected_ensemble, rtol=1e-5)
