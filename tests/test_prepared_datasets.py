"""Datasets prepared as TensorFlow Datasets from tiny hand-made roots in their published layouts: read back, they
give exactly what the directory readers give; the supervised pipeline splits them over hosts and resumes."""
import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image

from data_pipelines import labelled, supervised
from data_pipelines import coco_panoptic
from data_pipelines.prepared import semantic, store
from data_pipelines.segmentation_crops import CropSpec
from dataset_layouts import RNG, write_grey_png, write_image, write_palette_png, write_uint16_tif

SPLITS = {"train": 7, "val": 2}  # Examples per split (VOC's train feeds the pipeline tests).


def _ids(split, n):
  return [f"{split}_{i:03d}" for i in range(n)]


def _labels(high, n, ignore=None):
  label = RNG.integers(0, high, (6, 8))
  if ignore is not None:
    label[0, :n] = ignore
  return label


def _voc(root):
  for split, n in SPLITS.items():
    for i in _ids(split, n):
      write_image(root / "JPEGImages" / f"{i}.jpg")
      write_palette_png(root / "SegmentationClass" / f"{i}.png", _labels(21, 2, 255))
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(_ids(split, n)) + "\n")
  for i in _ids("aug", 2):  # SBD's extra training images.
    write_image(root / "JPEGImages" / f"{i}.jpg")
  for i in _ids("aug", 2) + _ids("train", 1):  # SegmentationClassAug labels every image of train_aug.
    write_grey_png(root / "SegmentationClassAug" / f"{i}.png", _labels(21, 1, 255))
  (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(_ids("aug", 2) + _ids("train", 1)))


def _pascal_context(root):
  for split, n in SPLITS.items():
    for i in _ids(split, n):
      write_image(root / "JPEGImages" / f"{i}.jpg")
      write_grey_png(root / "SegmentationClassContext" / f"{i}.png", _labels(60, 0))
      write_uint16_tif(root / "annotations_detectron2" / f"pc459_{split}" / f"{i}.tif", _labels(459, 2, 65535))
    (root / "ImageSets" / "SegmentationContext").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "SegmentationContext" / f"{split}.txt").write_text("\n".join(_ids(split, n)))


def _coco_stuff(root):
  for split, n in SPLITS.items():
    for i in _ids(split, n):
      write_image(root / f"{split}2017" / f"{i}.jpg")
      write_grey_png(root / "stuffthingmaps_detectron2" / f"{split}2017" / f"{i}.png", _labels(171, 3, 255))


def _ade(root, images, annotations, high, suffix, write_label):
  for split, n in SPLITS.items():
    folder = {"train": "training", "val": "validation"}[split]
    for i in _ids(split, n):
      write_image(root / images / folder / f"{i}.jpg")
      write_label(root / annotations / folder / f"{i}{suffix}", _labels(high, 2, 65535 if suffix == ".tif" else 0))


def _cityscapes(root):
  for split, n in SPLITS.items():
    for i in _ids(split, n):
      write_image(root / "leftImg8bit" / split / "aachen" / f"aachen_{i}_leftImg8bit.png")
      write_grey_png(root / "gtFine" / split / "aachen" / f"aachen_{i}_gtFine_labelIds.png", _labels(34, 0))


LAYOUTS = {
    "voc": ("VOC2012", _voc),
    "context59": ("VOC2010", _pascal_context),
    "context60": ("VOC2010", _pascal_context),
    "context459": ("VOC2010", _pascal_context),
    "coco_stuff": ("coco", _coco_stuff),
    "ade150": ("ADEChallengeData2016", lambda r: _ade(r, "images", "annotations", 151, ".png", write_grey_png)),
    "ade847": ("ADE20K_2021_17_01", lambda r: _ade(r, "images_detectron2", "annotations_detectron2", 847, ".tif",
                                                   write_uint16_tif)),
    "cityscapes": ("cityscapes", _cityscapes),
}


