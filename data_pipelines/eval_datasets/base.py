"""What every evaluation dataset reader provides: its metadata and (key, image, label) examples."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class DatasetInfo:
  """Metadata of an evaluation dataset; label ids index `class_names`."""
  name: str
  class_names: tuple[str, ...]
  ignore_index: int = 255
  # The class that means "none of the others" (VOC, Pascal Context 60, COCO-Object), if the dataset has one.
  background_class: str | None = None
  # Zero-shot split: classes held out of training (the others are "seen"); empty when the dataset has none.
  unseen_classes: tuple[str, ...] = ()
  # The directory layout the reader expects under its root, shown when files are missing.
  layout: str = ""
  synonyms: dict[str, tuple[str, ...]] = field(default_factory=dict)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def background_index(self) -> int | None:
    return None if self.background_class is None else self.class_names.index(self.background_class)

  @property
  def seen_classes(self) -> tuple[str, ...]:
    unseen = set(self.unseen_classes)
    return tuple(c for c in self.class_names if c not in unseen and c != self.background_class)


@dataclass(frozen=True)
class Example:
  key: str
  image: np.ndarray  # uint8 [H, W, 3]
  label: np.ndarray  # int32 [H, W]: class ids, `info.ignore_index` where unlabelled.


class EvalDataset(Protocol):
  """A split of an evaluation dataset, read example by example in a fixed order."""
  info: DatasetInfo

  def __len__(self) -> int:
    ...

  def __iter__(self) -> Iterator[Example]:
    ...
