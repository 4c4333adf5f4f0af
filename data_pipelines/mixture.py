"""Several image-text datasets in every batch, in proportion to their weights.

Each batch takes a fixed share of its samples from each source (largest-remainder rounding of
`weight / sum(weights) * batch_size`), so the mixture holds exactly at every step and the contrastive loss
always sees every source among its negatives. Each source streams its own shards with its own epochs and
read position (`image_text.ReadPosition`), and a small dataset simply repeats more often.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from data_pipelines import image_text, shards


@dataclass(frozen=True)
class Source:
  name: str
  shards: str | tuple[str, ...]
  weight: float = 1.0


def sources_from_config(data_config: Any, default_shards: Sequence[str] | str) -> list[Source]:
  """`data.datasets` as (name, shard pattern(s), weight) triples, or one source of `default_shards`."""
  entries = data_config.get("datasets") or ()
  if not entries:
    return [Source("data", tuple(default_shards) if not isinstance(default_shards, str) else default_shards)]
  sources = []
  for entry in entries:
    if len(entry) != 3 or not float(entry[2]) > 0:
      raise ValueError(f"data.datasets entry {entry!r}: expected (name, shard pattern, weight > 0), e.g. "
                       "('cc12m', 'cc12m/{00000..01242}.tar', 0.5).")
    sources.append(Source(str(entry[0]), entry[1] if isinstance(entry[1], str) else tuple(entry[1]), float(entry[2])))
  return sources


def split_batch(batch_size: int, weights: Sequence[float]) -> list[int]:
  """Per-source sample counts summing to `batch_size`, proportional to `weights` (largest remainders)."""
  shares = np.asarray(weights, np.float64) / np.sum(weights) * batch_size
  counts = np.floor(shares).astype(int)
  for i in np.argsort(-(shares - counts), kind="stable")[:batch_size - counts.sum()]:
    counts[i] += 1
  if np.any(counts == 0):
    raise ValueError(f"batch of {batch_size} cannot hold every source at weights {list(weights)}: a source would "
                     "get no sample; raise the batch size or the smallest weight.")
  return counts.tolist()


def make_mixed_iterator(sources: Sequence[Source], *, batch_size: int, seed: int,
                        positions: Sequence[image_text.ReadPosition] | None = None,
                        **kwargs) -> tuple[Iterator[dict[str, np.ndarray]], shards.SkipStats]:
  """Host batches concatenating each source's share; `positions` (one per source) are updated in place.
  Other keyword arguments go to `image_text.make_image_text_iterator`."""
  stats = shards.SkipStats()
  counts = split_batch(batch_size, [s.weight for s in sources])
  positions = positions or [image_text.ReadPosition() for _ in sources]
  iterators = [image_text.make_image_text_iterator(source.shards, batch_size=n, seed=seed + 7919 * i,
                                                   position=position, stats=stats, **kwargs)[0]
               for i, (source, n, position) in enumerate(zip(sources, counts, positions))]

  def batches():
    while True:
      parts = [next(it) for it in iterators]
      yield {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
  return batches(), stats
