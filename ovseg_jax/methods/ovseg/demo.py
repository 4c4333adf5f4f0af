r"""OVSeg's open-vocabulary demo as one run (`configs/ovseg_demo.py`, whose docstring lists the stages):

  python -m ovseg_jax.main --config=configs/ovseg_demo.py --workdir=/tmp/ovseg_demo

Each seed's stages write their own workdirs in WORKDIR/seed_N/ (a finished stage leaves `stage_done.json` and is
skipped when the command runs again; an interrupted training stage resumes from its checkpoint), then every row of
`demo_rows.ROWS` is evaluated on that seed's held-out split (WORKDIR/seed_N/eval/). After each seed, the table over
the seeds so far is rewritten (`demo_table`).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections

from data_pipelines import demo_data
from ovseg_jax.eval import engine
from ovseg_jax.eval.open_vocabulary import ClipSetup
from ovseg_jax.methods.clip import evaluation, setup as clip_setup, trainer as clip_trainer
from ovseg_jax.methods.ebseg import trainer as ebseg
from ovseg_jax.methods.maft import trainer as maft
from ovseg_jax.methods.mask2former import trainer as mask2former
from ovseg_jax.methods.ovseg import demo_rows, demo_table, mine, proposals
from ovseg_jax.train import progress, workdir as workdirs

_DONE = "stage_done.json"


def _section(config: ml_collections.ConfigDict, name: str, seed: int) -> ml_collections.ConfigDict:
  section = ml_collections.ConfigDict(config[name].to_dict())
  section.seed = seed
  return section


def _world_paths(config: ml_collections.ConfigDict, seed: int) -> demo_data.DemoDataPaths:
  return demo_data.ensure_for_config(config.clip.data, seed)


def _mined_shards(config: ml_collections.ConfigDict, seed: int) -> list[str]:
  return _world_paths(config, seed).train_shards[:config.mining.num_shards]


def _clip(config, seed, seed_dir):
  clip_trainer.train_and_evaluate(_section(config, "clip", seed), seed_dir / "clip")


def _proposals(config, seed, seed_dir):
  mask2former.train_and_evaluate(_section(config, "proposals", seed), seed_dir / "proposals")


def _pairs(config, seed, seed_dir):
  m = config.mining
  mine.mine(seed_dir / "proposals", seed_dir / "clip", _mined_shards(config, seed), seed_dir / "pairs",
            m.mask_threshold, m.min_pixels, m.assign)


def _adapt(name: str, start: str) -> Callable:
  """A CLIP training stage on the mined pairs, starting from the CLIP of stage `start`."""
  def run(config, seed, seed_dir):
    section = _section(config, name, seed)
    section.init.clip = str(seed_dir / start)
    section.data.shards = "::".join(str(seed_dir / "pairs" / Path(s).name)
                                    for s in _mined_shards(config, seed))
    clip_trainer.train_and_evaluate(section, seed_dir / name)
  return run


def _maft(config, seed, seed_dir):
  section = _section(config, "maft", seed)
  section.init.update(clip=str(seed_dir / "clip"), mask2former=str(seed_dir / "proposals"))
  maft.train_and_evaluate(section, seed_dir / "maft")


def _ebseg(config, seed, seed_dir):
  section = _section(config, "ebseg", seed)
  if section.init.get("required", True):  # The tiny variant's EBSeg starts from a random CLIP of its own shape.
    section.init.clip = str(seed_dir / "clip")
  ebseg.train_and_evaluate(section, seed_dir / "ebseg")


def _clip_classifier(config: ml_collections.ConfigDict, stage_dir: Path) -> ClipSetup:
  return clip_setup.classifier(ml_collections.ConfigDict({**config.eval.clip.to_dict(), "checkpoint": str(stage_dir)}))


def _ipclip(config: ml_collections.ConfigDict, stage_dir: Path) -> ClipSetup:
  return maft.ipclip_setup(workdirs.read_config(stage_dir), stage_dir)


def _ebseg_candidates(stage_dir: Path, rows: list[tuple[str, str]]) -> list[engine.Candidate]:
  section = workdirs.read_config(stage_dir)
  model, params, _ = ebseg.restore_model(section, stage_dir)
  params = jax.device_get(params)
  return [dataclasses.replace(ebseg.candidates(model, params, section, (classifier,))[0], name=name)
          for name, classifier in rows]


@dataclasses.dataclass(frozen=True)
class Stage:
  """`run(config, seed, seed_dir)` writes the stage's workdir WORKDIR/seed_N/<name>/. A stage that trains a CLIP
  gives it to the rows naming it as `clip_stage` (`clip(config, stage_dir)`); a stage that segments by itself gives
  the candidates of the rows naming it as `segmenter` (`segment(stage_dir, [(row name, classifier)])`)."""
  run: Callable[[ml_collections.ConfigDict, int, Path], None]
  needs: tuple[str, ...] = ()  # The stages whose workdirs this one reads.
  clip: Callable[[ml_collections.ConfigDict, Path], ClipSetup] | None = None
  segment: Callable[[Path, list[tuple[str, str]]], list[engine.Candidate]] | None = None


# In order; each writes WORKDIR/seed_N/<name>/. A later CLIP-based method adds its stage (and rows in demo_rows).
STAGES: dict[str, Stage] = {
    "clip": Stage(_clip, clip=_clip_classifier),
    "proposals": Stage(_proposals),
    "pairs": Stage(_pairs, needs=("clip", "proposals")),
    "finetune": Stage(_adapt("finetune", "clip"), needs=("clip", "pairs"), clip=_clip_classifier),
    "prompts": Stage(_adapt("prompts", "finetune"), needs=("finetune", "pairs"), clip=_clip_classifier),
    "maft": Stage(_maft, needs=("clip", "proposals"), clip=_ipclip),
    "ebseg": Stage(_ebseg, needs=("clip",), segment=_ebseg_candidates),
}


def _candidates(config: ml_collections.ConfigDict, seed_dir: Path, clips: dict[str, ClipSetup]
                ) -> list[engine.Candidate]:
  """Every row's engine candidate, in the rows' order: the proposal model's masks named by a classifier, or a
  segmenting stage's own rows."""
  mask_model = proposals.load_mask_model(seed_dir / "proposals")
  by_name = {}
  for r in demo_rows.ROWS:
    if r.segmenter == "proposals":
      classifier = config.ensemble if r.classifier == "ensemble" else r.classifier
      by_name.update((c.name, c) for c in proposals.candidates(mask_model, [(r.name, classifier,
                                                                               clips.get(r.clip_stage))]))
  for stage in dict.fromkeys(r.segmenter for r in demo_rows.ROWS if r.segmenter != "proposals"):
    rows = [(r.name, r.classifier) for r in demo_rows.ROWS if r.segmenter == stage]
    by_name.update((c.name, c) for c in STAGES[stage].segment(seed_dir / stage, rows))
  return [by_name[r.name] for r in demo_rows.ROWS]


