"""Open-vocabulary inference: synonym groups, per-pixel decoding and background thresholds vs numpy."""
import jax
import numpy as np
import pytest

from ovseg_jax.eval import mask_scores as inference


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _reference_class_prob(mask_emb, text, scale, groups):
  emb = mask_emb / np.linalg.norm(mask_emb, axis=-1, keepdims=True)
  return _softmax(scale * emb @ text.T) @ groups


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  b, n, h, w, d = 2, 5, 4, 4, 8
  text = rng.normal(size=(6, d))
  text /= np.linalg.norm(text, axis=-1, keepdims=True)
  names, groups = inference.expand_synonyms(["bg", "cat", "dog"], {"bg": ["grass", "sky", "water"], "dog": ["dog", "puppy"]})
  return dict(mask_logits=rng.normal(size=(b, n, h, w)) * 3, mask_emb=rng.normal(size=(b, n, d)), text=text,
              scale=7.0, groups=groups, names=names)


def test_expand_synonyms_groups_names_by_class():
  names, groups = inference.expand_synonyms(["bg", "cat", "dog"], {"bg": ["grass", "sky"], "dog": ["dog", "puppy"]})
  assert names == ["grass", "sky", "cat", "dog", "puppy"]
  np.testing.assert_array_equal(groups, [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]])
  with pytest.raises(ValueError, match="empty synonym list"):
    inference.expand_synonyms(["cat"], {"cat": []})


@pytest.mark.parametrize("decode", ["sum", "winner"])
def test_pixel_class_scores_match_numpy(inputs, decode):
  x = inputs
  scores = np.asarray(inference.pixel_class_scores(
      jax.numpy.asarray(x["mask_logits"], jax.numpy.float32), x["mask_emb"].astype(np.float32),
      x["text"].astype(np.float32), x["scale"], (4, 4), decode, x["groups"]))
  class_prob = _reference_class_prob(x["mask_emb"], x["text"], x["scale"], x["groups"])  # [B, N, C]
  mask_prob = 1 / (1 + np.exp(-x["mask_logits"]))  # same size: the resize is the identity
  if decode == "sum":  # Mask probabilities normalised over queries per pixel.
    expected = np.einsum("bnc,bnhw->bchw", class_prob, mask_prob) / mask_prob.sum(axis=1)[:, None]
  else:
    expected = np.zeros_like(scores, np.float64)
    for b in range(scores.shape[0]):
      for i in range(4):
        for j in range(4):
          q = np.argmax(class_prob[b].max(-1) * mask_prob[b, :, i, j])
          expected[b, :, i, j] = class_prob[b, q] * mask_prob[b, q, i, j]
  np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="eval.decode"):
    inference.pixel_class_scores(x["mask_logits"], x["mask_emb"], x["text"], 1.0, (4, 4), "mean")


def _sum_scores(mask_logits, class_prob):
  return np.asarray(inference.pixel_scores(jax.numpy.asarray(mask_logits, jax.numpy.float32),
                                           jax.numpy.asarray(class_prob, jax.numpy.float32),
                                           mask_logits.shape[-2:], "sum"))


def test_sum_scores_are_probabilities_when_every_query_is_confident_and_every_mask_on():
  n, c = 64, 5
  class_prob = np.zeros((1, n, c))
  class_prob[0, np.arange(n), np.arange(n) % c] = 1.0  # Every query certain, many agreeing per class.
  for logit in (50.0, 8.0, -30.0, -200.0):  # All masks on, all off, and far past float32's sigmoid range.
    scores = _sum_scores(np.full((1, n, 3, 3), logit), class_prob)
    assert np.all(np.isfinite(scores)) and scores.min() >= 0.0 and scores.max() <= 1.0 + 1e-6
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
  one_class = np.zeros((1, n, c))
  one_class[..., 2] = 1.0
  scores = _sum_scores(np.full((1, n, 2, 2), 50.0), one_class)  # The old sum would give 64 here.
  np.testing.assert_allclose(scores[0, 2], 1.0, rtol=1e-6)


def test_sum_scores_leave_a_no_object_mass_out_of_every_class():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(2, 7, 6)) * 4
  full = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)  # Last column: no object.
  mask_logits = rng.normal(size=(2, 7, 5, 4)) * 6
  scores = _sum_scores(mask_logits, full[..., :-1])
  mask_prob = 1 / (1 + np.exp(-mask_logits))
  sums = np.einsum("bnc,bnhw->bchw", full, mask_prob)  # Classes and no object together.
  np.testing.assert_allclose(scores, sums[:, :-1] / sums.sum(axis=1, keepdims=True), rtol=2e-5, atol=1e-7)
  assert scores.sum(axis=1).max() < 1.0


@pytest.mark.parametrize("seed", range(3))
def test_sum_scores_on_random_inputs_match_a_float64_transcription(seed):
  rng = np.random.default_rng(seed)
  n, c = 16, 9
  mask_logits = rng.normal(size=(1, n, 6, 5)) * rng.uniform(1, 20)
  class_prob = _reference_class_prob(rng.normal(size=(1, n, 8)), rng.normal(size=(c, 8)), 30.0, np.eye(c))
  mask_prob = 1 / (1 + np.exp(-mask_logits))
  expected = np.einsum("bnc,bnhw->bchw", class_prob, mask_prob / mask_prob.sum(axis=1, keepdims=True))
  scores = _sum_scores(mask_logits, class_prob)
  np.testing.assert_allclose(scores, expected, rtol=2e-5, atol=1e-7)
  assert 0.0 <= scores.min() and scores.max() <= 1.0
