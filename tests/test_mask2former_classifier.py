"""Mask2Former's pluggable classifier: the text classifier against a float64 numpy transcription, its place in
every prediction of the model, config checks, and a few training steps of the tiny demo with a text classifier
(a tiny random CLIP fixture as the text tower) evaluated on every class, unseen ones included."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovseg_jax.models.mask2former import Mask2Former
from ovseg_jax.models.mask2former_decoder import MaskedAttentionDecoder
from ovseg_jax.models.mask2former_pixel_decoder import MSDeformAttnPixelDecoder
from ovseg_jax.models.query_classifiers import TextClassifier
from ovseg_jax.models.resnet import ResNet

CLIP_FIXTURE = Path(__file__).parent / "fixtures" / "clip" / "hf"  # A tiny random CLIP, text embeddings of 16.


def full_vocabulary_clip(directory: Path) -> Path:
  """The fixture CLIP with token embeddings for every BPE id (its own 300 would gather NaN for class names)."""
  import json
  from safetensors.numpy import load_file, save_file
  config = json.loads((CLIP_FIXTURE / "config.json").read_text())
  config["text_config"]["vocab_size"] = 49408
  state = load_file(CLIP_FIXTURE / "model.safetensors")
  key = "text_model.embeddings.token_embedding.weight"
  state[key] = np.resize(state[key], (49408, state[key].shape[1]))
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "config.json").write_text(json.dumps(config))
  save_file(state, str(directory / "model.safetensors"))
  return directory


def np_text_logits(queries, kernel, bias, class_embeddings, no_object, scale):
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  projected = unit(queries @ kernel + bias)
  classes = unit(np.concatenate([class_embeddings, no_object]))
  return scale * projected @ classes.T


@pytest.mark.parametrize("learn", [True, False])
def test_text_classifier_equals_numpy(learn):
  rng = np.random.default_rng(0)
  queries, text = rng.normal(size=(2, 5, 8)), rng.normal(size=(3, 6))
  classifier = TextClassifier(embed_dim=6, temperature=0.05, learn_temperature=learn)
  params = jax.jit(classifier.init)(jax.random.key(0), jnp.asarray(queries, jnp.float32),
                                    jnp.asarray(text, jnp.float32))
  params = jax.tree.map(np.asarray, params["params"])
  assert ("logit_scale" in params) == learn
  if learn:
    np.testing.assert_allclose(np.exp(params["logit_scale"]), 20.0, rtol=1e-6)
  apply = jax.jit(classifier.apply)
  out = apply({"params": params}, jnp.asarray(queries, jnp.float32), jnp.asarray(text, jnp.float32))
  assert out.shape == (2, 5, 4)  # Three classes and "no object" last.
  p = params["projection"]
  expected = np_text_logits(queries, p["kernel"], p["bias"], text, params["no_object_embedding"], 20.0)
  np.testing.assert_allclose(out, expected, atol=1e-5)
  with pytest.raises(ValueError, match=r"needs class_embeddings \[K, 6\]; got \(3, 5\)"):
    apply({"params": params}, jnp.asarray(queries, jnp.float32), jnp.zeros((3, 5)))


def test_learned_logit_scale_is_capped():
  classifier = TextClassifier(embed_dim=4, temperature=0.001)
  x, text = jnp.ones((1, 2, 4)), jnp.eye(4)[:2]
  params = jax.jit(classifier.init)(jax.random.key(0), x, text)
  assert float(jnp.max(jnp.abs(jax.jit(classifier.apply)(params, x, text)))) <= 100.0 + 1e-4


def _tiny_mask2former(classifier=None, num_classes=0):
  return Mask2Former(
      ResNet((1, 1, 1, 1), 8, (4, 4, 4, 4), (8, 8, 8, 8)),
      MSDeformAttnPixelDecoder(conv_dim=16, mask_dim=16, num_layers=1, num_heads=2, ffn_dim=16, num_groups=4),
      MaskedAttentionDecoder(num_classes=num_classes, num_queries=4, hidden_dim=16, num_heads=2, ffn_dim=16,
                             num_layers=3, mask_dim=16),
      classifier)


def test_every_prediction_is_classified_by_the_plugged_classifier():
  model = _tiny_mask2former(TextClassifier(embed_dim=6))
  images = jnp.asarray(np.random.default_rng(1).normal(size=(1, 64, 64, 3)), jnp.float32)
  text = jnp.asarray(np.random.default_rng(2).normal(size=(3, 6)), jnp.float32)
  params = jax.jit(model.init)(jax.random.key(0), images, class_embeddings=text)["params"]
  assert "class_embed" not in params["decoder"] and "projection" in params["classifier"]

  def predictions(params):
    out = model.apply({"params": params}, images, class_embeddings=text)
    expected = [TextClassifier(embed_dim=6).apply({"params": params["classifier"]}, p["query_embeddings"], text)
                for p in [out, *out["aux_outputs"]]]
    return out, expected, model.apply({"params": params}, images, class_embeddings=jnp.concatenate([text, text[:2]]))
  out, expected, wider = jax.jit(predictions)(params)
  for prediction, logits in zip([out, *out["aux_outputs"]], expected, strict=True):
    np.testing.assert_allclose(prediction["pred_logits"], logits, atol=1e-6)
  # Any vocabulary: five classes give five columns plus "no object", the masks unchanged.
  assert wider["pred_logits"].shape == (1, 4, 6)
  np.testing.assert_array_equal(wider["pred_masks"], out["pred_masks"])
  with pytest.raises(ValueError, match=r"both a K\+1 class head .* and a classifier"):
    jax.jit(_tiny_mask2former(TextClassifier(embed_dim=6), num_classes=3).init)(jax.random.key(0), images,
                                                                                class_embeddings=text)


def test_classifier_section_checks():
  from ovseg_jax.methods.mask2former import classifier
  assert classifier.classifier_section(None)["kind"] == "head"
  with pytest.raises(ValueError, match=r"model.classifier.kind='linear'"):
    classifier.classifier_section({"kind": "linear"})
  with pytest.raises(ValueError, match=r"set text_encoder .* and embed_dim"):
    classifier.classifier_section({"kind": "text"})
  with pytest.raises(ValueError, match=r"unknown keys \['temprature'\]"):
    classifier.classifier_section({"kind": "text", "temprature": 0.1})
  with pytest.raises(ValueError, match=r"embed_dim=32 but .* embeds text in 16 dimensions"):
    classifier.TextEmbedder({"kind": "text", "text_encoder": str(CLIP_FIXTURE), "embed_dim": 32}, None)


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
  from configs import mask2former_demo
  from ovseg_jax.methods.mask2former import setup
  from ovseg_jax.train import sharding
  config = mask2former_demo.get_config("tiny,text")
  clip = full_vocabulary_clip(tmp_path_factory.mktemp("clip"))
  config.model.classifier.update(text_encoder=str(clip), embed_dim=16)
  config.data.demo_root = str(tmp_path_factory.mktemp("demo"))
  config.batch_size = 8  # One image per fake device (tests/conftest.py).
  return config, setup.build(config, sharding.make_mesh(config.mesh.axes))


@pytest.mark.slow  # A long end-to-end check: `python -m pytest -q -m slow`.
def test_text_classifier_trains_on_seen_names_and_scores_every_class(tiny_text, tmp_path):
  from configs import mask2former_demo
  from ovseg_jax.methods.mask2former import classifier, data, trainer
  from ovseg_jax.train import sharding
  config, trainable = tiny_text
  seen = data.training_classes(config)
  assert trainable.frozen.shape == (len(seen), 16)  # The seen names' text embeddings feed the step.
  batch = sharding.host_batch_to_global(next(data.host_batches(config, 0)), sharding.make_mesh(config.mesh.axes))
  state, losses = trainable.state, []
  for _ in range(4):
    state, metrics = trainable.step(state, batch, jax.random.key(0), trainable.frozen)
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses)) and min(losses[1:]) < losses[0], losses
  assert float(jnp.abs(state.params["classifier"]["logit_scale"] - np.log(1 / 0.07))) > 0  # It trains.
  embed = classifier.TextEmbedder(config.model.classifier, None)
  mesh = sharding.make_mesh(config.mesh.axes)
  everything = jax.device_put(embed(config.data.class_names), sharding.replicated(mesh))  # Seen and unseen names.
  windows = jnp.asarray(batch["image"][:2])
  scores = trainer.semantic_scores(trainable.model, state.params, windows, everything)
  assert scores.shape == (2, 13, 64, 64) and set(mask2former_demo.UNSEEN) <= set(config.data.class_names)
  seen_only = trainer.semantic_scores(trainable.model, state.params, windows, trainable.frozen)
  assert seen_only.shape == (2, len(seen), 64, 64)
  rows = trainer.evaluate(config, tmp_path, trainable.model, state.params, int(state.step))
  row = next(r for r in rows if r["predictor"] == trainer.NAME)
  assert np.isfinite(row["seen_miou"]) and np.isfinite(row["unseen_miou"])
