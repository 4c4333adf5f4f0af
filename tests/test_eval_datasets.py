"""Evaluation dataset readers on tiny files in their real on-disk layouts."""

import numpy as np
import pytest
from PIL import Image

from data_pipelines import eval_datasets
from data_pipelines.eval_datasets import coco, pascal_context, voc
from data_pipelines.eval_datasets.files import read_label
from dataset_layouts import write_grey_png, write_image, write_palette_png, write_uint16_tif

RNG = np.random.default_rng(0)


@pytest.fixture
def voc_root(tmp_path):
  root = tmp_path / "VOCdevkit" / "VOC2012"
  ids = ["2007_000033", "2007_000042"]
  labels = {}
  for i in ids:
    write_image(root / "JPEGImages" / f"{i}.jpg")
    label = RNG.integers(0, 21, (6, 8))
    label[0, 0] = 255
    write_palette_png(root / "SegmentationClass" / f"{i}.png", label)
    labels[i] = label
  (root / "ImageSets" / "Segmentation").mkdir(parents=True)
  (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
  return root, ids, labels


def test_voc_reads_palette_indices_in_list_order(voc_root):
  root, ids, labels = voc_root
  dataset = eval_datasets.load("voc", root, "val")
  examples = list(dataset)
  assert dataset.info.num_classes == 21 and dataset.info.background_index == 0
  assert len(dataset.info.unseen_classes) == 5 and len(dataset.info.seen_classes) == 15
  assert [e.key for e in examples] == ids
  for e in examples:
    np.testing.assert_array_equal(e.label, labels[e.key])
    assert e.image.shape == (6, 8, 3) and e.image.dtype == np.uint8


def test_voc20_ignores_background(voc_root):
  root, ids, labels = voc_root
  example = next(iter(voc.voc20(root)))
  expected = np.where((labels[ids[0]] == 0) | (labels[ids[0]] == 255), 255, labels[ids[0]] - 1)
  np.testing.assert_array_equal(example.label, expected)
  assert eval_datasets.load("voc20", root).info.num_classes == 20


def test_pascal_context_59_and_60(tmp_path):
  root = tmp_path / "VOC2010"
  write_image(root / "JPEGImages" / "2008_000002.jpg")
  label = RNG.integers(0, 60, (6, 8))
  write_grey_png(root / "SegmentationClassContext" / "2008_000002.png", label)
  (root / "ImageSets" / "SegmentationContext").mkdir(parents=True)
  (root / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000002\n")
  c59, c60 = pascal_context.context59(root), pascal_context.context60(root)
  assert (c59.info.num_classes, c60.info.num_classes) == (59, 60)
  np.testing.assert_array_equal(next(iter(c59)).label, np.where(label == 0, 255, label - 1))
  np.testing.assert_array_equal(next(iter(c60)).label, label)
  assert c60.info.class_names[1:] == c59.info.class_names


def test_coco_object_makes_stuff_and_unlabelled_pixels_background_as_groupvit_converts(tmp_path):
  root = tmp_path / "coco"
  write_image(root / "val2017" / "000000000139.jpg", hw=(2, 5))
  # COCO-Stuff ids: person 0, toothbrush 79 (the last thing), banner 80 (the first stuff), wood 170, unlabelled 255.
  stuff_map = np.array([[0, 79, 80, 170, 255],
                        [255, 255, 56, 100, 0]])
  write_grey_png(root / "stuffthingmaps_detectron2" / "val2017" / "000000000139.png", stuff_map)
  dataset = eval_datasets.load("coco_object", root, "val")
  info = dataset.info
  assert info.num_classes == 81 and info.class_names[1] == "person" and info.class_names[80] == "toothbrush"
  assert info.background_index == 0 and info.class_names[57] == "chair"
  np.testing.assert_array_equal(next(iter(dataset)).label, [[1, 80, 0, 0, 0],
                                                            [0, 0, 57, 0, 1]])  # Nothing is left ignored.


def test_missing_files_name_the_path_and_the_layout(tmp_path, voc_root):
  with pytest.raises(FileNotFoundError, match=r"voc: ImageSets/Segmentation/val.txt is missing.*Expected layout"):
    eval_datasets.load("voc", tmp_path / "nothing")
  root, ids, _ = voc_root
  (root / "SegmentationClass" / f"{ids[-1]}.png").unlink()
  with pytest.raises(FileNotFoundError, match=f"{ids[-1]}.png is missing.*SegmentationClass/ID.png"):
    eval_datasets.load("voc", root)
  with pytest.raises(FileNotFoundError, match="coco_object: stuffthingmaps_detectron2/val2017 is missing"):
    coco.coco_object(tmp_path / "coco")


def test_rgb_label_images_are_refused(voc_root):
  root, ids, _ = voc_root
  Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "SegmentationClass" / f"{ids[0]}.png")
  with pytest.raises(ValueError, match="single-channel"):
    list(eval_datasets.load("voc", root))


def test_coco_stuff_171_and_its_zero_shot_split(tmp_path):
  root = tmp_path / "coco"
  write_image(root / "val2017" / "000000000285.jpg")
  label = RNG.integers(0, 171, (6, 8))
  write_grey_png(root / "stuffthingmaps_detectron2" / "val2017" / "000000000285.png", label)
  dataset = eval_datasets.load("coco_stuff", root, "val")
  assert dataset.info.num_classes == 171 and len(dataset.info.unseen_classes) == 15
  assert len(dataset.info.seen_classes) == 156 and set(dataset.info.unseen_classes) <= set(dataset.info.class_names)
  np.testing.assert_array_equal(next(iter(dataset)).label, label)


def test_ade150_reduces_the_zero_label(tmp_path):
  root = tmp_path / "ADEChallengeData2016"
  write_image(root / "images" / "validation" / "ADE_val_00000001.jpg")
  label = RNG.integers(0, 151, (6, 8))
  write_grey_png(root / "annotations" / "validation" / "ADE_val_00000001.png", label)
  dataset = eval_datasets.load("ade150", root, "val")
  assert dataset.info.num_classes == 150
  np.testing.assert_array_equal(next(iter(dataset)).label, np.where(label == 0, 255, label - 1))


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
  root = tmp_path / "cityscapes"
  write_image(root / "leftImg8bit" / "val" / "lindau" / "lindau_000000_000019_leftImg8bit.png")
  label = RNG.integers(0, 34, (6, 8))
  write_grey_png(root / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png", label)
  dataset = eval_datasets.load("cityscapes", root, "val")
  example = next(iter(dataset))
  official = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
              27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # cityscapesScripts' labels.py
  np.testing.assert_array_equal(example.label, np.vectorize(lambda v: official.get(v, 255))(label))
  assert example.key == "lindau_000000_000019" and dataset.info.num_classes == 19


def test_prepare_coco_stuff_and_cityscapes_convert_once(tmp_path):
  from data_pipelines import prepare
  root = tmp_path / "coco"
  raw = np.array([[0, 11, 90, 91], [181, 182, 255, 79]])  # person, unused id 12, stuff id 92 (banner), ...
  write_grey_png(root / "stuffthingmaps_trainval2017" / "val2017" / "1.png", raw)
  assert prepare.prepare_coco_stuff(root) == {"written": 1, "already_done": 0}
  out = np.asarray(Image.open(root / "stuffthingmaps_detectron2" / "val2017" / "1.png"))
  things = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
  assert out[0, 0] == 0 and out[0, 1] == 255 and out[0, 2] == 255 and out[0, 3] == 80  # id 91 unused; 92 -> 80
  assert out[1, 0] == 170 and out[1, 1] == 255 and out[1, 2] == 255 and out[1, 3] == things.index(80)
  assert prepare.prepare_coco_stuff(root) == {"written": 0, "already_done": 1}
  city = tmp_path / "cityscapes"
  write_grey_png(city / "gtFine" / "val" / "ulm" / "ulm_1_gtFine_labelIds.png", np.array([[7, 33, 0]]))
  prepare.prepare_cityscapes(city)
  np.testing.assert_array_equal(
      np.asarray(Image.open(city / "gtFine" / "val" / "ulm" / "ulm_1_gtFine_labelTrainIds.png")), [[0, 18, 255]])
  with pytest.raises(FileNotFoundError, match="stuffthingmaps_trainval2017.zip"):
    prepare.prepare_coco_stuff(tmp_path / "empty")


def test_context459_reads_uint16_labels_with_65535_ignored(tmp_path):
  root = tmp_path / "VOC2010"
  write_image(root / "JPEGImages" / "2008_000008.jpg")
  label = RNG.integers(0, 459, (6, 8))
  label[0, :3] = [458, 300, 65535]
  write_uint16_tif(root / "annotations_detectron2" / "pc459_val" / "2008_000008.tif", label)
  dataset = eval_datasets.load("context459", root, "val")
  example = next(iter(dataset))
  assert dataset.info.num_classes == 459 and dataset.info.ignore_index == 65535
  np.testing.assert_array_equal(example.label, label)
  assert dataset.info.class_names[458] == "wool" and len(set(dataset.info.class_names)) == 459
  with pytest.raises(FileNotFoundError, match="pc459_train"):
    eval_datasets.load("context459", root, "train")


def test_ade847_reads_uint16_labels_and_comma_synonyms(tmp_path):
  root = tmp_path / "ADE20K_2021_17_01"
  write_image(root / "images_detectron2" / "validation" / "ADE_val_00000001.jpg")
  label = RNG.integers(0, 847, (6, 8))
  label[0, 0] = 65535
  write_uint16_tif(root / "annotations_detectron2" / "validation" / "ADE_val_00000001.tif", label)
  dataset = eval_datasets.load("ade847", root, "val")
  np.testing.assert_array_equal(next(iter(dataset)).label, label)
  info = dataset.info
  assert info.num_classes == 847 and len(set(info.class_names)) == 847 and info.ignore_index == 65535
  assert info.synonyms["building, edifice"] == ("building", "edifice") and "wall" not in info.synonyms
  # ZegFormer's frequency split, as MAFT evaluates it: 572 seen, 275 unseen.
  assert len(info.unseen_classes) == 275 and len(info.seen_classes) == 572
  assert set(info.unseen_classes) <= set(info.class_names) and "wall" in info.seen_classes
  assert {"catwalk", "adding machine, totalizer, totaliser"} <= set(info.unseen_classes)


def test_prepare_pascal_context_from_the_release_mat_files(tmp_path):
  import scipy.io
  from data_pipelines import prepare
  root = tmp_path / "VOC2010"
  label_maps = {"2008_000002": RNG.integers(0, 460, (5, 7)), "2008_000003": RNG.integers(0, 460, (4, 6))}
  label_maps["2008_000002"][0, :4] = [0, 2, 459, 1]  # unlabelled, aeroplane, wool (not among the 59), accordion
  for key, label_map in label_maps.items():
    (root / "trainval").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / "trainval" / f"{key}.mat", {"LabelMap": label_map.astype(np.uint16)})
  (root / "ImageSets" / "Main").mkdir(parents=True)
  (root / "ImageSets" / "Main" / "train.txt").write_text("2008_000002\n2008_000099\n")  # 99: no Context labels.
  (root / "ImageSets" / "Main" / "val.txt").write_text("2008_000003\n")
  assert prepare.prepare_pascal_context(root) == {"written": 4, "already_done": 0}
  # mmseg's tools/convert_datasets/pascal_context.py: the 59 classes' label ids, sorted, with 0 for background.
  mmseg_ids = sorted([0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284, 158, 159, 416, 33, 162,
                      420, 454, 295, 296, 427, 44, 45, 46, 308, 59, 440, 445, 31, 232, 65, 354, 424, 68, 326, 72, 458,
                      34, 207, 80, 355, 85, 347, 220, 349, 360, 98, 187, 104, 105, 366, 189, 368, 113, 115])
  for key, split in (("2008_000002", "train"), ("2008_000003", "val")):
    raw = label_maps[key]
    expected_60 = np.vectorize(lambda v: mmseg_ids.index(v) if v in mmseg_ids else 0)(raw)
    np.testing.assert_array_equal(read_label(root / "SegmentationClassContext" / f"{key}.png"), expected_60)
    np.testing.assert_array_equal(read_label(root / "annotations_detectron2" / f"pc459_{split}" / f"{key}.tif"),
                                  np.where(raw == 0, 65535, raw - 1))
  assert (root / "ImageSets" / "SegmentationContext" / "train.txt").read_text() == "2008_000002\n"
  write_image(root / "JPEGImages" / "2008_000002.jpg", hw=(5, 7))
  c60 = eval_datasets.load("context60", root, "train")
  assert c60.info.class_names[mmseg_ids.index(2)] == "aeroplane" and next(iter(c60)).label[0, 1] == 1
  assert prepare.prepare_pascal_context(root) == {"written": 0, "already_done": 4}
  with pytest.raises(FileNotFoundError, match="trainval.tar.gz"):
    prepare.prepare_pascal_context(tmp_path / "empty")
