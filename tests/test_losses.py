"""Mask and contrastive losses against float64 numpy transcriptions of their textbook definitions."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from ovseg_jax.ops import losses


def _np_focal(x, t, alpha=0.25, gamma=2.0):
  x, t = np.asarray(x, np.float64), np.asarray(t, np.float64)
  p = scipy.special.expit(x)
  ce = -(t * scipy.special.log_expit(x) + (1 - t) * scipy.special.log_expit(-x))
  p_t = p * t + (1 - p) * (1 - t)
  return (alpha * t + (1 - alpha) * (1 - t)) * ce * (1 - p_t) ** gamma


def _np_dice(x, t, smooth=1.0):
  p, t = scipy.special.expit(np.asarray(x, np.float64)), np.asarray(t, np.float64)
  return 1 - (2 * np.sum(p * t, -1) + smooth) / (np.sum(p, -1) + np.sum(t, -1) + smooth)


def _logits(rng, shape):
  """Normal logits with a sprinkling of saturated +-50 entries."""
  x = rng.normal(0, 3, shape)
  extreme = rng.random(shape) < 0.1
  x[extreme] = rng.choice([-50.0, 50.0], extreme.sum())
  return x.astype(np.float32)


def _binary_masks(rng, shape):
  """Random {0, 1} masks; the first mask of each image is empty and the second full."""
  t = (rng.random(shape) < 0.4).astype(np.float32)
  t[:, 0], t[:, 1] = 0.0, 1.0
  return t


def test_focal_loss_matches_definition_including_saturated_logits():
  rng = np.random.default_rng(0)
  x = _logits(rng, (4, 50))
  targets = np.stack([np.zeros(50), np.ones(50), rng.random(50) < 0.5, rng.random(50)]).astype(np.float32)
  got = jax.jit(losses.sigmoid_focal_loss)(x, targets)
  assert got.shape == x.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, _np_focal(x, targets), rtol=1e-5, atol=1e-6)
  other = losses.sigmoid_focal_loss(x, targets, alpha=0.7, gamma=1.5)
  np.testing.assert_allclose(other, _np_focal(x, targets, 0.7, 1.5), rtol=1e-5, atol=1e-6)


def test_dice_loss_matches_definition():
  rng = np.random.default_rng(1)
  x = _logits(rng, (2, 3, 40))
  t = _binary_masks(rng, (2, 3, 40))
  got = jax.jit(losses.dice_loss)(x, t)
  assert got.shape == (2, 3)
  np.testing.assert_allclose(got, _np_dice(x, t), rtol=1e-5, atol=1e-6)


def test_pairwise_cost_equals_double_loop_of_elementwise_losses():
  rng = np.random.default_rng(2)
  batch, num_preds, num_targets, pixels = 2, 5, 4, 37
  x = _logits(rng, (batch, num_preds, pixels))
  t = _binary_masks(rng, (batch, num_targets, pixels))
  cost = jax.jit(functools.partial(losses.pairwise_mask_cost, weight_focal=20.0, weight_dice=1.5))(x, t)
  ref = np.zeros((batch, num_preds, num_targets))
  for b in range(batch):
    for n in range(num_preds):
      for k in range(num_targets):
        ref[b, n, k] = 20.0 * _np_focal(x[b, n], t[b, k]).mean() + 1.5 * _np_dice(x[b, n], t[b, k])
  np.testing.assert_allclose(cost, ref, rtol=1e-5, atol=1e-5)


def _reference_matched_loss(x, t, valid, idx, num_masks, w_focal, w_dice, w_empty):
  focal = dice = 0.0
  matched = set()
  for b in range(t.shape[0]):
    for j in range(t.shape[1]):
      if valid[b, j]:
        focal += _np_focal(x[b, idx[b, j]], t[b, j]).mean()
        dice += _np_dice(x[b, idx[b, j]], t[b, j])
        matched.add((b, idx[b, j]))
  unmatched = [(b, n) for b in range(x.shape[0]) for n in range(x.shape[1]) if (b, n) not in matched]
  empty = np.mean([_np_focal(x[b, n], 0.0).mean() for b, n in unmatched])
  focal, dice = focal / num_masks, dice / num_masks
  return dict(focal=focal, dice=dice, empty=empty, loss=w_focal * focal + w_dice * dice + w_empty * empty)


@pytest.mark.parametrize("empty_weight", [0.0, 0.5])
def test_matched_loss_equals_loop_over_valid_pairs(empty_weight):
  rng = np.random.default_rng(3)
  batch, num_preds, num_targets, pixels = 3, 6, 4, 20
  x = _logits(rng, (batch, num_preds, pixels))
  t = _binary_masks(rng, (batch, num_targets, pixels))
  valid = rng.random((batch, num_targets)) < 0.7
  valid[0] = True
  idx = np.stack([rng.permutation(num_preds)[:num_targets] for _ in range(batch)]).astype(np.int32)
  num_masks = float(max(valid.sum(), 1))
  fn = jax.jit(functools.partial(losses.matched_mask_loss, weight_focal=20.0, weight_dice=2.0,
                                 empty_unmatched_weight=empty_weight))
  got = fn(x, t, valid, idx, num_masks)
  ref = _reference_matched_loss(x, t, valid, idx, num_masks, 20.0, 2.0, empty_weight)
  assert set(got) == ({"loss", "focal", "dice", "empty"} if empty_weight else {"loss", "focal", "dice"})
  for name in got:
    np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, err_msg=name)
  # Invalid targets are ignored whatever prediction index they carry, even an out-of-range one.
  idx_junk = np.where(valid, idx, 99).astype(np.int32)
  np.testing.assert_allclose(fn(x, t, valid, idx_junk, num_masks)["loss"], got["loss"], rtol=1e-6)


def test_mask_loss_gradients_are_finite_at_saturated_logits():
  rng = np.random.default_rng(4)
  x = _logits(rng, (2, 4, 30))
  x[0, 0] = 50.0  # A whole saturated mask against the full and empty targets.
  x[1, 1] = -50.0
  t = _binary_masks(rng, (2, 3, 30))
  valid = np.ones((2, 3), bool)
  idx = np.array([[0, 1, 2], [1, 0, 3]], np.int32)

  def total(x):
    matched = losses.matched_mask_loss(x, t, valid, idx, 6.0, empty_unmatched_weight=1.0)["loss"]
    return matched + jnp.sum(losses.pairwise_mask_cost(x, t))

  grads = jax.jit(jax.grad(total))(x)
  assert np.all(np.isfinite(grads)) and np.any(grads != 0)


def test_contrastive_loss_matches_log_softmax_both_ways():
  rng = np.random.default_rng(5)
  batch, dim, scale = 6, 5, 7.3
  image = rng.normal(0, 30, (batch, dim)).astype(np.float32)  # Far from unit norm: must be normalised.
  text = (0.5 * image + rng.normal(0, 20, (batch, dim))).astype(np.float32)
  got = jax.jit(losses.contrastive_loss)(image, text, scale)
  x = image / np.linalg.norm(image.astype(np.float64), axis=1, keepdims=True)
  y = text / np.linalg.norm(text.astype(np.float64), axis=1, keepdims=True)
  logits = scale * x @ y.T
  i2t = -np.mean(np.diag(scipy.special.log_softmax(logits, axis=1)))
  t2i = -np.mean(np.diag(scipy.special.log_softmax(logits, axis=0)))
  labels = np.arange(batch)
  accuracy = 0.5 * (np.mean(logits.argmax(1) == labels) + np.mean(logits.argmax(0) == labels))
  np.testing.assert_allclose(got["i2t"], i2t, rtol=1e-5)
  np.testing.assert_allclose(got["t2i"], t2i, rtol=1e-5)
  np.testing.assert_allclose(got["loss"], i2t + t2i, rtol=1e-5)
  np.testing.assert_allclose(got["accuracy"], accuracy)
  assert 0 < accuracy < 1  # The inputs are neither hopeless nor perfect, so accuracy is really tested.

  grad_image, grad_scale = jax.grad(lambda a, s: losses.contrastive_loss(a, text, s)["loss"], (0, 1))(
      jnp.asarray(image), jnp.float32(scale))
  assert np.all(np.isfinite(grad_image)) and np.isfinite(grad_scale)


def test_bad_shapes_name_the_fix():
  with pytest.raises(ValueError, match="resize the targets"):
    losses.pairwise_mask_cost(jnp.zeros((1, 3, 16)), jnp.zeros((1, 2, 64)))
  with pytest.raises(ValueError, match=r"\[B, N, P\]"):
    losses.pairwise_mask_cost(jnp.zeros((1, 3, 4, 4)), jnp.zeros((1, 2, 16)))
  with pytest.raises(ValueError, match="same shape"):
    losses.contrastive_loss(jnp.zeros((4, 8)), jnp.zeros((4, 6)), 10.0)


def _np_multi_label(image, prompts, valid, scale):
  """GroupViT eqs. 4-5 in float64 loops: image i's positives are its valid prompts."""
  b, k, _ = prompts.shape
  x = image / np.linalg.norm(image, axis=1, keepdims=True)
  y = prompts / np.linalg.norm(prompts, axis=2, keepdims=True)
  s = scale * np.einsum("id,jkd->ijk", x, y)  # [image, owner, prompt]
  i2t_terms = []
  for i in range(b):
    if valid[i].any():
      numerator = sum(np.exp(s[i, i, q]) for q in range(k) if valid[i, q])
      denominator = sum(np.exp(s[i, j, q]) for j in range(b) for q in range(k) if valid[j, q])
      i2t_terms.append(-np.log(numerator / denominator))
  t2i_terms = [-scipy.special.log_softmax(s[:, j, q])[j] for j in range(b) for q in range(k) if valid[j, q]]
  return np.mean(i2t_terms), np.mean(t2i_terms)


