"""Pseudo masks computed once: the configured feature source (frozen DINO or pixel statistics) and K-means over
each whole training image, written beside its shard (`data_pipelines.pseudo_mask_shards`).

Each host takes its share of the shards (`shards.host_shards`, the split training uses); a shard whose companion
exists is skipped, so a stopped job continues where it was. Images are squashed to `pseudo_masks.store_size`
(0: `data.image_size`) before the features: the stored maps then cover the whole image, and training reads the
cells under each crop. K-means's seeding is keyed by the shard's name and the batch, so a re-run writes the same
maps.
"""
from __future__ import annotations

from collections.abc import Iterator
import dataclasses
import io
import itertools
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from data_pipelines import pseudo_mask_shards, shards
from ovseg_jax.methods.sseg import data, objective, setup
from ovseg_jax.train import progress


@dataclasses.dataclass
class StoreCounts:
  shards_written: int = 0
  shards_already_done: int = 0
  images: int = 0
  undecodable: int = 0


def _square_image(image_bytes: bytes, size: int) -> np.ndarray | None:
  """uint8 [size, size, 3], area-averaged when shrinking and bilinear when enlarging (as training crops are);
  None for bytes PIL cannot decode."""
  try:
    with Image.open(io.BytesIO(image_bytes)) as image:
      image = image.convert("RGB")
      shrink = image.width > size or image.height > size
      return np.asarray(image.resize((size, size), Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR))
  except (OSError, ValueError, SyntaxError):
    return None


def _labelled_batches(samples: Iterator[tuple[str, bytes, str]], size: int, batch_size: int,
                      counts: StoreCounts) -> Iterator[tuple[list[str], np.ndarray]]:
  while chunk := list(itertools.islice(samples, batch_size)):
    keys, images = [], []
    for key, image_bytes, _ in chunk:
      image = _square_image(image_bytes, size)
      if image is None:
        counts.undecodable += 1
      else:
        keys.append(key)
        images.append(image)
    if keys:
      yield keys, np.stack(images)


def store_pseudo_masks(config: ml_collections.ConfigDict, batch_size: int = 32) -> StoreCounts:
  """Writes this host's missing companions; returns what it did."""
  pm = config.pseudo_masks
  size = pm.get("store_size", 0) or config.data.image_size
  online = _online(pm)
  dino_module, dino_params = setup.pseudo_mask_dino(online) or (None, None)
  mask_fn = objective.make_pseudo_mask_fn(online, size, dino_module)

  @jax.jit
  def cluster_maps(images, key, params):
    masks, _ = mask_fn(images, key, params)  # One-hot partitions of the grid: argmax is each cell's cluster.
    return jnp.argmax(masks, axis=1).astype(jnp.uint8)

  counts = StoreCounts()
  stats = shards.SkipStats()
  host_shards = shards.host_shards(data.train_shards(config), jax.process_index(), jax.process_count())
  for shard in host_shards:
    if pseudo_mask_shards.companion_exists(shard):
      counts.shards_already_done += 1
      continue
    shard_key = jax.random.fold_in(jax.random.key(config.seed), zlib.crc32(shard.encode()))

    def maps_of_shard(shard=shard, shard_key=shard_key):
      batches = _labelled_batches(shards.iterate_samples([shard], stats), size, batch_size, counts)
      for index, (keys, images) in enumerate(batches):
        padded = np.concatenate([images, np.zeros((batch_size - len(keys), *images.shape[1:]), np.uint8)])
        maps = np.asarray(cluster_maps(padded, jax.random.fold_in(shard_key, index), dino_params))
        counts.images += len(keys)
        yield from zip(keys, maps[:len(keys)])
    pseudo_mask_shards.write_companion(shard, maps_of_shard())
    counts.shards_written += 1
    progress.log(f"pseudo masks: {shard} done ({counts.images} images so far)")
  progress.log(f"pseudo masks: {counts}; skipped samples: {stats.counts}")
  return counts


def _online(pm: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The same pseudo-mask settings, computed now (the job is what turns 'stored' into files)."""
  online = ml_collections.ConfigDict(pm.to_dict())
  online.source = "online"
  return online
