"""The shared-palette demo world: colours and textures no longer tell categories apart (a nearest-colour classifier
falls to chance), captions still name only the objects, and the palette is part of the cache key."""
import json
import re
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from data_pipelines import demo_data, demo_scenes

COLOUR_WORDS = re.compile(r"\b(red|green|blue|yellow|orange|purple|pink|cyan|white|black|striped|dotted|checkered)\b")


def _region_colours(palette: str, num_scenes: int = 300):
  """(category ids, mean RGB of each visible object region) over random training scenes."""
  rng = np.random.default_rng(0)
  classes, colours = [], []
  for _ in range(num_scenes):
    scene = demo_scenes.make_scene(rng, 32, palette=palette)
    for c in np.unique(scene.labels[scene.labels > 0]):
      classes.append(int(c))
      colours.append(scene.image[scene.labels == c].mean(0))
  return np.asarray(classes), np.asarray(colours, np.float64)


def _nearest_centroid_accuracy(classes, colours) -> float:
  """Fit class centroids of the mean colour on the first half, classify the second half."""
  half = len(classes) // 2
  ids = np.unique(classes[:half])
  centroids = np.stack([colours[:half][classes[:half] == c].mean(0) for c in ids])
  distance = ((colours[half:, None] - centroids[None]) ** 2).sum(-1)
  return float(np.mean(ids[np.argmin(distance, 1)] == classes[half:]))


def test_colour_names_categories_per_class_but_not_in_the_shared_palette():
  per_class = _nearest_centroid_accuracy(*_region_colours("per_class"))
  shared = _nearest_centroid_accuracy(*_region_colours("shared"))
  assert per_class > 0.8, per_class
  assert shared < 0.25, shared  # Chance is 1/12; colour carries almost nothing.


def test_shared_palette_keeps_shapes_labels_and_colourless_captions():
  rng = np.random.default_rng(1)
  for _ in range(40):
    scene = demo_scenes.make_scene(rng, 48, held_out=True, palette="shared")
    present = {demo_scenes.CLASS_NAMES[c - 1] for c in np.unique(scene.labels) if c}
    assert present <= set(scene.objects)
    for name in set(scene.objects):
      plural = demo_scenes.CATEGORIES[demo_scenes.CLASS_NAMES.index(name)].plural
      assert name in scene.caption or plural in scene.caption
    assert not COLOUR_WORDS.search(scene.caption), scene.caption


def test_default_palette_draws_the_same_scenes_as_before_palettes():
  """The per-class world is unchanged: same random stream, same default cache name as before the option."""
  assert demo_data.cache_name(demo_data.DemoDataConfig()) == "d3faeae8a728"
  a = demo_scenes.make_scene(np.random.default_rng(3), 32)
  b = demo_scenes.make_scene(np.random.default_rng(3), 32, palette="per_class")
  np.testing.assert_array_equal(a.image, b.image)


def test_unknown_palette_is_refused():
  with pytest.raises(ValueError, match="palette=.pastel."):
    demo_data.DemoDataConfig(palette="pastel")
  with pytest.raises(ValueError, match="palette"):
    demo_scenes.make_scene(np.random.default_rng(0), 32, palette="pastel")


def test_palette_is_part_of_the_cache_key(tmp_path):
  data = ml_collections.ConfigDict(dict(demo_root=str(tmp_path), image_size=32, num_train=4, num_eval=2, num_tune=2))
  per_class = demo_data.ensure_for_config(data, seed=0)
  data.palette = "shared"
  shared = demo_data.ensure_for_config(data, seed=0)
  assert Path(per_class.eval_dir).parent != Path(shared.eval_dir).parent
  meta = json.loads((Path(shared.eval_dir) / "meta.json").read_text())
  assert meta["palette"] == "shared"
  split_a = demo_data.load_labelled_split(per_class.eval_dir)
  split_b = demo_data.load_labelled_split(shared.eval_dir)
  assert not np.array_equal(split_a.images, split_b.images)
