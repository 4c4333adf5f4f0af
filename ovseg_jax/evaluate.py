r"""Evaluation of a training workdir.

  python -m ovseg_jax.evaluate --config=configs/sseg_demo.py --workdir=/tmp/sseg_demo
  python -m ovseg_jax.evaluate --config=configs/eval_suite.py --checkpoint=WORKDIR [--output=DIR]

The first form re-runs a training config's own evaluation (for any `config.trainer`); the second applies an
eval config (datasets x protocols x classifiers, `configs/eval_suite.py`) to the latest checkpoint of an
open-vocabulary training workdir, whose own `config.json` rebuilds the model. Results go to results.json,
results.md and overlays/ (in WORKDIR/eval by default for the second form).
"""
from __future__ import annotations

import ml_collections
from absl import flags

from ovseg_jax import cli


def evaluate_checkpoint(eval_config, checkpoint: str, output: str | None = None, clip=None) -> list[dict]:
  """An eval config applied to the latest checkpoint of an open-vocabulary training workdir."""
  from ovseg_jax.eval import engine
  from ovseg_jax.methods import registry
  from ovseg_jax.train import workdir as workdirs
  workdir = workdirs.as_workdir(checkpoint)
  train_config = workdirs.read_config(workdir)
  method = registry.open_vocabulary(train_config, str(workdir))
  roots = engine.training_data_roots(train_config)
  engine.open_datasets(eval_config, roots)  # A missing dataset fails now, before the checkpoint is restored.
  clip = clip or registry.eval_clip(ml_collections.ConfigDict(eval_config.get("clip", {})))
  model, params, step = method.restore_model(train_config, workdir)
  candidates = method.candidates(model, params, train_config, tuple(eval_config.get("classifiers", ("learned",))),
                                 clip)
  return engine.evaluate_suite(eval_config, candidates, output or workdir / "eval",
                               f"Evaluation of {workdir} at step {step}", roots, extra={"step": step})


def main(argv: list[str]) -> None:
  del argv
  config = cli.CONFIG.value
  if flags.FLAGS.checkpoint:
    if "datasets" not in config:
      raise SystemExit("error: --checkpoint needs an evaluation config with `datasets` (e.g. "
                       "configs/eval_suite.py), not a training config.")
    evaluate_checkpoint(config, flags.FLAGS.checkpoint, flags.FLAGS.output)
    return
  if not cli.WORKDIR.value:
    raise SystemExit("error: give --workdir (with the training config) or --checkpoint (with an eval config).")
  from ovseg_jax.methods import registry
  registry.get(config).evaluate_workdir(config, cli.WORKDIR.value)


if __name__ == "__main__":
  flags.DEFINE_string("checkpoint", None, "Training workdir (or its checkpoints/) to evaluate with an eval config.")
  flags.DEFINE_string("output", None, "Where results go; default CHECKPOINT/eval.")
  cli.run(main, required=("config",))
