"""S-Seg training (paper sec. 3) through the shared loop, and its evaluation through the shared engine.

The final evaluation runs the eval-suite config in `config.eval` (the demo's held-out split for the demo config;
datasets with their roots set for the paper configs) with the model's own text classifier.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_collections

from ovseg_jax.eval import engine
from ovseg_jax.eval.open_vocabulary import ClipSetup, open_vocabulary_predictor
from ovseg_jax.methods.sseg import data, setup
from ovseg_jax.train import config_checks, fit, sharding, workdir as workdirs

NAME = "S-Seg"


def check_config(config: ml_collections.ConfigDict) -> None:
  """The values S-Seg's loop and input read, checked before anything is built (`config_checks.ConfigError`)."""
  config_checks.check_loop(config)
  config_checks.check_pair(config, "data.crop_scale", 0.0, 1.0)
  config_checks.check_int(config, "data.image_size")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> list[dict[str, Any]]:
  """Trains (resuming from the latest checkpoint in `workdir`, a local path or a gs:// URI) and evaluates;
  returns the results rows."""
  check_config(config)
  workdir = workdirs.as_workdir(workdir)
  mesh = fit.checked_mesh(config)
  trainable = setup.build(config, mesh)
  state = fit.fit(config, workdir, mesh, trainable,
                  lambda position, _: fit.HostData(*data.host_batches(config, position)))
  return evaluate(config, workdir, trainable.model, state.params, int(state.step))


def restore_model(config: ml_collections.ConfigDict, workdir: str | Path) -> tuple[Any, Any, int]:
  """(model, params, step) of the latest checkpoint in `workdir`, built from `config`."""
  model, _, _, state, _ = setup.build_state(config, sharding.make_mesh(config.mesh.axes), abstract=True)
  state, step = workdirs.restore_latest(workdir, state, config)
  return model, state.params, step


def candidates(model: Any, params: Any, config: ml_collections.ConfigDict, classifiers: tuple[str, ...] = ("learned",),
               clip: ClipSetup | None = None, name: str = NAME) -> list[engine.Candidate]:
  """One engine candidate per classifier: the model's own text classifier ('learned') or CLIP-based ones."""
  def make(classifier):
    return lambda info, protocol: open_vocabulary_predictor(model, params, info.class_names, info.background_index,
                                                            protocol, config.data.context_length, classifier, clip)
  return [engine.Candidate(name if c == "learned" else f"{name} ({c})", make(c)) for c in classifiers]


def evaluate(config: ml_collections.ConfigDict, workdir: Path, model: Any, params: Any, step: int
             ) -> list[dict[str, Any]]:
  """The eval suite of `config.eval` on the model (`engine.evaluate_run`)."""
  return engine.evaluate_run(config, candidates(model, params, config), workdir, f"{NAME} at step {step}", step)


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str | Path) -> list[dict[str, Any]]:
  """Evaluates the latest checkpoint in `workdir` (the `ovseg_jax.evaluate --workdir` command)."""
  model, params, step = restore_model(config, workdir)
  return evaluate(config, workdirs.as_workdir(workdir), model, params, step)
