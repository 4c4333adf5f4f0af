"""Ensembles against float64 numpy transcriptions of the released code's formulas, seen/unseen split included."""
import jax.numpy as jnp
import numpy as np
import pytest

from ovseg_jax.eval import ensembles


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.fixture(params=[7, 8])
def inputs(request):
  """Three per-mask class distributions over K classes (from logits with a no-object column, as the released
  models have), a seen/unseen split and a few empty masks."""
  rng = np.random.default_rng(request.param)
  k = 11
  logits = [rng.normal(size=(2, 5, k + 1)) * 3 for _ in range(3)]
  probs = [_softmax(x[..., :-1]) for x in logits]  # softmax(logits[..., :-1]) as the released code takes them
  no_object = _softmax(logits[0])[..., -1]
  seen = rng.random(k) < 0.6
  valid = rng.random((2, 5)) < 0.7
  return probs, no_object, seen, valid


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def _close(actual, expected):
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=3e-5, atol=1e-12)


def _map_back(p_clip, valid):
  """ov-seg / MAFT `semantic_inference`: CLIP scores of masks without pixels are replaced by ones."""
  out = np.ones_like(p_clip)
  out[valid] = p_clip[valid]
  return out


@pytest.mark.parametrize("name", ["ovseg_ade", "ovseg_context", "ovseg_voc"])
def test_ovseg_as_released(inputs, name):
  (p_seg, p_clip, _), _, _, valid = inputs
  lam = ensembles.PUBLISHED[name].weight
  expected = p_seg ** (1 - lam) * _map_back(p_clip, valid) ** lam  # torch.pow(mask_cls, 1 - w) * torch.pow(...)
  _close(ensembles.ovseg(_f32(p_seg), _f32(p_clip), lam, jnp.asarray(valid)), expected)


def test_maft_frozen_clip_is_eq1_of_the_supplement(inputs):
  (p_seg, p_clip, _), _, seen, valid = inputs
  lam = ensembles.PUBLISHED["maft_frozen_clip"].weight
  clip = _map_back(p_clip, valid)
  expected = np.empty_like(p_seg)
  for c in range(p_seg.shape[-1]):  # The equation, one class at a time.
    if seen[c]:
      expected[..., c] = p_seg[..., c] ** lam * clip[..., c] ** (1 - lam)
    else:
      expected[..., c] = clip[..., c] ** lam
  _close(ensembles.maft_frozen_clip(_f32(p_seg), _f32(p_clip), jnp.asarray(seen), lam, jnp.asarray(valid)),
         expected)


def _ebseg_released(a_probs, b_probs, d_probs, no_object, overlap, alpha, beta, gamma):
  """EBSeg.py's inference lines, in float64: mask_logit = A, mask_logit_clip = B, pooled_logits = D."""
  overlap = overlap.astype(np.float64)
  training = np.log(1e-8 + (a_probs ** (1 - alpha - gamma) * d_probs ** alpha) * b_probs ** gamma) * overlap
  new = np.log(1e-8 + (a_probs ** (1 - beta - gamma) * d_probs ** beta * b_probs ** gamma)) * (1 - overlap)
  return _softmax(training + new) * (1 - no_object)[..., None]


@pytest.mark.parametrize("name", ["ebseg_vitb", "ebseg_vitl"])
def test_ebseg_as_released(inputs, name):
  (p_a, p_b, p_d), no_object, seen, _ = inputs
  spec = ensembles.PUBLISHED[name]
  expected = _ebseg_released(p_a, p_b, p_d, no_object, seen, spec.a, spec.b, spec.g)
  _close(ensembles.ebseg(_f32(p_a), _f32(p_b), _f32(p_d), jnp.asarray(seen), spec.a, spec.b, spec.g,
                         _f32(no_object)), expected)
  no_void = _ebseg_released(p_a, p_b, p_d, np.zeros_like(no_object), seen, spec.a, spec.b, spec.g)
  _close(ensembles.ebseg(_f32(p_a), _f32(p_b), _f32(p_d), jnp.asarray(seen), spec.a, spec.b, spec.g), no_void)


def test_released_weights_are_those_of_the_cited_sources():
  published = ensembles.PUBLISHED
  assert [published[n].weight for n in ("ovseg_ade", "ovseg_context", "ovseg_voc")] == [0.7, 0.6, 0.6]
  assert (published["ebseg_vitb"].a, published["ebseg_vitb"].b, published["ebseg_vitb"].g) == (0.09, 0.3, 0.7)
  assert (published["ebseg_vitl"].a, published["ebseg_vitl"].b, published["ebseg_vitl"].g) == (0.12, 0.4, 0.6)
  assert published["maft_ipclip"].method == "clip_only" and published["maft_ipclip"].ipclip
  assert "masked crops" in published["maft_ipclip"].note  # The stand-in without a MAFT checkpoint is named.
  assert (published["maft_ipclip_ensemble"].method, published["maft_ipclip_ensemble"].weight) == ("maft_frozen_clip",
                                                                                                 0.8)
  assert all("stand-in" in published[n].note for n in ("ebseg_vitb", "ebseg_vitl"))


def test_no_seen_classes_makes_the_frozen_clip_baseline_clip_only(inputs):
  (p_seg, p_clip, _), _, seen, _ = inputs
  out = np.asarray(ensembles.maft_frozen_clip(_f32(p_seg), _f32(p_clip), jnp.zeros_like(jnp.asarray(seen)), 0.8))
  np.testing.assert_array_equal(out.argmax(-1), p_clip.argmax(-1))


def test_zero_probabilities_follow_torch_pow():
  p = jnp.asarray([[0.0, 1.0]])
  np.testing.assert_allclose(ensembles.ovseg(p, jnp.asarray([[0.5, 0.5]]), 1.0), [[0.5, 0.5]])  # 0^0 = 1
  np.testing.assert_allclose(ensembles.ovseg(p, jnp.asarray([[0.5, 0.5]]), 0.6), [[0.0, 0.5 ** 0.6]])  # 0^w = 0
