"""EBSeg training and inference: the SSC loss and the released three-way inference against float64 numpy
transcriptions of `EBSeg.py`; a tiny model's loss falls on a synthetic batch while its frozen SAM and CLIP weights
stay bit-identical and their position embeddings move; a tiny run through the main entry point."""
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovseg_jax.eval import ensembles
from ovseg_jax.methods.ebseg import inference, objective

REPO = Path(__file__).resolve().parents[1]


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _released_ssc(embeddings, classes, pred_for_target, matched, text):
  """`get_ssc_loss` per image: Gram matrix of the matched embeddings vs the text cosines of their labels, MSE, summed
  over images / b; the indices are (mask_idx, label_idx) of the valid matched targets."""
  losses = []
  for e, c, p, m in zip(embeddings, classes, pred_for_target, matched):
    label_idx = np.flatnonzero(m)
    if not len(label_idx):
      continue  # The released MSE is NaN here and zeroes the batch; this image adds nothing instead.
    emb = e[p[label_idx]]
    labels = c[label_idx]
    losses.append(np.mean((emb @ emb.T - text[labels][:, labels]) ** 2))
  return sum(losses) / len(embeddings)


def test_ssc_loss_equals_float64_reference():
  rng = np.random.default_rng(3)
  b, q, d, m, k = 3, 7, 6, 4, 9
  embeddings = rng.normal(size=(b, q, d)) * 2
  classes = rng.integers(0, k, size=(b, m))
  classes[1, 3] = -1  # Padding.
  matched = classes >= 0
  matched[2] = False  # An image without targets.
  pred_for_target = np.stack([rng.permutation(q)[:m] for _ in range(b)])
  text = rng.normal(size=(k, d))
  text /= np.linalg.norm(text, axis=-1, keepdims=True)
  ours = objective.ssc_loss(jnp.asarray(embeddings, jnp.float32), jnp.asarray(classes), jnp.asarray(pred_for_target),
                            jnp.asarray(matched), jnp.asarray(text @ text.T, jnp.float32))
  expected = _released_ssc(embeddings, classes, pred_for_target, matched, text @ text.T)
  np.testing.assert_allclose(float(ours), expected, rtol=1e-5)
  bad = embeddings.copy()
  bad[0, pred_for_target[0, 0]] = np.nan
  assert float(objective.ssc_loss(jnp.asarray(bad, jnp.float32), jnp.asarray(classes), jnp.asarray(pred_for_target),
                                  jnp.asarray(matched), jnp.asarray(text @ text.T, jnp.float32))) == 0.0


def _released_semantic_scores(logits_a, logits_b, logits_d, overlap, masks, alpha, beta, gamma):
  """The inference branch of `EBSeg.forward` and `semantic_inference`, float64."""
  pooled, a, clip = (_softmax(x[..., :-1]) for x in (logits_d, logits_a, logits_b))
  training = np.log(1e-8 + a ** (1 - alpha - gamma) * pooled ** alpha * clip ** gamma) * overlap
  new = np.log(1e-8 + a ** (1 - beta - gamma) * pooled ** beta * clip ** gamma) * (1 - overlap)
  no_object = _softmax(logits_a)[..., -1:]
  cls = np.concatenate([_softmax(training + new) * (1 - no_object), no_object], -1)
  cls = _softmax(np.log(cls + 1e-8))[..., :-1]
  return np.einsum("bqc,bqhw->bchw", cls, 1 / (1 + np.exp(-masks)))


@pytest.mark.parametrize("name", ["ebseg_vitb", "ebseg_vitl"])
def test_three_way_inference_equals_float64_reference(name):
  rng = np.random.default_rng(4)
  b, q, k = 2, 5, 8
  logits = {key: rng.normal(size=(b, q, k + 1)) * 4 for key in ("pred_logits", "logits_b", "logits_d")}
  masks = rng.normal(size=(b, q, 6, 6)) * 3
  seen = rng.random(k) < 0.5
  spec = ensembles.PUBLISHED[name]
  outputs = {**{key: jnp.asarray(v, jnp.float32) for key, v in logits.items()}, "pred_masks": jnp.asarray(masks)}
  ours = inference.semantic_scores(outputs, jnp.asarray(seen), "learned", spec, (6, 6))
  expected = _released_semantic_scores(logits["pred_logits"], logits["logits_b"], logits["logits_d"],
                                       seen.astype(np.float64), masks, spec.a, spec.b, spec.g)
  np.testing.assert_allclose(np.asarray(ours, np.float64), expected, rtol=2e-5, atol=1e-7)


@pytest.fixture(scope="module")
def tiny():
  from configs import ebseg_demo
  from ovseg_jax.methods.ebseg import setup
  from ovseg_jax.train import sharding
  config = ebseg_demo.get_config("tiny")
  config.model.train_sam = False  # The published configs' freezing.
  config.batch_size = 8  # One image per fake device (tests/conftest.py).
  config.model.decoder.num_layers = 1  # Each decoder layer adds a criterion to compile, and no coverage here.
  return config, setup.build(config, sharding.make_mesh(config.mesh.axes))


