"""Stored pseudo masks: companion shards, crops and flips that follow the image's, the store job, the loss input."""
import io
import tarfile

import jax
import numpy as np
from PIL import Image
import pytest

from configs import sseg_demo
from data_pipelines import image_text, pseudo_mask_shards
from ovseg_jax.ops import pseudo_masks

BLOCK = 8  # Image pixels per block side; the stored map has 2 cells per block side.
BLOCKS_HW = (6, 8)  # A 48 x 64 image: not square, so the two axes cannot be confused.
GRID = 8  # Output cells per side of a 32-pixel crop.


def _palette() -> np.ndarray:
  levels = np.array([20, 100, 180, 250])
  colours = np.stack(np.meshgrid(levels, levels, np.array([30, 130, 230]), indexing='ij'), -1).reshape(-1, 3)
  return colours[:BLOCKS_HW[0] * BLOCKS_HW[1]].astype(np.uint8)


def _block_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """(image whose blocks have distinct colours, the colour index of each stored cell [12, 16]); colours are
  permuted per image so no two images share a map."""
  ids = rng.permutation(BLOCKS_HW[0] * BLOCKS_HW[1]).reshape(BLOCKS_HW)
  image = _palette()[ids].repeat(BLOCK, 0).repeat(BLOCK, 1)
  return image, ids.repeat(2, 0).repeat(2, 1).astype(np.uint8)


def _write_shard(path, samples) -> None:
  with tarfile.open(path, 'w') as tar:
    for key, members in samples:
      for extension, data in members.items():
        info = tarfile.TarInfo(f'{key}.{extension}')
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _encoded(image: np.ndarray, fmt: str) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, fmt, **({'quality': 100} if fmt == 'JPEG' else {}))
  return buffer.getvalue()


@pytest.fixture(scope='module')
def block_shard(tmp_path_factory):
  rng = np.random.default_rng(0)
  shard = str(tmp_path_factory.mktemp('blocks') / '00000.tar')
  samples, maps = [], []
  for i in range(24):
    image, stored = _block_image(rng)
    samples.append((f'{i:04d}', {'png' if i % 2 else 'jpg': _encoded(image, 'PNG' if i % 2 else 'JPEG'),
                                 'txt': b'blocks of colour'}))
    maps.append((f'{i:04d}', stored))
  _write_shard(shard, samples)
  pseudo_mask_shards.write_companion(shard, maps[:-1])  # The last sample has none: skipped and counted.
  return shard


def _batches(shard, **kwargs):
  iterator, stats = image_text.make_image_text_iterator(
      [shard], batch_size=8, image_size=32, seed=3, shuffle_buffer=0, crop_scale=(0.3, 0.8),
      text_fn=lambda caption: np.zeros([8], np.int32), context_length=8, pseudo_mask_grid=(GRID, GRID), **kwargs)
  return iterator, stats


def test_stored_masks_are_cropped_and_flipped_with_their_image(block_shard):
  iterator, stats = _batches(block_shard)
  palette = _palette().astype(np.int32)
  compared = agreed = 0
  for _ in range(6):  # Three epochs (two batches of the 23 samples each): many crops and both flips.
    batch = next(iterator)
    assert batch['pseudo_labels'].shape == (8, GRID, GRID) and batch['pseudo_labels'].dtype == np.uint8
    for image, labels in zip(batch['image'].astype(np.int32), batch['pseudo_labels']):
      for i in range(GRID):
        for j in range(GRID):
          # The output cell's centre lies between these four pixels; a cell whose pixels are not all one clear
          # block colour straddles a block edge and tells nothing.
          around = image[4 * i + 1:4 * i + 3, 4 * j + 1:4 * j + 3].reshape(-1, 3)
          distance = np.abs(around[:, None] - palette[None]).max(-1)
          nearest = distance.argmin(-1)
          if np.all(nearest == nearest[0]) and distance.min(-1).max() < 12:
            compared += 1
            agreed += int(labels[i, j] == nearest[0])  # The stored map holds each block's colour index.
  assert stats.counts.get('no_pseudo_mask') >= 3  # Once per epoch read (prefetch may have begun the next).
  assert compared > 0.3 * 6 * 8 * GRID * GRID
  assert agreed == compared