def evaluate_seed(config: ml_collections.ConfigDict, seed: int, seed_dir: Path) -> list[dict[str, Any]]:
  """Every row on the seed's held-out split, with each CLIP's masked-crop accuracy on the split's labelled regions
  (seen / unseen: the mean of the classes' accuracies)."""
  clips = {stage: STAGES[stage].clip(config, seed_dir / stage) for stage in demo_rows.clip_stages(demo_rows.ROWS)}
  paths = _world_paths(config, seed)
  rows = engine.evaluate_suite(config.eval, _candidates(config, seed_dir, clips), seed_dir / "eval",
                               f"Open-vocabulary demo, seed {seed}", {"demo": str(Path(paths.eval_dir).parent)},
                               extra={"seed": seed})
  split = demo_data.load_labelled_split(paths.eval_dir)
  unseen = set(config.unseen_classes)
  accuracy = {}
  for stage, clip in clips.items():
    arch = clip.module.architecture
    per_class = evaluation.crop_accuracy(clip.module, clip.params, split, arch.context_length,
                                         with_masks=arch.mask_prompt_depth > 0)["per_class_accuracy"]
    accuracy[stage] = {"per_class_crop_accuracy": per_class,
                       "crop_accuracy_seen": demo_table.mean([v for k, v in per_class.items() if k not in unseen]),
                       "crop_accuracy_unseen": demo_table.mean([v for k, v in per_class.items() if k in unseen])}
  stage_of = {r.name: r.clip_stage for r in demo_rows.ROWS}
  return [{**row, **accuracy.get(stage_of.get(row["predictor"], ""), {})} for row in rows]


