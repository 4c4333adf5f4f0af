"""CONCAT: the projector's text logits, the VAE generator and every loss against float64 numpy transcriptions."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovseg_jax.methods.concat import heads, losses, setup, stages

RNG = np.random.default_rng(0)


def _norm(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _logsumexp(x, axis=-1):
  m = np.max(np.where(np.isfinite(x), x, -1e300), axis=axis, keepdims=True)
  return (m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)))[..., 0]


def _f32(*arrays):
  return [jnp.asarray(a, jnp.float32) for a in arrays]


def test_text_logits_are_cosines_over_tau_with_no_object_last():
  emb, text, no_object = RNG.normal(size=(2, 3, 8)), RNG.normal(size=(5, 8)), RNG.normal(size=8)
  got = jax.jit(partial(heads.text_class_logits, tau=0.07))(*_f32(emb, text, no_object))
  want = np.einsum("bqc,kc->bqk", _norm(emb), _norm(np.concatenate([text, no_object[None]]))) / 0.07
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)


def _np_stack(params, x):
  for i in range(len([k for k in params if k.startswith("fc")])):
    x = x @ params[f"fc{i}"]["kernel"] + params[f"fc{i}"]["bias"]
    mean, var = x.mean(0), x.var(0)
    x = (x - mean) / np.sqrt(var + 1e-5) * params[f"bn{i}"]["scale"] + params[f"bn{i}"]["bias"]
    x = np.where(x > 0, x, 0.2 * x)
  return x


def _np_dense(p, x):
  return x @ p["kernel"] + p["bias"]


def test_generator_equals_float64_transcription():
  gen = heads.Generator(query_dim=6, hidden_dims=(16, 16, 16, 16), latent_dim=4)
  queries, text = RNG.normal(size=(10, 6)), RNG.normal(size=(10, 5))
  key = jax.random.key(3)
  params = jax.jit(gen.init)({"params": jax.random.key(0)}, *_f32(queries, text), key)["params"]
  assert len([k for k in params["encoder"] if k.startswith("fc")]) == 4
  out = jax.jit(gen.apply)({"params": params}, *_f32(queries, text), key)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  noise_key, prior_key = jax.random.split(key)
  eps = np.asarray(jax.random.normal(noise_key, (10, 4)), np.float64)
  prior = np.asarray(jax.random.normal(prior_key, (10, 4)), np.float64)
  h = _np_stack(p["encoder"], np.concatenate([queries, text], -1))
  mean, log_var = _np_dense(p["mean_head"], h), _np_dense(p["log_var_head"], h)
  decode = lambda z: _np_dense(p["out_head"], _np_stack(p["decoder"], np.concatenate([z, text], -1)))
  np.testing.assert_allclose(np.asarray(out["mean"]), mean, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(out["log_var"]), log_var, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(out["reconstruction"]), decode(mean + np.exp(0.5 * log_var) * eps),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(out["generated"]), decode(prior), rtol=1e-4, atol=1e-4)


def test_con_loss_equals_float64_infonce():
  n, b, c = 6, 5, 8
  projected, complete, masked = RNG.normal(size=(n, c)), RNG.normal(size=(n, c)), RNG.normal(size=(n, c))
  bank, bank_valid = RNG.normal(size=(n, b, c)), RNG.random((n, b)) < 0.7
  valid = np.array([1, 1, 0, 1, 1, 1], bool)
  targets = jax.jit(partial(losses.enhanced_targets, gamma=2.0))(*_f32(complete, masked))
  np.testing.assert_allclose(np.asarray(targets), _norm(complete + 2 * masked), rtol=1e-5, atol=1e-6)
  got = jax.jit(partial(losses.con_loss, tau=0.07))(*_f32(projected, targets, bank), bank_valid, valid)
  p = _norm(projected)
  pos = np.sum(p * _norm(complete + 2 * masked), -1) / 0.07
  neg = np.where(bank_valid, np.einsum("nc,nbc->nb", p, _norm(bank)) / 0.07, -np.inf)
  per_row = _logsumexp(np.concatenate([pos[:, None], neg], -1)) - pos
  assert float(got) == pytest.approx(per_row[valid].mean(), rel=1e-5)


def test_embedding_contrast_equals_float64_reference():
  n, e, d = 7, 4, 6
  generated, real, empty = RNG.normal(size=(n, d)), RNG.normal(size=(n, d)), RNG.normal(size=(e, d))
  classes = np.array([0, 1, 1, 2, 0, 3, 2])
  valid = np.array([1, 1, 1, 1, 0, 1, 1], bool)
  empty_valid = np.array([1, 0, 1, 1], bool)
  got = jax.jit(partial(losses.embedding_contrast, tau_r=0.07))(*_f32(generated, real), classes, *_f32(empty),
                                                                empty_valid, valid)
  g = _norm(generated)
  rows = []
  for i in np.nonzero(valid)[0]:
    terms = [g[i] @ _norm(real[i]) / 0.07]
    terms += [g[i] @ _norm(real[j]) / 0.07 for j in range(n) if valid[j] and classes[j] != classes[i]]
    terms += [g[i] @ _norm(empty[k]) / 0.07 for k in range(e) if empty_valid[k]]
    rows.append(-terms[0] + np.log(np.sum(np.exp(terms))))
  assert float(got) == pytest.approx(np.mean(rows), rel=1e-5)


def test_classification_and_vae_terms_equal_float64_reference():
  logits, classes = RNG.normal(size=(5, 4)) * 3, np.array([0, 3, 2, 1, 1])
  valid = np.array([1, 1, 0, 1, 1], bool)
  got = jax.jit(losses.classification_loss)(jnp.asarray(logits, jnp.float32), jnp.asarray(classes), jnp.asarray(valid))
  log_probs = logits - _logsumexp(logits)[:, None]
  assert float(got) == pytest.approx(-log_probs[np.arange(5), classes][valid].mean(), rel=1e-5)
  real, rec, mean, log_var = (RNG.normal(size=(5, 6)), RNG.normal(size=(5, 6)), RNG.normal(size=(5, 3)),
                              RNG.normal(size=(5, 3)) * 0.5)
  got = jax.jit(losses.vae_terms)(*_f32(real, rec, mean, log_var), jnp.asarray(valid))
  want = np.mean((rec - real) ** 2, -1) + 0.5 * np.sum(np.exp(log_var) + mean ** 2 - 1 - log_var, -1)
  assert float(got) == pytest.approx(want[valid].mean(), rel=1e-5)
  assert float(losses.cat_loss(1.0, 2.0, 3.0, lambda_r=0.1, lambda_f=0.01)) == pytest.approx(1.23)


def test_pseudo_queries_are_decoded_inside_the_context_batch():
  """Each class's pseudo queries come from one decoder batch [its rows; the context rows] (BatchNorm over that
  whole batch), against a float64 transcription."""
  gen = heads.Generator(query_dim=6, hidden_dims=(16, 16, 16, 16), latent_dim=4)
  params = jax.jit(gen.init)({"params": jax.random.key(0)}, *_f32(RNG.normal(size=(4, 6)), RNG.normal(size=(4, 5))),
                             jax.random.key(1))["params"]
  text, context = RNG.normal(size=(3, 5)), RNG.normal(size=(7, 5))
  models = setup.Models(mask2former=None, projector=None, generator=gen)
  key = jax.random.key(2)
  generate = jax.jit(lambda p, t, c, k: stages.generate_in_context(models, p, t, 2, c, k))
  got = np.asarray(generate({"generator": params}, *_f32(text), jnp.asarray(context, jnp.float32), key))
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  want = []
  for u, class_key in enumerate(jax.random.split(key, 3)):
    rows = np.concatenate([np.repeat(text[u:u + 1], 2, 0), context])
    prior = np.asarray(jax.random.normal(class_key, (len(rows), 4)), np.float64)
    want.append(_np_dense(p["out_head"], _np_stack(p["decoder"], np.concatenate([prior, rows], -1)))[:2])
  np.testing.assert_allclose(got, np.concatenate(want), rtol=1e-4, atol=1e-4)
