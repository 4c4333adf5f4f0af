r"""MAFT (Jiao et al. 2023): CLIP fine-tuned as IP-CLIP on a frozen supervised Mask2Former's proposals, through the
shared loop, then evaluated by the shared engine with IP-CLIP's scores alone and with the eq. 1 ensemble, beside
the same rows for the original (frozen) CLIP.

  python -m ovseg_jax.main --config=configs/maft_demo.py --workdir=/tmp/maft_demo \
      --config.init.clip=/tmp/clip_demo --config.init.mask2former=/tmp/m2f_demo
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import ml_collections

from data_pipelines import demo_data
from ovseg_jax.eval import engine
from ovseg_jax.eval.open_vocabulary import ClipSetup
from ovseg_jax.methods.clip import setup as clip_setup
from ovseg_jax.methods.maft import evaluation, ranking, setup
from ovseg_jax.methods.mask2former import data as m2f_data
from ovseg_jax.train import config_checks, fit, progress, sharding, workdir as workdirs

NAME = "MAFT"


def evaluate(config: ml_collections.ConfigDict, workdir: Path, model: Any, params: Any, step: int,
             original: Any | None = None) -> list[dict[str, Any]]:
  """The eval suite of `config.eval`: the fine-tuned IP-CLIP's rows, and with `original` (the CLIP it started
  from) the frozen-CLIP rows."""
  m2f_model, m2f_params, m2f_config = setup.restore_mask2former(config.init.mask2former)
  proposals = evaluation.Proposals(m2f_model, m2f_params, tuple(m2f_data.training_classes(m2f_config)))
  rows = lambda p, name: evaluation.candidates(proposals, model, p, config.maft.start_layers, config.maft.input_size,
                                               config.maft.templates, name)
  candidates = rows(params, f"{NAME} at step {step}")
  if original is not None:
    candidates += rows(original, "frozen CLIP")
  if config.data.source == "demo":
    held_out = demo_data.load_labelled_split(demo_data.ensure_for_config(config.data, config.seed).eval_dir)
    seen = set(m2f_data.training_classes(m2f_config))
    measured = {name: ranking.proposal_ranking(proposals, model, p, held_out.images, held_out.labels,
                                               held_out.class_names, seen, setup.settings(config), config.maft.templates)
                for name, p in ((f"{NAME} at step {step}", params), ("frozen CLIP", original)) if p is not None}
    (workdir / "ranking.json").write_text(json.dumps(measured, indent=2))
    for name, m in measured.items():
      progress.log(f"{name} on {m['segments']} held-out segments: mask-aware loss {m['mask_aware_loss']:.4f}, "
                   f"Spearman(score, IoU) {m['spearman']:.3f} (seen {m['spearman_seen']:.3f}, unseen "
                   f"{m['spearman_unseen']:.3f})")
  return engine.evaluate_run(config, candidates, workdir, f"{NAME} at step {step}", step)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> list[dict[str, Any]]:
  """Trains (resuming from the latest checkpoint in `workdir`) and evaluates; returns the results rows."""
  config_checks.check_loop(config)
  workdir = workdirs.as_workdir(workdir)
  mesh = fit.checked_mesh(config)
  trainable = setup.build(config, mesh)
  original = jax.tree.map(lambda x: x.copy(), trainable.state.params)  # The step donates the state.
  state = fit.fit(config, workdir, mesh, trainable,
                  lambda _, start_step: fit.HostData(m2f_data.host_batches(config, start_step)))
  return evaluate(config, workdir, trainable.model, state.params, int(state.step), original)


def restore_model(config: ml_collections.ConfigDict, workdir: str | Path) -> tuple[Any, Any, int]:
  """(CLIP module, fine-tuned CLIP params, step) of the latest checkpoint in `workdir`."""
  trainable = setup.build(config, sharding.make_mesh(config.mesh.axes), abstract=True)
  state, step = workdirs.restore_latest(workdir, trainable.state, config)
  return trainable.model, state.params, step


def ipclip_setup(config: ml_collections.ConfigDict, workdir: str | Path) -> ClipSetup:
  """The fine-tuned IP-CLIP as an eval config's CLIP (`clip.checkpoint=WORKDIR`): MAFT's classifiers
  (`ensemble:maft_ipclip`, `ensemble:maft_ipclip_ensemble`) then run the IP-CLIP forward."""
  model, params, _ = restore_model(config, workdir)
  return ClipSetup(model, params, model.architecture.image_size,
                   ipclip=(config.maft.start_layers, config.maft.input_size))


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str | Path) -> list[dict[str, Any]]:
  """Evaluates the latest checkpoint in `workdir` (the `ovseg_jax.evaluate --workdir` command), beside the CLIP
  of `init.clip` it started from."""
  model, params, step = restore_model(config, workdir)
  _, original = clip_setup.pretrained(config, sharding.make_mesh(config.mesh.axes))
  return evaluate(config, workdirs.as_workdir(workdir), model, params, step, original)