def test_multi_label_contrastive_loss_matches_groupvit_definition():
  rng = np.random.default_rng(11)
  b, k, dim, scale = 5, 3, 6, 4.0
  image = rng.normal(0, 3, (b, dim))
  prompts = 0.4 * image[:, None] + rng.normal(0, 1, (b, k, dim))
  valid = rng.random((b, k)) < 0.6
  valid[0] = False  # An image without nouns takes no part in L_I->T.
  valid[1, 0] = True
  got = jax.jit(losses.multi_label_contrastive_loss)(image.astype(np.float32), prompts.astype(np.float32), valid,
                                                     scale)
  i2t, t2i = _np_multi_label(image, prompts, valid, scale)
  np.testing.assert_allclose(got["i2t"], i2t, rtol=1e-5)
  np.testing.assert_allclose(got["t2i"], t2i, rtol=1e-5)
  grads = jax.grad(lambda p: losses.multi_label_contrastive_loss(image, p, valid, scale)["loss"])(jnp.asarray(prompts))
  assert np.all(np.isfinite(grads)) and not np.any(np.asarray(grads)[~valid])  # Missing prompts get no gradient.


def test_multi_label_loss_with_one_prompt_each_is_the_plain_contrastive_loss():
  rng = np.random.default_rng(12)
  image, text = rng.normal(size=(4, 8)).astype(np.float32), rng.normal(size=(4, 8)).astype(np.float32)
  multi = losses.multi_label_contrastive_loss(image, text[:, None], np.ones((4, 1), bool), 3.0)
  np.testing.assert_allclose(multi["loss"], losses.contrastive_loss(image, text, 3.0)["loss"], rtol=1e-6)
