"""The methods `config.trainer` can name, and what each offers the entry points."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import ml_collections

from ovseg_jax.eval.open_vocabulary import ClipSetup
from ovseg_jax.methods.clip import setup as clip_setup, trainer as clip
from ovseg_jax.methods.concat import trainer as concat
from ovseg_jax.methods.maft import setup as maft_setup, trainer as maft
from ovseg_jax.methods.ebseg import setup as ebseg_setup, trainer as ebseg
from ovseg_jax.methods.mask2former import setup as mask2former_setup, trainer as mask2former
from ovseg_jax.methods.ovseg import demo as ovseg_demo
from ovseg_jax.methods.selftrain import setup as selftrain_setup, trainer as selftrain
from ovseg_jax.methods.sseg import setup as sseg_setup, trainer as sseg
from ovseg_jax.train import workdir as workdirs


@dataclasses.dataclass(frozen=True)
class Method:
  """`train_and_evaluate(config, workdir)` runs a training config to its results; `evaluate_workdir(config,
  workdir)` re-evaluates a finished one; `build(config, mesh, abstract)` gives its `train.step.Trainable` (the
  memory planner and the benchmarks compile it). Open-vocabulary methods also restore a model and make engine
  candidates for any class names (`ovseg_jax.evaluate --checkpoint`, `ovseg_jax.predict`)."""
  train_and_evaluate: Callable
  evaluate_workdir: Callable
  build: Callable
  restore_model: Callable | None = None
  candidates: Callable | None = None


METHODS = {
    "sseg": Method(sseg.train_and_evaluate, sseg.evaluate_workdir, sseg_setup.build, sseg.restore_model,
                   sseg.candidates),
    "selftrain": Method(selftrain.train_and_evaluate, selftrain.evaluate_workdir, selftrain_setup.build),
    "clip": Method(clip.train_and_evaluate, clip.evaluate_workdir, clip_setup.build),
    # A fixed class set (its K+1 head): no candidates for arbitrary class names.
    "mask2former": Method(mask2former.train_and_evaluate, mask2former.evaluate_workdir, mask2former_setup.build,
                          mask2former.restore_model),
    "concat": Method(concat.train_and_evaluate, concat.evaluate_workdir, concat.build),
    # Its IP-CLIP classifies other segmenters' masks through an eval config's clip.checkpoint (`eval_clip`).
    "maft": Method(maft.train_and_evaluate, maft.evaluate_workdir, maft_setup.build, maft.restore_model),
    "ebseg": Method(ebseg.train_and_evaluate, ebseg.evaluate_workdir, ebseg_setup.build, ebseg.restore_model,
                    ebseg.candidates),
    # OVSeg's open-vocabulary demo: several trainings (CLIP, proposals, mining, adaptation) and one table.
    "ovseg_demo": Method(ovseg_demo.train_and_evaluate, ovseg_demo.evaluate_workdir, ovseg_demo.build),
}


def get(config: ml_collections.ConfigDict) -> Method:
  """The method a config's `trainer` names."""
  name = config.get("trainer")
  if name not in METHODS:
    raise ValueError(f"config.trainer={name!r}: use one of {sorted(METHODS)} (set `c.trainer` in the config file).")
  return METHODS[name]


def eval_clip(cfg: ml_collections.ConfigDict) -> ClipSetup | None:
  """An eval config's `clip` section: a MAFT training workdir gives its fine-tuned IP-CLIP, anything else (a CLIP
  file, a Hugging Face directory or a CLIP training workdir) is read by `clip_setup.classifier`."""
  checkpoint = cfg.get("checkpoint")
  if checkpoint and (workdirs.as_workdir(checkpoint) / "config.json").is_file():
    train_config = workdirs.read_config(checkpoint)
    if train_config.get("trainer") == "maft":
      return maft.ipclip_setup(train_config, checkpoint)
  return clip_setup.classifier(cfg)


def open_vocabulary(config: ml_collections.ConfigDict, workdir: str) -> Method:
  """The method of a training workdir, refused unless it can classify masks by any class names."""
  method = get(config)
  if method.candidates is None:
    raise ValueError(f"{workdir} holds a {config.trainer!r} run, which predicts a fixed class set: evaluate it with "
                     f"`python -m ovseg_jax.evaluate --config=<its training config> --workdir={workdir}`.")
  return method
