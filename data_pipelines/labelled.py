"""A labelled split by dataset name: the prepared (TensorFlow Datasets) copy where ROOT holds one, else the
directory reader of `eval_datasets`. It sits above both so that neither imports the other."""
from __future__ import annotations

from pathlib import Path

from data_pipelines import eval_datasets
from data_pipelines.eval_datasets.base import EvalDataset


def load(name: str, root: str | Path, split: str = "val") -> EvalDataset:
  root = Path(root).expanduser()
  if name in eval_datasets.READERS and (root / name).is_dir():  # Only then is tensorflow_datasets imported.
    from data_pipelines.prepared import store
    if store.find(root, name) is not None:
      return store.PreparedDataset(root, name, split)
  return eval_datasets.load(name, root, split)
