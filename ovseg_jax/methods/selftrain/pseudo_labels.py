r"""Pseudo labels for self-training (S-Seg+): a trained S-Seg labels a dataset's unlabelled training images.

Each image gets a label PNG (class ids; uint8, or 16-bit when there are more than 255 classes) and a confidence
PNG (the winning class score quantised to 0..255), written atomically under `output/` so a killed job leaves
no half file and a re-run skips what is done. Each host labels a disjoint part of the images. `output` may be
local or gs:// (the workdir of a pod run).
"""
from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from etils import epath
from PIL import Image

from ovseg_jax.train import progress

IGNORE_INDEX = 255
IGNORE_INDEX_16BIT = 65535


def _atomic_write(path: epath.Path, data: bytes) -> None:
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_bytes(data)
  tmp.replace(path)


def _png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def label_dtype(num_classes: int) -> np.dtype:
  """uint8 while class ids and the ignore value 255 fit, else uint16 (ignore 65535)."""
  return np.dtype(np.uint8 if num_classes < IGNORE_INDEX else np.uint16)


def ignore_index(num_classes: int) -> int:
  """The label value of unlabelled pixels: 255, or 65535 in 16-bit labels."""
  return IGNORE_INDEX if label_dtype(num_classes) == np.uint8 else IGNORE_INDEX_16BIT


def write_label(path: str | Path, label: np.ndarray, num_classes: int) -> None:
  """Writes class ids [H, W] (and ignore values) as a PNG that `read_label` returns unchanged."""
  dtype, ignore = label_dtype(num_classes), ignore_index(num_classes)
  label = np.asarray(label)
  bad = (label < 0) | ((label >= num_classes) & (label != ignore))
  if np.any(bad):
    raise ValueError(f"{path}: label values {np.unique(label[bad])[:5]} are neither class ids below "
                     f"{num_classes} nor the ignore value {ignore}.")
  _atomic_write(epath.Path(path), _png(label.astype(dtype)))


def read_label(path: str | Path) -> np.ndarray:
  with epath.Path(path).open("rb") as f, Image.open(f) as image:
    return np.asarray(image).astype(np.int32)


def write_confidence(path: str | Path, confidence: np.ndarray) -> None:
  """confidence [H, W] in [0, 1] -> uint8 PNG (value * 255, rounded)."""
  _atomic_write(epath.Path(path), _png(np.round(np.clip(confidence, 0.0, 1.0) * 255).astype(np.uint8)))


def read_confidence(path: str | Path) -> np.ndarray:
  with epath.Path(path).open("rb") as f, Image.open(f) as image:
    return np.asarray(image).astype(np.float32) / 255.0


def output_paths(output: epath.Path, key: str) -> tuple[epath.Path, epath.Path]:
  return output / f"{key}.png", output / f"{key}_confidence.png"


def label_images(images: Iterator[tuple[str, np.ndarray]], predict: Any, output: str | Path, num_classes: int,
                 batch_size: int, total: int | None = None) -> dict[str, int]:
  """Labels `(key, uint8 image)` pairs with `predict(images [B, H, W, 3]) -> (labels, confidence)` in batches
  of equal-sized images; skips keys whose outputs exist. Returns counts of labelled and skipped images."""
  output = epath.Path(output)
  output.mkdir(parents=True, exist_ok=True)
  counts = {"labelled": 0, "skipped_done": 0}
  pending: list[tuple[str, np.ndarray]] = []
  start = time.perf_counter()
  last_log = [start]

  def flush():
    labels, confidence = predict(np.stack([image for _, image in pending]))
    for (key, _), label, conf in zip(pending, labels, confidence):
      label_path, conf_path = output_paths(output, key)
      write_confidence(conf_path, conf)
      write_label(label_path, label, num_classes)  # Last: its presence marks the key as done.
    counts["labelled"] += len(pending)
    pending.clear()
    done, now = counts["labelled"], time.perf_counter()
    if now - last_log[0] > 10 or (total and done + counts["skipped_done"] == total):
      last_log[0] = now
      rate = done / max(now - start, 1e-9)
      eta = f", ETA {(total - done - counts['skipped_done']) / rate:.0f}s" if total else ""
      progress.log(f"pseudo labels: {done} images ({rate:.1f} img/s{eta}) -> {output}")

  for key, image in images:
    if output_paths(output, key)[0].exists():
      counts["skipped_done"] += 1
      continue
    if pending and pending[0][1].shape != image.shape:
      flush()
    pending.append((key, image))
    if len(pending) == batch_size:
      flush()
  if pending:
    flush()
  return counts


def load_pseudo_labelled(output: str | Path, images: Sequence[tuple[str, np.ndarray]]) -> tuple[np.ndarray, ...]:
  """(images, labels, confidence) stacked for the keys that have pseudo labels under `output`."""
  output = epath.Path(output)
  kept = [(key, image) for key, image in images if output_paths(output, key)[0].exists()]
  if not kept:
    raise FileNotFoundError(f"no pseudo labels under {output}: run the pseudo-labelling stage first.")
  labels = np.stack([read_label(output_paths(output, key)[0]) for key, _ in kept])
  confidence = np.stack([read_confidence(output_paths(output, key)[1]) for key, _ in kept])
  return np.stack([image for _, image in kept]), labels, confidence
