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
  if decode == "sum":
    expected = np.einsum("bnc,bnhw->bchw", class_prob, mask_prob)
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
