"""Panoptic demo scenes: several instances per category, backgrounds as stuff, COCO panoptic ground truth read back
by the COCO panoptic reader, and a cache of their own."""
import collections
import types

import numpy as np
import pytest

from data_pipelines import coco_panoptic, demo_data, demo_panoptic, demo_scenes
from ovseg_jax.eval.metrics import panoptic_quality


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  data = types.SimpleNamespace(demo_root=str(tmp_path_factory.mktemp("demo")), image_size=32, num_train=12,
                               num_eval=6, num_tune=3)
  return demo_data.panoptic_root_for_config(data, seed=0)


def test_scenes_hold_several_instances_of_a_category():
  rng = np.random.default_rng(0)
  scenes = [demo_panoptic.make_panoptic_scene(rng, 48) for _ in range(40)]
  repeated = 0
  for scene in scenes:
    ids = [s["id"] for s in scene.segments]
    assert ids == list(range(1, len(ids) + 1))
    assert set(np.unique(scene.segment_ids).tolist()) == set(ids)  # Every pixel in a segment, no VOID.
    for s in scene.segments:
      assert s["area"] == int((scene.segment_ids == s["id"]).sum())
    things = [s["category_id"] for s in scene.segments if s["category_id"] < demo_panoptic.STUFF_ID_OFFSET]
    stuff = [s["category_id"] for s in scene.segments if s["category_id"] >= demo_panoptic.STUFF_ID_OFFSET]
    assert len(stuff) == 1 and 1 <= len(things) <= 4
    repeated += max(collections.Counter(things).values()) > 1
  assert repeated >= 15


def test_categories_are_shapes_then_backgrounds():
  cats = demo_panoptic.categories()
  assert [c["name"] for c in cats] == [*demo_scenes.CLASS_NAMES, *demo_scenes.BACKGROUND_NAMES]
  assert [c["id"] for c in cats] == list(range(1, 19))
  assert sum(c["isthing"] for c in cats) == 12


def test_written_splits_read_back_in_the_coco_layout(root):
  for split, count in (("train", 12), ("val", 6), ("tune", 3)):
    dataset = coco_panoptic.CocoPanoptic(root, split)
    assert len(dataset) == count
  dataset = coco_panoptic.CocoPanoptic(root, "val")
  examples = [dataset.example(i) for i in range(len(dataset))]
  assert examples[0].image.shape == (32, 32, 3)
  categories = {i: {"isthing": c["isthing"]} for i, c in dataset.categories.items()}
  maps = [(e.segment_ids, e.segments) for e in examples]
  result = panoptic_quality(maps, maps, categories)
  assert result["All"]["pq"] == pytest.approx(1.0)
  assert result["Things"]["n"] > 0 and result["Stuff"]["n"] > 0


def test_panoptic_cache_is_its_own_and_semantic_names_are_unchanged():
  semantic = demo_data.DemoDataConfig()
  assert demo_data.cache_name(semantic) == "d3faeae8a728"  # The name before the panoptic option existed.
  assert demo_data.cache_name(demo_data.DemoDataConfig(panoptic=True)) != "d3faeae8a728"


def test_generation_is_deterministic(root, tmp_path):
  data = types.SimpleNamespace(demo_root=str(tmp_path), image_size=32, num_train=12, num_eval=6, num_tune=3)
  again = demo_data.panoptic_root_for_config(data, seed=0)
  for name in ("annotations/panoptic_val2017.json", "panoptic_val2017/000000000003.png", "train2017/000000000005.jpg"):
    assert (tmp_path / again.rsplit("/", 1)[1] / name).read_bytes() == (
        type(tmp_path)(root) / name).read_bytes()
