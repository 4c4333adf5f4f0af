"""Stored pseudo masks: one companion tar beside each image-text shard, `SHARD.pseudo.tar`, holding
`KEY.png` = the K-means cluster of every feature cell of the whole image (uint8 [h, w]; 255 = no cluster).

Computing them once (`python -m ovseg_jax.store_pseudo_masks`) replaces the frozen DINO forward and K-means of
every crop of every epoch by reading a few hundred bytes per sample; `image_text` crops and flips each map with
the same window as its image. A companion is written under a temporary name and renamed when complete, so a
present companion is always whole and an interrupted job redoes only unfinished shards.
"""
from __future__ import annotations

from collections.abc import Iterable
import io
import tarfile

from etils import epath
import numpy as np
from PIL import Image

NO_CLUSTER = 255
_SUFFIX = '.pseudo.tar'


def companion_path(shard: str) -> str:
  """`.../00012.tar` -> `.../00012.pseudo.tar` (any other name gets the suffix appended)."""
  return shard.removesuffix('.tar') + _SUFFIX


def companion_exists(shard: str) -> bool:
  return epath.Path(companion_path(shard)).exists()


def encode_labels(labels: np.ndarray) -> bytes:
  labels = np.asarray(labels)
  if labels.ndim != 2 or labels.dtype != np.uint8:
    raise ValueError(f'pseudo-mask labels must be uint8 [h, w], got {labels.dtype} {labels.shape}.')
  buffer = io.BytesIO()
  Image.fromarray(labels, mode='L').save(buffer, format='PNG')
  return buffer.getvalue()


def decode_labels(data: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(data)), np.uint8)


def write_companion(shard: str, labels_by_key: Iterable[tuple[str, np.ndarray]]) -> int:
  """Writes every (key, labels) of `shard` into its companion; returns the number written."""
  final = epath.Path(companion_path(shard))
  partial = final.parent / (final.name + '.partial')
  count = 0
  with partial.open('wb') as f, tarfile.open(fileobj=f, mode='w') as tar:
    for key, labels in labels_by_key:
      data = encode_labels(labels)
      info = tarfile.TarInfo(f'{key}.png')
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
      count += 1
  partial.rename(final)
  return count


def read_companion(shard: str) -> dict[str, bytes]:
  """{key: PNG bytes} of a shard's stored pseudo masks."""
  path = epath.Path(companion_path(shard))
  if not companion_exists(shard):
    raise FileNotFoundError(
        f'{path} is missing: the config reads stored pseudo masks (pseudo_masks.source="stored") and this shard '
        'has none yet. Run `python -m ovseg_jax.store_pseudo_masks --config=SAME_CONFIG` first, or set '
        '--config.pseudo_masks.source=online.')
  out = {}
  with path.open('rb') as f, tarfile.open(fileobj=f, mode='r|') as tar:
    for member in tar:
      tar.members = []
      if member.isfile() and member.name.endswith('.png'):
        out[member.name[:-len('.png')]] = tar.extractfile(member).read()
  return out
