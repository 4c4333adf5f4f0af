"""A labelled split stored as image files and label PNGs, read with PIL in a fixed order."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_pipelines.eval_datasets.base import DatasetInfo, Example


CLASS_LISTS = Path(__file__).parent / "classes"


def read_class_names(filename: str) -> tuple[str, ...]:
  """A long class-name list kept as a text file (one name per line) under `classes/`."""
  return tuple(line for line in (CLASS_LISTS / filename).read_text().splitlines() if line)


def comma_synonyms(class_names: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
  """"bus, autobus, coach" -> the prompt names ("bus", "autobus", "coach") for names that list synonyms."""
  return {name: tuple(part.strip() for part in name.split(",")) for name in class_names if "," in name}


def missing_files_error(info: DatasetInfo, root: Path, what: Path | str) -> FileNotFoundError:
  return FileNotFoundError(f"{info.name}: {what} is missing under {root}. Expected layout: {info.layout}")


def read_label(path: Path) -> np.ndarray:
  """Class ids as stored: palette indices of palette PNGs (PIL keeps them; tf.io.decode_png would expand
  the palette to RGB), 8- or 16-bit grey values otherwise."""
  with Image.open(path) as image:
    if image.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
      raise ValueError(f"{path}: label images must be palette or single-channel PNG/TIFF, found mode {image.mode}.")
    return np.asarray(image).astype(np.int32)


def read_image(path: Path) -> np.ndarray:
  """uint8 RGB [H, W, 3] of any image file PIL reads; an unreadable file raises ValueError naming it."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f"{path} is not a readable image ({e}); give a JPEG or PNG file.") from e


class FileDataset:
  """Examples (key, image, label) from `(key, image_path, label_path)` items; `map_label` turns the stored
  ids into the dataset's class ids (ignore = `info.ignore_index`)."""

  def __init__(self, info: DatasetInfo, root: Path, items: Sequence[tuple[str, Path, Path]],
               map_label: Callable[[np.ndarray], np.ndarray] = lambda x: x):
    if not items:
      raise missing_files_error(info, root, "every example")
    for _, image_path, label_path in (items[0], items[-1]):
      for path in (image_path, label_path):
        if not path.is_file():
          raise missing_files_error(info, root, path)
    self.info, self._items, self._map_label = info, list(items), map_label

  def __len__(self) -> int:
    return len(self._items)

  def __iter__(self) -> Iterator[Example]:
    for index in range(len(self._items)):
      yield self.example(index)

  def example(self, index: int) -> Example:
    """Example `index` of the split (random access, for training on it)."""
    key, image_path, label_path = self._items[index]
    if not image_path.is_file() or not label_path.is_file():
      raise missing_files_error(self.info, image_path.parents[1], image_path if not image_path.is_file()
                                else label_path)
    return Example(key, read_image(image_path), self.label(index))

  def label(self, index: int) -> np.ndarray:
    """Example `index`'s class ids (int32 [H, W], `info.ignore_index` where unlabelled) without its image."""
    return self._map_label(read_label(self._items[index][2])).astype(np.int32)

  def image_files(self) -> list[tuple[str, Path]]:
    """(key, image path) of every example, for jobs that need only the images (self-training)."""
    return [(key, image_path) for key, image_path, _ in self._items]


def split_ids(info: DatasetInfo, root: Path, list_file: Path) -> list[str]:
  if not list_file.is_file():
    raise missing_files_error(info, root, list_file.relative_to(root) if list_file.is_relative_to(root) else list_file)
  return [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]


def listed_items(info: DatasetInfo, root: Path, list_file: str, image_dir: str,
                 label_dir: str) -> list[tuple[str, Path, Path]]:
  """(id, ROOT/image_dir/ID.jpg, ROOT/label_dir/ID.png) for the ids of a split list file."""
  return [(i, root / image_dir / f"{i}.jpg", root / label_dir / f"{i}.png")
          for i in split_ids(info, root, root / list_file)]


def label_dir_items(info: DatasetInfo, root: Path, image_dir: str, label_dir: str,
                    label_suffix: str = ".png") -> list[tuple[str, Path, Path]]:
  """(id, ROOT/image_dir/ID.jpg, label file) for every label file in ROOT/label_dir (sorted by id)."""
  if not (root / label_dir).is_dir():
    raise missing_files_error(info, root, label_dir)
  return [(p.stem, root / image_dir / f"{p.stem}.jpg", p) for p in sorted((root / label_dir).glob(f"*{label_suffix}"))]
