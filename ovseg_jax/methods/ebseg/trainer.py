r"""EBSeg trained with pixel labels of the seen classes (SAM + CLIP, AdaB, SSC), through the shared loop, and
evaluated by the shared engine with its released three-way inference (`methods.ebseg.inference`).

  python -m ovseg_jax.main --config=configs/ebseg_demo.py --workdir=/tmp/ebseg_demo
  python -m ovseg_jax.main --config=configs/ebseg_vitb.py --workdir=W --config.data.root=/data/coco \
      --config.init.sam=sam_vit_b_01ec64.pth --config.init.clip=ViT-B-16.pt

Every class of a dataset is named by the model's CLIP text tower with the config's templates; classes that are
training classes count as seen in the combination (the released `dataset_overlap_maps`: a class is seen when one
of its names is a training class name), the others as unseen.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ovseg_jax.eval import engine, ensembles
from ovseg_jax.eval.open_vocabulary import ClipSetup
from ovseg_jax.eval.windows import WindowPredictor
from ovseg_jax.methods.ebseg import inference, setup
from ovseg_jax.methods.mask2former import data, trainer as mask2former_trainer
from ovseg_jax.ops.normalize import normalize_images
from ovseg_jax.train import workdir as workdirs

NAME = "EBSeg"


def candidates(model: Any, params: Any, config: ml_collections.ConfigDict, classifiers: tuple[str, ...] = ("learned",),
               clip: ClipSetup | None = None, name: str = NAME) -> list[engine.Candidate]:
  """One engine candidate per classifier (`inference.classifier_names()`); EBSeg brings its own CLIP, so `clip`
  is not used. The protocol's background rule becomes 'none': background, where trained, is a class."""
  del clip
  for classifier in classifiers:
    inference.check_classifier(classifier)
  trained = set(data.training_classes(config))
  spec = ensembles.PUBLISHED[config.inference.ensemble]

  def make(classifier):
    def build(info, protocol):
      class_ids = list(range(len(info.class_names)))
      names = [info.class_names[i] for i in class_ids]
      text = setup.text_embeddings(model, params, names, config.model.templates)
      seen = jnp.asarray([n in trained for n in names])

      @jax.jit
      def score(p, t, s, windows):
        outputs = model.apply({"params": p}, normalize_images(windows, setup.SAM_MEAN, setup.SAM_STD),
                              normalize_images(windows), t, inference=True)
        return inference.semantic_scores(outputs, s, classifier, spec, windows.shape[1:3])
      return WindowPredictor(score, (params, text, seen), class_ids, info.background_index,
                             dataclasses.replace(protocol, background="none"),
                             {"classifier_note": f"EBSeg {classifier}; seen = training classes ({len(trained)})"})
    return build
  return [engine.Candidate(name if c == "learned" else f"{name} ({c})", make(c)) for c in classifiers]


def evaluate(config: ml_collections.ConfigDict, workdir: Path, model: Any, params: Any, step: int
             ) -> list[dict[str, Any]]:
  """The eval suite of `config.eval` with the classifiers of `config.inference.classifiers` (`engine.evaluate_run`)."""
  return engine.evaluate_run(config, candidates(model, params, config, tuple(config.inference.classifiers)), workdir,
                             f"{NAME} at step {step}", step)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> list[dict[str, Any]]:
  """Trains (resuming from the latest checkpoint in `workdir`) and evaluates; returns the results rows."""
  return mask2former_trainer.train_on_labels(config, workdir, setup.build, evaluate)


def restore_model(config: ml_collections.ConfigDict, workdir: str | Path) -> tuple[Any, Any, int]:
  """(model, params, step) of the latest checkpoint in `workdir`, built from `config`."""
  return mask2former_trainer.restore(config, workdir, setup.build)


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str | Path) -> list[dict[str, Any]]:
  """Evaluates the latest checkpoint in `workdir` (the `ovseg_jax.evaluate --workdir` command)."""
  model, params, step = restore_model(config, workdir)
  return evaluate(config, workdirs.as_workdir(workdir), model, params, step)