def _run_stage(name: str, config: ml_collections.ConfigDict, seed: int, seed_dir: Path) -> None:
  done = seed_dir / name / _DONE
  if done.exists():
    return
  missing = [n for n in STAGES[name].needs if not (seed_dir / n / _DONE).exists()]
  if missing:
    raise ValueError(f"open-vocabulary demo, seed {seed}: stage {name!r} reads the workdirs of {missing}, which are "
                     f"not finished in {seed_dir}: run those stages first (config.stages).")
  progress.log(f"open-vocabulary demo, seed {seed}: stage {name}")
  STAGES[name].run(config, seed, seed_dir)
  done.parent.mkdir(parents=True, exist_ok=True)
  done.write_text(json.dumps({"stage": name, "seed": seed}) + "\n")


def _seed_rows(config: ml_collections.ConfigDict, seed: int, workdir: Path, run: bool) -> list[dict[str, Any]]:
  seed_dir = workdir / f"seed_{seed}"
  saved = seed_dir / "eval" / "rows.json"
  if saved.exists():
    return json.loads(saved.read_text())
  if not run:
    return []
  for name in config.get("stages") or STAGES:
    _run_stage(name, config, seed, seed_dir)
  unfinished = [n for n in STAGES if not (seed_dir / n / _DONE).exists()]
  if unfinished:
    progress.log(f"open-vocabulary demo, seed {seed}: stages {unfinished} are not finished; its rows wait for them")
    return []
  rows = evaluate_seed(config, seed, seed_dir)
  counts = seed_dir / "pairs" / "counts.json"
  rows = [{**r, "mining": json.loads(counts.read_text())} if counts.exists() else r for r in rows]
  saved.write_text(json.dumps(rows, indent=1, default=float))
  return rows


def _check(config: ml_collections.ConfigDict) -> None:
  if not config.seeds:
    raise ValueError("config.seeds is empty: give at least one seed, e.g. (0, 1, 2).")
  unknown = sorted(set(config.get("stages") or ()) - set(STAGES))
  if unknown:
    raise ValueError(f"config.stages names {unknown}: use stages of {list(STAGES)} (empty: all, in that order).")
  for row in demo_rows.ROWS:
    if row.clip_stage and (row.clip_stage not in STAGES or STAGES[row.clip_stage].clip is None):
      raise ValueError(f"demo row {row.name!r} names {row.clip_stage!r}, which is no CLIP-training stage of "
                       "demo.STAGES.")
    if row.segmenter != "proposals" and (row.segmenter not in STAGES or STAGES[row.segmenter].segment is None):
      raise ValueError(f"demo row {row.name!r} names {row.segmenter!r}, which is no segmenting stage of "
                       "demo.STAGES.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, run: bool = True
                       ) -> list[dict[str, Any]]:
  """Runs every seed's stages and evaluation (skipping what is done) and writes WORKDIR/results.{md,json}; returns
  the summary rows."""
  _check(config)
  workdir = Path(workdir).expanduser()
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  per_seed, summary = {}, []
  for seed in config.seeds:
    rows = _seed_rows(config, seed, workdir, run)
    if rows:
      per_seed[seed] = rows
      summary = demo_table.write(per_seed, [r.name for r in demo_rows.ROWS], config.unseen_classes, workdir)
  return summary


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str | Path) -> list[dict[str, Any]]:
  """Rewrites the table from the seeds evaluated so far (`ovseg_jax.evaluate --workdir`); runs nothing."""
  return train_and_evaluate(config, workdir, run=False)


def build(config: ml_collections.ConfigDict, mesh: Any, abstract: bool = False) -> Any:
  raise ValueError("configs/ovseg_demo.py runs several trainings: plan or benchmark one stage's config instead "
                   "(configs/clip_demo.py, configs/mask2former_demo.py, configs/ovseg_finetune.py).")
