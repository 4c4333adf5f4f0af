"""CLIP training (open_clip's recipe: both towers or either locked, mask prompts optionally) through the shared
loop, on image-text shards, the demo's image-caption shards or mined mask-category pairs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_collections

from data_pipelines import demo_data
from ovseg_jax.methods.clip import evaluation, setup
from ovseg_jax.methods.sseg import data
from ovseg_jax.train import config_checks, fit, progress, sharding, workdir as workdirs

NAME = "CLIP"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> list[dict[str, Any]]:
  """Trains (resuming from the latest checkpoint in `workdir`) and evaluates; returns the results rows."""
  config_checks.check_loop(config)
  workdir = workdirs.as_workdir(workdir)
  mesh = fit.checked_mesh(config)
  trainable = setup.build(config, mesh)
  state = fit.fit(config, workdir, mesh, trainable,
                  lambda position, _: fit.HostData(*data.host_batches(config, position)))
  return evaluate(config, workdir, trainable.model, state.params, int(state.step))


def evaluate(config: ml_collections.ConfigDict, workdir: Path, model: Any, params: Any, step: int
             ) -> list[dict[str, Any]]:
  """Masked-crop accuracy on the demo's held-out split (demo data only; other runs are evaluated as classifiers
  of an evaluation config)."""
  if config.data.source != "demo":
    progress.log("evaluation: a CLIP trained on shards is evaluated as a mask classifier by an eval config.")
    return []
  split = demo_data.load_labelled_split(demo_data.ensure_for_config(config.data, config.seed).eval_dir)
  row = {"predictor": f"{NAME} at step {step}", "dataset": "demo eval",
         **evaluation.crop_accuracy(model, params, split, config.data.context_length,
                                    with_masks=config.model.mask_prompt_depth > 0)}
  (workdir / "results.json").write_text(json.dumps([row], indent=2))
  worst = sorted(row["per_class_accuracy"].items(), key=lambda kv: kv[1])[:3]
  progress.log(f"masked-crop accuracy on {row['num_crops']} demo regions: {100 * row['crop_accuracy']:.1f}% "
               f"(worst: {', '.join(f'{k} {100 * v:.0f}%' for k, v in worst)})")
  return [row]


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str | Path) -> list[dict[str, Any]]:
  """Evaluates the latest checkpoint in `workdir` (the `ovseg_jax.evaluate --workdir` command)."""
  arch, params, step = setup.restore_params(workdir, sharding.make_mesh(config.mesh.axes))
  return evaluate(config, workdirs.as_workdir(workdir), setup.CLIP(arch), params, step)
