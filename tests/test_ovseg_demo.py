"""OVSeg's open-vocabulary demo, piece by piece on untrained tiny workdirs (a step-0 checkpoint and config.json, as
`ovseg_jax.main` writes them): proposals of a mask model workdir against a numpy resize, CLIP workdirs as engine
classifiers, the mining command (resumable, with counts), the seed table; and the whole tiny pipeline (slow)."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from etils import epath
from PIL import Image

from configs import ovseg_demo
from data_pipelines import demo_data
from ovseg_jax.eval import classify, engine, mask_scores
from ovseg_jax.eval.open_vocabulary import proposal_predictor
from ovseg_jax.eval.protocol import Protocol
from ovseg_jax.methods import registry
from ovseg_jax.methods.clip import setup as clip_setup
from ovseg_jax.methods.ovseg import demo, demo_rows, demo_table, mine, proposals
from ovseg_jax.models.resize import linear_resize_matrix
from ovseg_jax.ops.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize_images
from initial_workdirs import initial_workdir


def _tiny_config(root):
  config = ovseg_demo.get_config("tiny")
  for name in ("clip", "proposals", "finetune", "prompts", "maft", "ebseg"):
    config[name].data.demo_root = str(root / "demo")
  return config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("ovseg_demo")
  config = _tiny_config(root)
  prompted = ml_collections.ConfigDict(config.prompts.to_dict())
  prompted.model.mask_prompt_depth = 1  # The tiny CLIP has one block.
  prompted.init.required = False
  return config, root, {"proposals": initial_workdir(config.proposals, root / "proposals"),
                        "clip": initial_workdir(config.clip, root / "clip"),
                        "prompts": initial_workdir(prompted, root / "prompts")}


def test_proposals_of_a_mask2former_workdir_at_the_image_size(tiny):
  config, _, dirs = tiny
  mask_model = proposals.load_mask_model(dirs["proposals"])
  assert mask_model.own_classes == tuple(n for n in demo_data.class_names() if n not in ovseg_demo.UNSEEN)
  image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
  soft = proposals.soft_proposals(mask_model)(image)
  assert soft.shape == (config.proposals.model.decoder.num_queries, 40, 56)
  resized = np.asarray(Image.fromarray(image).resize((64, 64), Image.BILINEAR))
  logits = jax.jit(lambda p, x: mask_model.model.apply({"params": p}, normalize_images(
      x[None], IMAGENET_MEAN, IMAGENET_STD))["pred_masks"][0])(mask_model.params, jnp.asarray(resized))
  logits = np.asarray(logits, np.float64)
  rows, cols = linear_resize_matrix(logits.shape[1], 40), linear_resize_matrix(logits.shape[2], 56)
  expected = 1 / (1 + np.exp(-np.einsum("ih,nhw,jw->nij", rows, logits, cols)))
  np.testing.assert_allclose(soft, expected, atol=2e-5)
  np.testing.assert_array_equal(proposals.binary_proposals(mask_model, 0.3)(image), soft > 0.3)


def test_a_clip_workdir_is_no_proposal_model(tiny):
  with pytest.raises(ValueError, match="proposals come from"):
    proposals.load_mask_model(tiny[2]["clip"])


def test_clip_workdirs_are_classifiers_with_their_own_architecture(tiny):
  config, _, dirs = tiny
  frozen = clip_setup.classifier(ml_collections.ConfigDict({"checkpoint": str(dirs["clip"]), "mask_threshold": 0.4}))
  assert frozen.module.architecture.image_size == 64 and frozen.crop_size == 64 and frozen.mask_threshold == 0.4
  assert frozen.module.architecture.mask_prompt_depth == 0
  prompted = clip_setup.classifier(ml_collections.ConfigDict({"checkpoint": str(dirs["prompts"])}))
  assert prompted.params["visual"]["mask_prompts"].shape[0] == 1
  assert isinstance(prompted.params["visual"]["proj"], np.ndarray)  # Host copies: any predictor can replicate them.
  assert clip_setup.classifier(ml_collections.ConfigDict({"checkpoint": ""})) is None


def _fake_outputs():
  """Two masks on a 4 x 4 window over own classes (background, circle): logits, probabilities, no-object."""
  logits = np.zeros((1, 2, 4, 4), np.float32)
  logits[0, 0, :, :2], logits[0, 0, :, 2:] = 3, -3
  logits[0, 1] = -logits[0, 0]
  probs = np.asarray([[[0.7, 0.1], [0.1, 0.3]]], np.float32)  # The rest of each row is no-object.
  no_object = 1 - probs.sum(-1)
  return lambda p, windows: (jnp.asarray(logits), jnp.asarray(probs), jnp.asarray(no_object)), logits, probs


def test_fixed_head_alone_scores_its_own_classes_and_never_a_held_out_one():
  outputs, logits, probs = _fake_outputs()
  protocol = Protocol(short_side=None, window=4, stride=4, templates=("{}",), background="none",
                      background_threshold=0.5, background_score=0.5, decode="sum", batch_size=1, synonyms={})
  predictor = proposal_predictor(outputs, {}, ("background", "circle"), ("background", "circle", "star", "moon"), 0,
                                 protocol)
  scores = predictor.scores([np.zeros((4, 4, 3), np.uint8)])[0]
  m = 1 / (1 + np.exp(-logits[0].astype(np.float64)))
  expected = np.einsum("nc,nhw->chw", probs[0], m) / m.sum(0)
  np.testing.assert_allclose(scores[:2], expected, rtol=1e-5)
  assert np.all(scores[2:] == 0)


def test_a_maft_ip_clip_names_the_proposals_with_its_own_forward(tiny):
  """A ClipSetup with `ipclip` (a MAFT workdir's) scores every proposal in one IP-CLIP pass, not by masked crops."""
  _, _, dirs = tiny
  clip = clip_setup.classifier(ml_collections.ConfigDict({"checkpoint": str(dirs["clip"])}))
  ipclip = dataclasses.replace(clip, ipclip=(0, clip.crop_size))
  outputs, logits, probs = _fake_outputs()
  protocol = Protocol(short_side=None, window=4, stride=4, templates=("{}",), background="none",
                      background_threshold=0.5, background_score=0.5, decode="sum", batch_size=1, synonyms={})
  names = ("background", "circle", "star")
  window = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
  scores = {setup.ipclip: proposal_predictor(outputs, {}, names[:2], names, 0, protocol, "ensemble:maft_ipclip",
                                             setup).scores([window])[0] for setup in (clip, ipclip)}
  text = mask_scores.class_text_embeddings(clip.module, clip.params, list(names), ("{}",),
                                           clip.module.architecture.context_length)
  p_clip = jax.jit(lambda p, x: classify.ipclip_class_probs(clip.module, p, normalize_images(x[None]),
                                                             jnp.asarray(logits), text, 0, clip.crop_size))(
      clip.params, jnp.asarray(window))
  m = 1 / (1 + np.exp(-logits[0].astype(np.float64)))
  expected = np.einsum("nc,nhw->chw", np.asarray(p_clip[0], np.float64), m) / m.sum(0)
  np.testing.assert_allclose(scores[ipclip.ipclip], expected, rtol=1e-4, atol=1e-6)
  assert not np.allclose(scores[None], expected, rtol=1e-4, atol=1e-6)


def test_engine_rows_for_the_head_a_clip_workdir_and_the_ensemble(tiny, tmp_path):
  config, root, dirs = tiny
  mask_model = proposals.load_mask_model(dirs["proposals"])
  clip = clip_setup.classifier(ml_collections.ConfigDict({"checkpoint": str(dirs["clip"]), "mask_threshold": 0.4}))
  prompted = clip_setup.classifier(ml_collections.ConfigDict({"checkpoint": str(dirs["prompts"])}))
  specs = [("head", "learned", None), ("crops", "clip_crop", clip), ("ens", config.ensemble, prompted)]
  data_root = str(epath.Path(demo_data.ensure_for_config(config.clip.data, 0).eval_dir).parent)
  rows = engine.evaluate_suite(config.eval, proposals.candidates(mask_model, specs), tmp_path, "t", {"demo": data_root})
  by_name = {r["predictor"]: r for r in rows}
  assert {"head", "crops", "ens", "uniform random"} <= set(by_name)
  assert by_name["head"]["unseen_miou"] == 0.0
  for name in ("head", "crops", "ens"):
    assert 0 <= by_name[name]["seen_miou"] <= 1 and np.isfinite(by_name[name]["harmonic_miou"])
  assert "no-object probability" in by_name["ens"]["classifier_note"]
  assert "ens" in (tmp_path / "results.md").read_text()


def test_mining_a_workdir_s_proposals_is_resumable_and_counted(tiny, tmp_path):
  config, _, dirs = tiny
  # Eight scenes, not the 32 of the tiny config: each is proposed, cropped and named image by image.
  data = ml_collections.ConfigDict({**config.clip.data.to_dict(), "num_train": 8})
  shards = demo_data.ensure_for_config(data, 0).train_shards
  counts = mine.mine(dirs["proposals"], dirs["clip"], shards, tmp_path / "pairs", min_pixels=1)
  assert counts["images"] == data.num_train
  assert counts["masks"] == counts["images"] * config.proposals.model.decoder.num_queries
  assert counts["pairs"] + counts["masks_empty"] + counts["pairs_dropped"] <= counts["masks"]
  assert json.loads((tmp_path / "pairs" / "counts.json").read_text()) == counts
  mined = tmp_path / "pairs" / "00000.tar"
  before = mined.stat().st_mtime_ns
  assert mine.mine(dirs["proposals"], dirs["clip"], shards, tmp_path / "pairs", min_pixels=1) == counts
  assert mined.stat().st_mtime_ns == before  # Nothing mined twice.


def test_seed_table_means_and_spreads(tmp_path):
  rows = {seed: [{"predictor": "a", "seen_miou": s, "unseen_miou": u, "harmonic_miou": 0.5,
                  "per_class_iou": {"star": u, "moon": float("nan")}}] for seed, s, u in
          ((0, 0.2, 0.1), (1, 0.4, 0.3), (2, 0.9, 0.2))}
  rows[2][0]["per_class_crop_accuracy"] = {"ring": 0.5}  # Seeds' splits may hold different classes.
  rows[1][0]["per_class_crop_accuracy"] = {"star": 1.0, "ring": 0.25}
  summary = demo_table.summarize(rows, ["a", "missing"])
  assert len(summary) == 1 and summary[0]["seeds"] == 3
  np.testing.assert_allclose(summary[0]["seen_miou"], (np.mean([0.2, 0.4, 0.9]), np.std([0.2, 0.4, 0.9], ddof=1)))
  assert np.isnan(summary[0]["crop_accuracy_seen"][0])
  demo_table.write(rows, ["a"], ("star",), tmp_path)
  text = (tmp_path / "results.md").read_text()
  assert "| a | 3 | 50.0 ± 36.1 | 20.0 ± 10.0 |" in text
  assert "| ring | 37.5 |" in text and "| star | 20.0 |" in text and "| moon | n/a |" in text


def test_the_demo_runs_from_main_and_its_rows_name_its_stages():
  config = ovseg_demo.get_config()
  assert registry.get(config).train_and_evaluate is demo.train_and_evaluate
  assert set(demo_rows.clip_stages(demo_rows.ROWS)) <= set(demo.STAGES)
  assert {config[s].data.palette for s in ("clip", "proposals", "maft", "ebseg")} == {"shared"}
  # MAFT and EBSeg start from the seed's pre-trained CLIP: the same architecture.
  assert config.maft.model.to_dict() == config.ebseg.model.clip.to_dict() == config.clip.model.to_dict()
  demo._check(config)
  bad = dataclasses.replace(demo_rows.ROWS[1], clip_stage="proposals")
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(demo_rows, "ROWS", [*demo_rows.ROWS, bad])
    with pytest.raises(ValueError, match="no CLIP-training stage"):
      demo._check(config)
  with pytest.raises(ValueError, match="one stage's config"):
    registry.get(config).build(config, None)


def test_stages_run_in_any_split_of_commands_but_never_before_what_they_read(tmp_path):
  config = ovseg_demo.get_config("tiny")
  config.stages = ("clip", "typo")
  with pytest.raises(ValueError, match=r"config.stages names \['typo'\]"):
    demo.train_and_evaluate(config, tmp_path)
  config.stages = ("pairs",)
  with pytest.raises(ValueError, match=r"'pairs' reads the workdirs of \['clip', 'proposals'\]"):
    demo.train_and_evaluate(config, tmp_path)
  for stage in ("clip", "proposals"):  # Finished as far as the runner can tell: the seed still waits for the rest.
    (tmp_path / "seed_0" / stage).mkdir(parents=True)
    (tmp_path / "seed_0" / stage / "stage_done.json").write_text("{}")
  config.update(seeds=(0,), stages=())
  with pytest.MonkeyPatch.context() as patch:
    ran = []
    patch.setattr(demo, "STAGES", {name: dataclasses.replace(stage, run=lambda c, s, d, name=name: ran.append(name))
                                   for name, stage in demo.STAGES.items() if name in ("clip", "proposals", "pairs")}
                  | {name: stage for name, stage in demo.STAGES.items() if name not in ("clip", "proposals", "pairs")})
    config.stages = ("clip", "proposals", "pairs")
    assert demo.train_and_evaluate(config, tmp_path) == []  # finetune, prompts, maft, ebseg not finished.
  assert ran == ["pairs"]
  assert not (tmp_path / "seed_0" / "eval").exists()


@pytest.mark.slow  # Every stage of the tiny demo trains and compiles: `python -m pytest -q -m slow`.
def test_tiny_demo_end_to_end(tmp_path):
  config = _tiny_config(tmp_path)
  config.seeds = (0,)
  for section in ("proposals", "maft", "ebseg"):
    config[section].batch_size = 8  # One image per fake device (tests/conftest.py).
  summary = demo.train_and_evaluate(config, tmp_path / "run")
  assert [s["predictor"] for s in summary] == [r.name for r in demo_rows.ROWS]
  text = (tmp_path / "run" / "results.md").read_text()
  assert "Per-class IoU" in text and "pairs" in text
  for stage in demo.STAGES:
    assert (tmp_path / "run" / "seed_0" / stage / "stage_done.json").exists()
  reread = demo.evaluate_workdir(config, tmp_path / "run")  # Re-reads the finished seed.
  assert json.dumps(reread) == json.dumps(summary)  # NaN-aware: rows without crop accuracy hold NaN.
