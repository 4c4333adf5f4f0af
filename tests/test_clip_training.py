"""CLIP training: open_clip's loss against a float64 transcription, the logit-scale clamp, locked towers left
bit-identical, a tiny run that learns, and the published fine-tuning configs traced at their batch."""
import jax
import numpy as np
import optax
import pytest

from configs import clip_demo, ovseg_finetune
from ovseg_jax.methods.clip import objective, optimizer, setup
from ovseg_jax.train import sharding


def _numpy_clip_loss(image, text, logit_scale):
  """open_clip ClipLoss: logits = exp(s) * normalised image @ normalised text.T; mean of both cross-entropies."""
  image = image / np.linalg.norm(image, axis=1, keepdims=True)
  text = text / np.linalg.norm(text, axis=1, keepdims=True)
  logits = np.exp(logit_scale) * image @ text.T

  def cross_entropy(rows):
    rows = rows - rows.max(axis=1, keepdims=True)
    return np.mean(np.log(np.exp(rows).sum(axis=1)) - np.diag(rows))
  return 0.5 * (cross_entropy(logits) + cross_entropy(logits.T))


@pytest.mark.parametrize("logit_scale", [0.0, np.log(1 / 0.07), np.log(100.0)])
def test_loss_equals_float64_transcription(logit_scale):
  rng = np.random.default_rng(0)
  image, text = rng.normal(size=(6, 16)), rng.normal(size=(6, 16))
  text[:3] += 2 * image[:3]  # Some pairs agree, so the loss is not only noise.
  got = objective.contrastive(image.astype(np.float32), text.astype(np.float32), np.float32(logit_scale))["loss"]
  np.testing.assert_allclose(float(got), _numpy_clip_loss(image, text, logit_scale), rtol=2e-5)


def test_logit_scale_is_clamped_at_ln_100_after_an_update():
  params = {"logit_scale": np.float32(4.6), "w": np.ones((2, 2), np.float32)}
  cfg = clip_demo.get_config().optimizer
  cfg.lr, cfg.warmup_steps = 1.0, 1
  tx, _ = optimizer.make_optimizer(cfg, 10, ())
  state = tx.init(params)
  grads = {"logit_scale": np.float32(-1.0), "w": np.zeros((2, 2), np.float32)}  # Pushes the scale up.
  @jax.jit
  def step(params, state):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  for _ in range(3):
    params, state = step(params, state)
  assert float(params["logit_scale"]) == pytest.approx(np.log(100.0), abs=1e-6)


def test_weight_decay_spares_gains_biases_logit_scale_and_prompts():
  params = {"visual": {"proj": np.ones((2, 3)), "ln_pre": {"scale": np.ones(2), "bias": np.ones(2)},
                       "mask_prompts": np.ones((3, 4, 2))}, "logit_scale": np.ones(())}
  mask = optimizer.decay_mask(params)
  assert mask["visual"]["proj"] and not mask["visual"]["ln_pre"]["scale"] and not mask["visual"]["ln_pre"]["bias"]
  assert not mask["visual"]["mask_prompts"] and not mask["logit_scale"]


def test_unknown_frozen_group_is_named():
  with pytest.raises(ValueError, match="'vision'.*lock-text"):
    optimizer.check_freeze(("vision",))


def _batch(config, seed=0):
  rng = np.random.default_rng(seed)
  b, size, length = config.batch_size, config.model.image_size, config.data.context_length
  tokens = np.zeros((b, length), np.int32)
  tokens[:, 0], tokens[:, 1:4], tokens[:, 4] = 49406, rng.integers(1, 500, (b, 3)), 49407
  return {"image": rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8), "tokens": tokens}


@pytest.fixture(scope="module")
def lock_text():
  config = clip_demo.get_config("tiny")
  config.freeze = ("text",)
  mesh = sharding.make_mesh(config.mesh.axes)
  return config, mesh, setup.build(config, mesh)


def test_locked_text_tower_is_bit_identical_after_steps(lock_text):
  config, mesh, trainable = lock_text
  before = jax.device_get(trainable.state.params)
  state = jax.tree.map(lambda x: x.copy(), trainable.state)
  for seed in range(2):
    state, metrics = trainable.step(state, sharding.host_batch_to_global(_batch(config, seed), mesh),
                                    jax.random.key(0), None)
  after = jax.device_get(state.params)
  for a, b in zip(jax.tree.leaves(before["text"]), jax.tree.leaves(after["text"])):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(before["visual"]["proj"], after["visual"]["proj"])
  assert before["logit_scale"] != after["logit_scale"]  # Only the text tower is locked, as open_clip's --lock-text.
  assert np.isfinite(float(metrics["loss"]))


def test_tiny_run_lowers_the_loss():
  config = clip_demo.get_config("tiny")
  config.total_steps, config.optimizer.lr = 12, 2e-3  # The loss falls to about 0.31 of its first value.
  mesh = sharding.make_mesh(config.mesh.axes)
  trainable = setup.build(config, mesh)
  batch = sharding.host_batch_to_global(_batch(config), mesh)
  state, losses = trainable.state, []
  for _ in range(config.total_steps):
    state, metrics = trainable.step(state, batch, jax.random.key(0), None)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("variant", ["B/16", "L/14", "L/14,prompts"])
def test_published_configs_trace_at_their_per_device_batch(variant):
  config = ovseg_finetune.get_config(variant)
  mesh = sharding.make_mesh(config.mesh.axes)
  trainable = setup.build(config, mesh, abstract=True)
  per_device = config.batch_size // 4  # The release's 4 GPUs.
  spec = trainable.batch_spec(per_device * len(jax.devices()))
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding.batch_sharding(mesh)) for k, v in spec.items()}
  lowered = trainable.step.lower(trainable.state, batch, jax.random.key(0), None)
  assert "logit_scale" in str(jax.tree_util.tree_structure(trainable.state.params))
  assert lowered is not None


def test_finetune_config_refuses_a_random_start():
  config = ovseg_finetune.get_config("B/16")
  with pytest.raises(ValueError, match="init.clip is empty"):
    setup.pretrained(config, None)
