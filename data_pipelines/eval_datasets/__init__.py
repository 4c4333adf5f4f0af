"""Evaluation datasets by name: `load(name, root, split)` -> an `EvalDataset` of (key, image, label) examples.

Readers take the standard on-disk layouts (those the detectron2 / mmseg conversion scripts produce) and raise a
`FileNotFoundError` naming the expected layout when files are missing. `data_pipelines.labelled.load` reads a root
that holds the dataset prepared as TensorFlow Datasets (`python -m data_pipelines.prepare NAME ...`) from there.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from data_pipelines.eval_datasets import ade, cityscapes, coco, pascal_context, voc
from data_pipelines.eval_datasets.base import DatasetInfo, EvalDataset, Example
from data_pipelines.eval_datasets.demo import DemoDataset

__all__ = ["DatasetInfo", "EvalDataset", "Example", "READERS", "load", "names"]

# name -> reader(root, split). Each real benchmark registers its reader here.
READERS: dict[str, Callable[[str | Path, str], EvalDataset]] = {
    "demo": DemoDataset,
    "voc": voc.voc,
    "voc20": voc.voc20,
    "context59": pascal_context.context59,
    "context60": pascal_context.context60,
    "context459": pascal_context.context459,
    "coco_object": coco.coco_object,
    "coco_stuff": coco.coco_stuff,
    "ade150": ade.ade150,
    "ade847": ade.ade847,
    "cityscapes": cityscapes.cityscapes,
}


def names() -> list[str]:
  return sorted(READERS)


def load(name: str, root: str | Path, split: str = "val") -> EvalDataset:
  if name not in READERS:
    raise ValueError(f"unknown evaluation dataset {name!r}; known: {', '.join(names())}.")
  return READERS[name](root, split)
