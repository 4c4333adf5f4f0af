"""Tiny image and label files as the datasets' releases store them, for tests that lay out a dataset's root."""
from pathlib import Path

import numpy as np
from PIL import Image

RNG = np.random.default_rng(0)


def write_image(path: Path, hw=(6, 8)) -> np.ndarray:
  """A random JPEG (or PNG, by the suffix); returns the RGB pixels PIL decodes from it."""
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = RNG.integers(0, 255, (*hw, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path, quality=100)
  return np.asarray(Image.open(path).convert("RGB"))


def write_palette_png(path: Path, label: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  image = Image.fromarray(label.astype(np.uint8), mode="P")
  image.putpalette(list(RNG.integers(0, 255, 768)))  # Colours must not matter: the indices are the labels.
  image.save(path)


def write_grey_png(path: Path, label: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(label.astype(np.uint8), mode="L").save(path)


def write_uint16_tif(path: Path, label: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(label.astype(np.uint16)).save(path)
