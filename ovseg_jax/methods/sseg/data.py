"""S-Seg's training input: image-text shards (or the generated demo shards) as host batches, with every host's
read position saved beside each checkpoint so a resumed run continues its epoch."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from data_pipelines import captions, demo_data, image_text, mixture, shards
from ovseg_jax.methods.sseg.objective import stored_mask_grid
from ovseg_jax.train import progress


def train_shards(config: ml_collections.ConfigDict) -> list[str]:
  if config.data.source == "demo":
    return demo_data.ensure_for_config(config.data, config.seed).train_shards
  if config.data.source == "shards":
    if config.data.get("datasets"):  # A mixture: each source lists its own shards.
      return []
    return shards.expand_pattern(config.data.shards)
  raise ValueError(f"data.source={config.data.source!r}: use 'demo' or 'shards'.")


def host_read_positions(data_position: dict[str, Any] | None, num_sources: int) -> list[image_text.ReadPosition]:
  """This host's place in each data source from a checkpoint's data position (every host's is saved)."""
  hosts = (data_position or {}).get("read_positions")
  if not hosts:
    return [image_text.ReadPosition() for _ in range(num_sources)]
  if len(hosts) != jax.process_count() or len(hosts[0]) != num_sources:
    progress.log(f"the checkpoint's read positions ({len(hosts)} hosts x {len(hosts[0])} sources) do not fit this "
                 f"run ({jax.process_count()} x {num_sources}): the shards are split anew, so reading restarts "
                 "at the beginning of each source's earliest saved epoch.")
    epochs = [min(host[i][0] for host in hosts) if i < len(hosts[0]) else 0 for i in range(num_sources)]
    return [image_text.ReadPosition(epoch=e) for e in epochs]
  return [image_text.ReadPosition(*p) for p in hosts[jax.process_index()]]


def all_read_positions(positions: list[image_text.ReadPosition]) -> dict[str, Any]:
  local = np.asarray([[p.epoch, p.shards_done] for p in positions], np.int64)
  gathered = local[None] if jax.process_count() == 1 else multihost_utils.process_allgather(local)
  return {"read_positions": np.asarray(gathered).reshape(-1, len(positions), 2).tolist()}


def _text_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What each sample's text becomes (`data.text`; with 'multi_label', `data.num_prompts` noun prompts)."""
  mode, num_prompts = config.data.get("text", "caption"), config.data.get("num_prompts", 3)
  return {"caption_fn": captions.make_caption_fn(mode, num_prompts, seed=config.seed + jax.process_index()),
          "texts_per_sample": 1 + num_prompts if mode == "multi_label" else 1}


def host_batches(config: ml_collections.ConfigDict, data_position: dict[str, Any] | None
                 ) -> tuple[Iterator[dict[str, np.ndarray]], Callable[[], dict], Callable[[], dict]]:
  """(this host's batches, skip counts for the metrics, every host's read position for the checkpoint)."""
  sources = mixture.sources_from_config(config.data, train_shards(config))
  positions = host_read_positions(data_position, len(sources))
  batches, skip_stats = mixture.make_mixed_iterator(
      sources, batch_size=config.batch_size // jax.process_count(), image_size=config.data.image_size,
      process_index=jax.process_index(), process_count=jax.process_count(), positions=positions,
      seed=config.seed, shuffle_buffer=config.data.shuffle_buffer,
      crop_scale=tuple(config.data.crop_scale), flip=config.data.get("flip", True),
      context_length=config.data.context_length,
      # Other methods (CLIP training) read the same shards without pseudo masks.
      pseudo_mask_grid=stored_mask_grid(config.pseudo_masks, config.data.image_size) if "pseudo_masks" in config
      else None, **_text_options(config))
  return batches, skip_stats.as_metrics, lambda: all_read_positions(positions)
