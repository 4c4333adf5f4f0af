"""Ensemble formulas against float64 numpy transcriptions of the papers' equations, column split included."""
import jax.numpy as jnp
import numpy as np
import pytest

from ovseg_jax.eval import ensembles


def _probs(rng, shape):
  x = rng.normal(size=shape) * 3
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.fixture
def inputs():
  rng = np.random.default_rng(7)
  k = 11
  seen = rng.random(k) < 0.6
  return [_probs(rng, (2, 5, k)) for _ in range(3)], seen


def _close(actual, expected):
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=2e-5, atol=1e-30)


@pytest.mark.parametrize("lam", [0.0, 0.45, 0.7, 1.0])
def test_ovseg(inputs, lam):
  (p_seg, p_clip, _), _ = inputs
  _close(ensembles.ovseg(jnp.asarray(p_seg, jnp.float32), jnp.asarray(p_clip, jnp.float32), lam),
         p_seg ** (1 - lam) * p_clip ** lam)


@pytest.mark.parametrize("lam", [0.6, 0.8])
def test_maft_seen_and_unseen_columns(inputs, lam):
  (p_seg, p_clip, _), seen = inputs
  expected = np.empty_like(p_seg)
  for c in range(p_seg.shape[-1]):  # The equation, one class at a time.
    if seen[c]:
      expected[..., c] = p_seg[..., c] ** lam * p_clip[..., c] ** (1 - lam)
    else:
      expected[..., c] = p_clip[..., c] ** lam
  _close(ensembles.maft(jnp.asarray(p_seg), jnp.asarray(p_clip), jnp.asarray(seen), lam), expected)


def test_ebseg_joins_train_columns_of_eq4_and_new_columns_of_eq5(inputs):
  (p_a, p_b, p_d), seen = inputs
  alpha, beta, gamma = 0.2, 0.7, 0.05
  p_train = p_a ** alpha * p_b ** beta * p_d ** (1 - alpha - beta)  # eq. 4, all columns
  p_new = p_a ** gamma * p_b ** beta * p_d ** (1 - gamma - beta)  # eq. 5, all columns
  expected = np.concatenate([p_train[..., seen], p_new[..., ~seen]], axis=-1)
  order = np.concatenate([np.flatnonzero(seen), np.flatnonzero(~seen)])  # Back to class order.
  expected = expected[..., np.argsort(order)]
  _close(ensembles.ebseg(*(jnp.asarray(p) for p in (p_a, p_b, p_d)), jnp.asarray(seen), alpha, beta, gamma),
         expected)


def test_no_seen_classes_makes_maft_clip_only(inputs):
  (p_seg, p_clip, _), seen = inputs
  none_seen = np.zeros_like(seen)
  out = np.asarray(ensembles.maft(jnp.asarray(p_seg), jnp.asarray(p_clip), jnp.asarray(none_seen), 0.7))
  np.testing.assert_array_equal(out.argmax(-1), p_clip.argmax(-1))


def test_zero_probability_with_zero_weight_is_neutral():
  p = jnp.asarray([[0.0, 1.0]])
  np.testing.assert_allclose(ensembles.ovseg(p, jnp.asarray([[0.5, 0.5]]), 1.0), [[0.5, 0.5]])
