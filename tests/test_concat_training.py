"""CONCAT's stages on the tiny panoptic demo: each step trains its own parts only (the others bit-identical), the
losses are finite, and the three stages run through the shared fit and are evaluated with sPQ / uPQ / hPQ."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import concat_demo
from ovseg_jax.methods.concat import stages, trainer
from ovseg_jax.methods.mask2former import data as m2f_data
from ovseg_jax.models.clip import CLIP, ClipArchitecture
from ovseg_jax.train import sharding

TRAINED = {"base": {"mask2former", "projector"}, "cat": {"generator"}, "union": {"projector"}}


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
  config = concat_demo.get_config("tiny")
  config.data.demo_root = str(tmp_path_factory.mktemp("demo"))
  config = trainer.resolved(config)
  arch = ClipArchitecture(embed_dim=8, image_size=16, patch_size=8, vision_width=16, vision_layers=1, vision_heads=2,
                          context_length=8, vocab_size=49408, text_width=16, text_layers=1, text_heads=2)
  clip = CLIP(arch)
  params = jax.jit(clip.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 8), jnp.int32))["params"]
  text = jax.random.normal(jax.random.key(1), (len(config.data.class_names), 8))
  config.concat.clip_image_size = 16
  config.optimizer.warmup_steps = 0  # A warm-up would start at lr 0: the first step must move the trained parts.
  return config, clip, {"clip": params, "text": text}


@pytest.fixture(scope="module")
def batch(setting):
  config = setting[0]
  return jax.tree.map(jnp.asarray, next(m2f_data.host_batches(config, 0)))


@pytest.mark.parametrize("stage", ["base", "cat", "union"])
def test_a_step_trains_only_its_parts(setting, batch, stage):
  config, clip, frozen = setting
  mesh = sharding.make_mesh(config.mesh.axes)
  trainable = stages.build(trainer.stage_config(config, stage), mesh, stage, clip, frozen)
  before = jax.tree.map(np.asarray, trainable.state.params)
  state, metrics = trainable.step(trainable.state, batch, jax.random.key(0), frozen)
  assert np.isfinite(float(metrics["loss"]))
  if stage == "base":
    assert np.isfinite(float(metrics["loss_con"])) and float(metrics["loss_con"]) > 0
  after = jax.tree.map(np.asarray, state.params)
  for group in before:
    same = jax.tree.leaves(jax.tree.map(np.array_equal, before[group], after[group]))
    if group in TRAINED[stage]:
      assert not all(same), f"{stage} left {group} unchanged"
    else:
      assert all(same), f"{stage} changed the frozen {group}"


def test_classes_split_into_training_and_unseen_columns(setting):
  config = setting[0]
  seen, unseen = stages.class_columns(config)
  names = list(config.data.class_names)
  assert [names[i] for i in unseen] == ["star", "moon", "house", "water"]
  assert len(seen) == 14 and not set(seen) & set(unseen)


@pytest.mark.slow
def test_three_stages_run_and_report_zero_shot_pq(setting, tmp_path, monkeypatch):
  config, clip, frozen = setting
  monkeypatch.setattr(trainer, "frozen_clip", lambda c, mesh: (clip, frozen))
  rows = trainer.train_and_evaluate(config, tmp_path)
  assert [r["predictor"].split()[1] for r in rows] == ["base", "cat", "union"]
  for r in rows:
    assert r["num_images"] == 4 and {"seen_pq", "unseen_pq", "harmonic_pq", "pq"} <= set(r)
  assert "uPQ" in (tmp_path / "results.md").read_text()
  for stage in ("base", "cat", "union"):
    assert (tmp_path / stage / "checkpoints").exists()


def test_inductive_runs_the_base_alone_and_raises_unseen_logits(setting):
  config = setting[0].copy_and_resolve_references()
  config.concat.setting = "inductive"
  assert trainer.stage_names(config) == ("base",)
  config.concat.setting = "zero"
  with pytest.raises(ValueError, match="inductive"):
    trainer.stage_names(config)
