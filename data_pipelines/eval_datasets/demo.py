"""The embedded demo's labelled splits (`eval`, `tune`) as an evaluation dataset."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data_pipelines import demo_data
from data_pipelines.eval_datasets.base import DatasetInfo, Example

LAYOUT = "ROOT/{eval,tune}/{classes.txt,meta.json,images/KEY.jpg,labels/KEY.png} (written by data_pipelines.demo_data)"


class DemoDataset:
  """Reads a demo split directory, `root/split`, as made by `demo_data.ensure_demo_data`."""

  def __init__(self, root: str | Path, split: str = "eval"):
    data = demo_data.load_labelled_split(Path(root).expanduser() / split)
    self._data, self._dir = data, Path(root).expanduser() / split
    self.info = DatasetInfo(name="demo", class_names=tuple(data.class_names),
                            background_class=demo_data.BACKGROUND_CLASS, layout=LAYOUT)

  def __len__(self) -> int:
    return len(self._data.keys)

  def __iter__(self) -> Iterator[Example]:
    for key, image, label in zip(self._data.keys, self._data.images, self._data.labels):
      yield Example(key=key, image=image, label=label.astype(np.int32))

  def image_files(self) -> list[tuple[str, Path]]:
    """(key, image path) of every example."""
    return [(key, self._dir / "images" / f"{key}.jpg") for key in self._data.keys]

  def label(self, index: int) -> np.ndarray:
    return self._data.labels[index].astype(np.int32)