def _coco_panoptic(root):
  """Two val images with 2-3 segments each (one crowd), coded R + 256 G + 256^2 B as the release codes them."""
  categories = [{"id": 1, "name": "person", "isthing": 1, "supercategory": "person"},
                {"id": 184, "name": "tree-merged", "isthing": 0, "supercategory": "plant"}]
  annotations = []
  for n, i in enumerate(_ids("val", 2)):
    write_image(root / "val2017" / f"{i}.jpg")
    ids = np.asarray([0, 70000 + n, 3 * 256 + 5, 1])  # 0 = VOID.
    segment_map = ids[RNG.integers(0, 3 + n, (6, 8))]
    rgb = np.stack([segment_map % 256, segment_map // 256 % 256, segment_map // 65536], -1).astype(np.uint8)
    (root / "panoptic_val2017").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(root / "panoptic_val2017" / f"{i}.png")
    segments = [{"id": int(s), "category_id": [1, 184][k % 2], "iscrowd": int(k == 2), "area": int((segment_map == s).sum()),
                 "bbox": [0, 0, 1, 1]} for k, s in enumerate(ids[1:3 + n])]
    annotations.append({"image_id": n, "file_name": f"{i}.png", "segments_info": segments})
  (root / "annotations").mkdir(parents=True)
  (root / "annotations" / "panoptic_val2017.json").write_text(json.dumps(
      {"images": [], "annotations": annotations, "categories": categories}))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """(roots by dataset, data dir): every builder prepared once from its layout."""
  base, data_dir, roots = tmp_path_factory.mktemp("manual"), tmp_path_factory.mktemp("tfds"), {}
  for name, (folder, write) in LAYOUTS.items():
    roots[name] = base / folder
    if not roots[name].exists():
      write(roots[name])
    store.prepare(name, roots[name], data_dir)
  roots["coco_panoptic"] = base / "coco_panoptic"
  _coco_panoptic(roots["coco_panoptic"])
  store.prepare("coco_panoptic", roots["coco_panoptic"], data_dir)
  return roots, data_dir


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_prepared_examples_equal_the_directory_readers(prepared, name):
  roots, data_dir = prepared
  builder = store.open_prepared(data_dir, name)
  expected_splits = {"train", "val", "train_aug"} if name == "voc" else {"train", "val"}
  assert set(builder.info.splits) == expected_splits
  for split in expected_splits:
    reader = semantic.SOURCES[name].splits[split](roots[name])
    read = {e.key: e for e in reader}
    prepared_split = labelled.load(name, data_dir, split)  # A data dir holding it is read from there.
    assert isinstance(prepared_split, store.PreparedDataset) and len(prepared_split) == len(read)
    for example in prepared_split:
      np.testing.assert_array_equal(example.label, read[example.key].label)
      np.testing.assert_array_equal(example.image, read[example.key].image)
    # Classes, ignore value, background, zero-shot split, synonyms (the layout is the first split's).
    assert dataclasses.replace(prepared_split.info, layout=reader.info.layout) == reader.info
  assert store.metadata(builder)["license"] == semantic.SOURCES[name].license


def test_prepared_images_are_shared_out_between_hosts_in_split_order(prepared):
  _, data_dir = prepared
  dataset = labelled.load("voc", data_dir, "train")
  examples = {e.key: e.image for e in dataset}
  order = list(examples)
  for limit in (0, 5):
    shares = [list(dataset.images(limit, host, 2)) for host in range(2)]
    kept = order[:limit] if limit else order
    assert [key for key, _ in shares[0]] == kept[0::2] and [key for key, _ in shares[1]] == kept[1::2]
    for key, image in shares[0] + shares[1]:
      np.testing.assert_array_equal(image, examples[key])


def test_label_conversion_happened_at_preparation(prepared):
  """ADE-150's stored 0 ("other") is read back as the reader's ignore value, Cityscapes' label ids as train ids."""
  roots, data_dir = prepared
  ade = next(iter(labelled.load("ade150", data_dir, "val")))
  assert ade.label[0, 0] == 255 and ade.label[ade.label != 255].max() <= 149
  city = next(iter(labelled.load("cityscapes", data_dir, "val")))
  assert set(np.unique(city.label)) <= set(range(19)) | {255}
  assert labelled.load("coco_stuff", data_dir, "val").info.unseen_classes[0] == "frisbee"


def test_coco_panoptic_records_hold_the_png_ids_and_segments(prepared):
  roots, data_dir = prepared
  reader = coco_panoptic.CocoPanoptic(roots["coco_panoptic"], "val")
  expected = {e.key: e for e in reader}
  fields = {reader.files(i)[0]: reader.files(i)[3] for i in range(len(reader))}
  builder = store.open_prepared(data_dir, "coco_panoptic")
  records = list(builder.as_dataset(split="val").as_numpy_iterator())
  assert len(records) == 2
  crowds = 0
  for record in records:
    example = expected[record["key"].decode()]
    np.testing.assert_array_equal(coco_panoptic.rgb2id(record["panoptic"]), example.segment_ids)
    segments = [dict(zip(coco_panoptic.SEGMENT_FIELDS, values)) for values in
                zip(*(record["segments"][f].tolist() for f in coco_panoptic.SEGMENT_FIELDS))]
    assert segments == fields[example.key]
    crowds += sum(s["iscrowd"] for s in segments)
  assert crowds == 1
  categories = store.metadata(builder)["categories"]
  assert categories == [{"id": 1, "name": "person", "isthing": 1}, {"id": 184, "name": "tree-merged", "isthing": 0}]


def test_demo_scenes_are_prepared_from_their_labelled_split(tmp_path):
  from data_pipelines import demo_data
  from data_pipelines.eval_datasets.demo import DemoDataset
  cfg = demo_data.DemoDataConfig(image_size=16, num_train=6, num_eval=2, num_tune=2, samples_per_shard=6)
  split_dir = demo_data.ensure_labelled_train(demo_data.ensure_demo_data(tmp_path / "cache", cfg), cfg, 5)
  store.ensure_prepared_demo(tmp_path / "data", split_dir)
  store.ensure_prepared_demo(tmp_path / "data", split_dir)  # Once: a prepared one is kept.
  expected = {e.key: e.label for e in DemoDataset(os.path.dirname(split_dir), os.path.basename(split_dir))}
  prepared_split = store.PreparedDataset(tmp_path / "data", "demo", "train")
  assert {e.key: e.label.tolist() for e in prepared_split} == {k: v.tolist() for k, v in expected.items()}
  assert prepared_split.info.class_names == tuple(demo_data.class_names())


def test_missing_layout_and_unprepared_names_are_explained(tmp_path, prepared):
  with pytest.raises(FileNotFoundError, match="ade150: no split found.*Expected layout"):
    store.prepare("ade150", tmp_path, tmp_path / "out")
  with pytest.raises(FileNotFoundError, match="python -m data_pipelines.prepare voc"):
    store.open_prepared(tmp_path, "voc")
  with pytest.raises(ValueError, match="unknown dataset"):
    store.prepare("imagenet", tmp_path, tmp_path / "out")


SPEC = CropSpec(crop_size=5, short_sides=(6, 8), max_size=0, cat_max_ratio=0.75)


def _pipeline(data_dir, batch_size=3, **kwargs):
  return supervised.SupervisedPipeline(data_dir, "voc", "train", batch_size, SPEC, seed=3,
                                       targets=supervised.Targets(max_targets=4), **kwargs)


def test_two_hosts_read_disjoint_examples_covering_the_split_once(prepared):
  _, data_dir = prepared
  keys = []
  for host in range(2):
    pipeline = _pipeline(data_dir, batch_size=1, process_index=host, process_count=2)
    keys.append([next(pipeline)["key"][0].decode() for _ in range(pipeline.num_examples)])
    assert pipeline.position() == {"epoch": 1, "offset": 0}
  assert sorted(keys[0] + keys[1]) == _ids("train", 7) and {len(k) for k in keys} == {3, 4}


def test_a_resumed_pipeline_continues_its_epoch_with_the_same_batches(prepared):
  _, data_dir = prepared
  pipeline = _pipeline(data_dir)
  batches, positions = [], []
  for _ in range(5):  # 15 examples: past the end of the first two epochs of 7.
    batches.append(next(pipeline))
    positions.append(pipeline.position())
  assert positions[1] == {"epoch": 0, "offset": 6} and positions[2] == {"epoch": 1, "offset": 2}
  epoch_keys = [k for b in batches for k in b["key"]][:7]
  assert sorted(k.decode() for k in epoch_keys) == _ids("train", 7)
  resumed = _pipeline(data_dir, position=positions[1])
  for expected in batches[2:]:
    batch = next(resumed)
    assert batch.keys() == expected.keys()
    for key in batch:
      np.testing.assert_array_equal(batch[key], expected[key])
  assert resumed.counts() == {"examples": 9, "skipped": 0}
  other_epoch = [k for b in batches for k in b["key"]][7:14]
  assert other_epoch != epoch_keys  # Each epoch is shuffled anew.


def test_examples_that_fail_to_decode_are_skipped_and_counted(tmp_path):
  root = tmp_path / "ADEChallengeData2016"
  for n, i in enumerate(_ids("train", 4)):
    write_image(root / "images" / "training" / f"{i}.jpg")
    write_grey_png(root / "annotations" / "training" / f"{i}.png", _labels(151, 0))
  (root / "images" / "training" / f"{_ids('train', 4)[2]}.jpg").write_bytes(b"not an image")
  store.prepare("ade150", root, tmp_path / "data")
  pipeline = supervised.SupervisedPipeline(tmp_path / "data", "ade150", "train", 3, SPEC)
  keys = [k.decode() for _ in range(2) for k in next(pipeline)["key"]]
  counts, position = pipeline.counts(), pipeline.position()
  assert _ids("train", 4)[2] not in keys and counts["examples"] == 6 and counts["skipped"] >= 1
  assert 4 * position["epoch"] + position["offset"] == counts["examples"] + counts["skipped"]


def test_prepare_command_prepares_a_named_dataset(prepared, tmp_path):
  import subprocess
  import sys
  roots, _ = prepared
  command = [sys.executable, "-m", "data_pipelines.prepare", "context60", f"--manual_dir={roots['context60']}",
             f"--data_dir={tmp_path}"]
  result = subprocess.run(command, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert result.returncode == 0, result.stderr[-2000:]
  assert store.find(tmp_path, "context60") is not None
  mixed = subprocess.run(command + ["--root=/data"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
  assert mixed.returncode != 0 and "--manual_dir=DIR --data_dir=DIR" in mixed.stdout + mixed.stderr