def test_missing_companion_names_the_command(tmp_path, block_shard):
  shard = str(tmp_path / '00000.tar')
  with open(block_shard, 'rb') as src, open(shard, 'wb') as dst:
    dst.write(src.read())
  iterator, _ = _batches(shard)
  with pytest.raises(FileNotFoundError, match='store_pseudo_masks'):
    next(iterator)


def test_companion_round_trips_and_refuses_non_uint8_maps(tmp_path):
  maps = [('a', np.arange(12, dtype=np.uint8).reshape(3, 4)), ('b/c', np.full((2, 5), 255, np.uint8))]
  assert pseudo_mask_shards.write_companion(str(tmp_path / 's.tar'), maps) == 2
  stored = pseudo_mask_shards.read_companion(str(tmp_path / 's.tar'))
  assert sorted(stored) == ['a', 'b/c']
  for key, labels in maps:
    np.testing.assert_array_equal(pseudo_mask_shards.decode_labels(stored[key]), labels)
  with pytest.raises(ValueError, match='uint8'):
    pseudo_mask_shards.encode_labels(np.zeros((2, 2), np.int32))


def test_masks_from_labels_is_a_one_hot_partition():
  labels = np.random.default_rng(1).integers(0, 4, (2, 5, 6)).astype(np.uint8)
  labels[0, 0, 0] = 255
  masks, valid = pseudo_masks.masks_from_labels(labels, 6)
  expected = (labels[:, None] == np.arange(6)[None, :, None, None]).astype(np.float32)
  np.testing.assert_array_equal(masks, expected)
  np.testing.assert_array_equal(valid, expected.any((2, 3)))


@pytest.fixture(scope='module')
def stored_demo(tmp_path_factory):
  """The tiny demo config reading pseudo masks stored by the job (its data generated into a fresh directory)."""
  from ovseg_jax.methods.sseg import pseudo_mask_store
  config = sseg_demo.get_config('tiny')
  config.data.demo_root = str(tmp_path_factory.mktemp('demo_data'))
  config.pseudo_masks.source = 'stored'
  first = pseudo_mask_store.store_pseudo_masks(config, batch_size=16)
  again = pseudo_mask_store.store_pseudo_masks(config, batch_size=16)
  return config, first, again


def test_store_job_writes_every_shard_once_with_valid_maps(stored_demo):
  from ovseg_jax.methods.sseg import data
  config, first, again = stored_demo
  train_shards = data.train_shards(config)
  assert first.shards_written == len(train_shards) and first.undecodable == 0 and first.images > 0
  assert again.shards_written == 0 and again.shards_already_done == len(train_shards) and again.images == 0
  grid = config.data.image_size // config.pseudo_masks.cell
  stored = pseudo_mask_shards.read_companion(train_shards[0])
  labels = np.stack([pseudo_mask_shards.decode_labels(v) for v in stored.values()])
  assert labels.shape[1:] == (grid, grid) and labels.max() < config.pseudo_masks.num_clusters
  # K-means of distinct scenes: most images use several clusters.
  assert np.mean([len(np.unique(m)) > 2 for m in labels]) > 0.8


@pytest.mark.slow  # A long end-to-end check (compiles a train step): `python -m pytest -q -m slow`.
def test_training_reads_stored_masks_and_runs_without_the_pseudo_mask_network(stored_demo):
  from ovseg_jax.methods.sseg import data, setup
  from ovseg_jax.train import sharding
  config = stored_demo[0]
  batches, _, _ = data.host_batches(config, None)
  batch = next(batches)
  grid = config.data.image_size // config.pseudo_masks.cell
  assert batch['pseudo_labels'].shape == (config.batch_size, grid, grid)
  mesh = sharding.make_mesh(config.mesh.axes)
  trainable = setup.build(config, mesh)
  assert trainable.frozen is None and 'pseudo_labels' in trainable.batch_spec(config.batch_size)
  _, metrics = trainable.step(trainable.state, sharding.host_batch_to_global(batch, mesh), jax.random.key(0), None)
  masks_per_image = np.mean([len(np.unique(m)) for m in batch['pseudo_labels']])
  np.testing.assert_allclose(float(metrics['pseudo_masks_per_image']), masks_per_image, rtol=1e-6)
  assert np.isfinite(float(metrics['loss']))
