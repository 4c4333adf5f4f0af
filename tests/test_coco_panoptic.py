"""COCO panoptic reader, zero-shot image filter and panoptic training targets on a hand-made directory in the
release's layout."""
import json

import ml_collections
import numpy as np
import pytest
from PIL import Image

from data_pipelines import coco_panoptic
from ovseg_jax.methods.mask2former import data as m2f_data

CATEGORIES = [{"id": 1, "name": "person", "isthing": 1, "supercategory": "person"},
              {"id": 21, "name": "cow", "isthing": 1, "supercategory": "animal"},
              {"id": 149, "name": "road", "isthing": 0, "supercategory": "ground"},
              {"id": 184, "name": "tree-merged", "isthing": 0, "supercategory": "plant"},
              {"id": 193, "name": "grass-merged", "isthing": 0, "supercategory": "plant"},
              {"id": 199, "name": "wall-other-merged", "isthing": 0, "supercategory": "wall"}]


def _write_image(root, split, stem, ids, segments):
  h, w = ids.shape
  Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / f"{split}2017" / f"{stem}.jpg")
  Image.fromarray(coco_panoptic.id2rgb(ids)).save(root / f"panoptic_{split}2017" / f"{stem}.png")
  return {"file_name": f"{stem}.png", "image_id": int(stem), "segments_info": segments}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  """Three training images: two people on a wall (one crowd), a cow (unseen), grass under a person with VOID."""
  root = tmp_path_factory.mktemp("coco")
  for d in ("annotations", "train2017", "panoptic_train2017"):
    (root / d).mkdir()
  a = np.full((8, 10), 300, np.int64)  # Segment ids past 255 exercise the G channel.
  a[1:4, 1:4], a[4:7, 5:9], a[0, 9] = 70000, 5, 9
  b = np.full((8, 10), 2, np.int64)
  b[2:5, 2:6] = 1
  c = np.zeros((8, 10), np.int64)
  c[4:, :] = 11
  c[1:4, 3:6] = 12
  annotations = [
      _write_image(root, "train", "000000000001", a, [
          {"id": 300, "category_id": 199, "iscrowd": 0}, {"id": 70000, "category_id": 1, "iscrowd": 0},
          {"id": 5, "category_id": 1, "iscrowd": 0}, {"id": 9, "category_id": 1, "iscrowd": 1}]),
      _write_image(root, "train", "000000000002", b, [
          {"id": 1, "category_id": 21, "iscrowd": 0}, {"id": 2, "category_id": 193, "iscrowd": 0}]),
      _write_image(root, "train", "000000000003", c, [
          {"id": 11, "category_id": 193, "iscrowd": 0}, {"id": 12, "category_id": 1, "iscrowd": 0}])]
  spec = {"categories": CATEGORIES, "annotations": annotations, "images": []}
  (root / "annotations" / "panoptic_train2017.json").write_text(json.dumps(spec))
  return root


def test_rgb2id_inverts_id2rgb_as_panopticapi_defines_it():
  ids = np.array([[0, 1, 255, 256], [65535, 65536, 16777215, 300]])
  colors = coco_panoptic.id2rgb(ids)
  assert colors[0, 3].tolist() == [0, 1, 0] and colors[1, 1].tolist() == [0, 0, 1]
  np.testing.assert_array_equal(coco_panoptic.rgb2id(colors), ids)


def test_unseen_classes_are_pading_s_fourteen():
  assert len(coco_panoptic.UNSEEN) == 14 and "playingfield" in coco_panoptic.UNSEEN
  # PADing's `unseen_index`: their positions among the 133 categories.
  assert sorted(coco_panoptic.CLASS_NAMES.index(n) for n in coco_panoptic.UNSEEN) == [
      19, 23, 28, 29, 36, 51, 76, 83, 97, 99, 100, 116, 119, 125]
  assert len(coco_panoptic.CLASS_NAMES) == 133


