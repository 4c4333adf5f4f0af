"""Weighted mixtures of image-text sources: batch shares, per-source positions, configuration."""
import ml_collections
import numpy as np
import pytest

from data_pipelines import demo_data, image_text, mixture

TINY = demo_data.DemoDataConfig(num_train=80, num_eval=4, num_tune=4, samples_per_shard=20)


@pytest.mark.parametrize("batch,weights,expected", [(10, [1, 1], [5, 5]), (10, [0.7, 0.2, 0.1], [7, 2, 1]),
                                                    (8, [1, 1, 1], [3, 3, 2]), (7, [3, 1], [5, 2])])
def test_split_batch_is_proportional_and_complete(batch, weights, expected):
  counts = mixture.split_batch(batch, weights)
  assert counts == expected and sum(counts) == batch
  shares = np.asarray(weights) / np.sum(weights) * batch
  assert np.all(np.abs(np.asarray(counts) - shares) < 1)


def test_a_source_too_small_for_the_batch_is_refused():
  with pytest.raises(ValueError, match="no sample"):
    mixture.split_batch(4, [1.0, 0.01])


def test_sources_from_config():
  data = ml_collections.ConfigDict({"datasets": (("a", "a/{0..1}.tar", 3.0), ("b", ("b/0.tar", "c/0.tar"), 1.0))})
  sources = mixture.sources_from_config(data, "unused")
  assert [(s.name, s.shards, s.weight) for s in sources] == [("a", "a/{0..1}.tar", 3.0), ("b", ("b/0.tar", "c/0.tar"), 1.0)]
  assert mixture.sources_from_config(ml_collections.ConfigDict({"datasets": ()}), ["x.tar"]) == [
      mixture.Source("data", ("x.tar",))]
  with pytest.raises(ValueError, match="weight > 0"):
    mixture.sources_from_config(ml_collections.ConfigDict({"datasets": (("a", "a.tar", 0.0),)}), "")


def test_batches_take_each_sources_share_and_track_its_position(tmp_path):
  paths = demo_data.ensure_demo_data(tmp_path, TINY).train_shards
  sources = [mixture.Source("first", tuple(paths[:1]), 3.0), mixture.Source("rest", tuple(paths[1:]), 1.0)]
  positions = [image_text.ReadPosition(), image_text.ReadPosition()]
  batches, stats = mixture.make_mixed_iterator(sources, batch_size=8, seed=0, positions=positions, image_size=16,
                                               context_length=16, with_keys=True, shuffle_buffer=0)
  first_keys = {key for key in _keys_of(paths[:1])}
  for _ in range(4):
    batch = next(batches)
    keys = [k.decode() for k in batch["key"]]
    assert batch["image"].shape == (8, 16, 16, 3) and batch["tokens"].shape == (8, 16)
    assert sum(k in first_keys for k in keys) == 6  # 3:1 of 8.
  assert positions[0].epoch >= 1  # The one-shard source (20 samples, 6 per batch) has wrapped around.
  assert stats.counts == {}


def _keys_of(paths):
  from data_pipelines import shards
  return [key for key, _, _ in shards.iterate_samples(list(paths), shards.SkipStats())]