def _synthetic_batch(config, seed=0):
  """Scenes of two or three axis-aligned blocks of flat colour, each its own training class, on background."""
  rng = np.random.default_rng(seed)
  size, m = config.data.crop_size, config.data.max_targets
  images = np.zeros((config.batch_size, size, size, 3), np.uint8)
  segments = np.zeros((config.batch_size, size, size), np.int32)
  classes = np.full((config.batch_size, m), -1, np.int32)
  classes[:, 0] = 0  # Background, target 0.
  for i in range(config.batch_size):
    images[i] = rng.integers(0, 60, size=3)
    for t in range(1, rng.integers(2, 4)):
      y, x = rng.integers(0, size - 24, size=2)
      cls = int(rng.integers(1, 6))
      images[i, y:y + 24, x:x + 24] = 60 + 30 * cls
      segments[i, y:y + 24, x:x + 24] = t
      classes[i, t] = cls
  return {"image": images, "segments": segments, "target_classes": classes}


@pytest.fixture(scope="module")
def trained(tiny):
  """(losses, initial params, final params) of six steps on one batch (the step donates its state)."""
  from ovseg_jax.train import sharding
  config, trainable = tiny
  batch = sharding.host_batch_to_global(_synthetic_batch(config), sharding.make_mesh(config.mesh.axes))
  initial = jax.tree.map(np.array, trainable.state.params)
  state, losses = trainable.state, []
  for _ in range(6):
    state, metrics = trainable.step(state, batch, jax.random.key(0), trainable.frozen)
    losses.append({k: float(v) for k, v in metrics.items()})
  return losses, initial, jax.tree.map(np.array, state.params)


def test_tiny_training_lowers_the_loss(trained):
  losses, _, _ = trained
  totals = [m["loss"] for m in losses]
  assert np.all(np.isfinite(totals)) and min(totals[3:]) < totals[0], totals
  assert all(m["loss_ce_b"] > 0 and m["loss_ssc"] >= 0 for m in losses)


def test_frozen_parts_stay_bit_identical(trained):
  _, initial, final = trained
  flat = lambda tree: {"/".join(str(getattr(k, "key", k)) for k in path): v
                       for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  before, after = flat(initial), flat(final)
  moved = {name for name in before if not np.array_equal(before[name], after[name])}
  trained_positions = {"sam/pos_embed", "clip/visual/positional_embedding"}
  frozen = {n for n in before if n.split("/")[0] in ("sam", "clip")} - trained_positions
  assert not moved & frozen, sorted(moved & frozen)[:5]
  assert trained_positions <= moved
  assert {"adab/logit_scale", "background_embedding", "fusion_projections_0/kernel"} <= moved


@pytest.mark.slow  # A long end-to-end check: `python -m pytest -q -m slow`.
def test_tiny_run_through_main(tmp_path):
  """`python -m ovseg_jax.main` trains the tiny config and evaluates every configured classifier (a random CLIP:
  the figures are only checked to be scores)."""
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "ovseg_jax.main", "--config=configs/ebseg_demo.py:tiny", f"--workdir={workdir}",
         f"--config.data.demo_root={tmp_path / 'demo'}", "--config.batch_size=8"]  # One image per fake device.
  run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
  assert run.returncode == 0, run.stderr[-3000:]
  rows = {r["predictor"]: r for r in json.loads((workdir / "results.json").read_text())}
  assert {"EBSeg", "EBSeg (embedding_b)"} <= set(rows), set(rows)
  for name in ("EBSeg", "EBSeg (embedding_b)"):
    assert 0.0 <= rows[name]["seen_miou"] <= 1.0 and 0.0 <= rows[name]["unseen_miou"] <= 1.0


@pytest.mark.parametrize("name,millions", [("ebseg_vitb", 26.6), ("ebseg_vitl", 28.0)])
def test_published_configs_train_the_supplements_parameter_count(name, millions):
  """Supplement table 3: EBSeg trains 26.6M parameters with CLIP ViT-B/16 and 28.0M with ViT-L/14 (all but the
  frozen SAM and CLIP, whose position embeddings are trained), to the table's last digit."""
  import importlib
  from ovseg_jax.methods.ebseg import setup
  from ovseg_jax.train import sharding
  config = importlib.import_module(f"configs.{name}").get_config()
  params = setup.build(config, sharding.make_mesh(config.mesh.axes), abstract=True).state.params
  sizes, trained = jax.tree.leaves(jax.tree.map(lambda x: x.size, params)), jax.tree.leaves(setup.trained_mask(params))
  assert abs(sum(s for s, t in zip(sizes, trained) if t) / 1e6 - millions) < 0.1  # 26.66M and 28.04M here.