def test_reader_gives_ids_segments_and_categories(root):
  dataset = coco_panoptic.CocoPanoptic(root, "train")
  assert len(dataset) == 3
  assert dataset.class_names == ("person", "cow", "road", "tree-merged", "grass-merged", "wall-other-merged")
  assert dataset.categories[149] == {"name": "road", "isthing": 0}
  example = dataset.example(0)
  assert example.key == "000000000001" and example.image.shape == (8, 10, 3)
  assert example.segment_ids[2, 2] == 70000 and example.segment_ids[0, 0] == 300
  assert [s["id"] for s in example.segments] == [300, 70000, 5, 9]


def test_missing_files_are_named_with_the_layout(tmp_path, root):
  with pytest.raises(FileNotFoundError, match="panoptic_val2017.json.*COCO 2017 panoptic"):
    coco_panoptic.CocoPanoptic(root, "val")
  dataset = coco_panoptic.CocoPanoptic(root, "train")
  (root / "panoptic_train2017" / "000000000003.png").rename(tmp_path / "moved.png")
  try:
    with pytest.raises(FileNotFoundError, match="000000000003.png"):
      dataset.example(2)
  finally:
    (tmp_path / "moved.png").rename(root / "panoptic_train2017" / "000000000003.png")


def test_images_with_an_unseen_segment_are_dropped(root):
  dataset = coco_panoptic.CocoPanoptic(root, "train")
  unseen = dataset.category_ids(["cow", "road", "tree-merged"])
  assert coco_panoptic.seen_only(dataset.annotations, unseen) == [0, 2]
  with pytest.raises(ValueError, match="not categories"):
    dataset.category_ids(["giraffe"])


def test_panoptic_targets_one_per_non_crowd_segment(root):
  example = coco_panoptic.CocoPanoptic(root, "train").example(0)
  label = coco_panoptic.panoptic_label(example.segment_ids, example.segments, {1: 0, 199: 4})
  segments, classes = coco_panoptic.panoptic_targets(label, max_targets=4)
  assert classes.tolist() == [0, 0, 4, -1]  # Two people (instances 0, 1), the wall; the crowd person is none.
  np.testing.assert_array_equal(segments[1:4, 1:4], 0)
  np.testing.assert_array_equal(segments[4:7, 5:9], 1)
  assert segments[0, 0] == 2 and segments[0, 9] == -1
  segments, classes = coco_panoptic.panoptic_targets(label, max_targets=2)
  assert classes.tolist() == [0, 4]  # The largest two: the second person (12 px) and the wall (58 px).
  assert (segments == 0).sum() == 12 and (segments == 1).sum() == 58


def _config(root):
  c = ml_collections.ConfigDict()
  c.seed, c.batch_size = 0, 2
  c.data = ml_collections.ConfigDict(dict(
      source="coco_panoptic", targets="panoptic", root=str(root), split="train", class_names=(
          "person", "cow", "road", "tree-merged", "grass-merged", "wall-other-merged"),
      unseen_classes=("cow", "road", "tree-merged"), crop_size=8, cat_max_ratio=1.0, short_sides=(8,), max_size=0,
      max_targets=4, workers=1))
  return c


def test_mask2former_reads_seen_only_panoptic_batches(root):
  c = _config(root)
  count, read = m2f_data.samples(c)
  assert count == 2
  image, label = read(1)  # The third image: grass and a person; training classes person 0, grass 1, wall 2.
  assert image.shape == (8, 10, 3)
  assert set(np.unique(label).tolist()) == {0, 1 * coco_panoptic.LABEL_DIVISOR, coco_panoptic.IGNORE}
  batch = next(m2f_data.host_batches(c, 0))
  assert batch["segments"].shape == (2, 8, 8) and batch["target_classes"].shape == (2, 4)
  assert set(batch["target_classes"].ravel().tolist()) <= {-1, 0, 1, 2}


def test_panoptic_source_is_checked(root):
  c = _config(root)
  c.data.source = "demo"
  with pytest.raises(ValueError, match="coco_panoptic"):
    m2f_data.samples(c)
  c = _config(root)
  c.data.class_names = ("person",)
  with pytest.raises(ValueError, match="panoptic JSON"):
    m2f_data.samples(c)
