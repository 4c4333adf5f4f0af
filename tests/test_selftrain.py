"""S-Seg+ self-training: pseudo-label files, layer-wise lr decay, poly schedule, UperNet, the demo end to end."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest
import safetensors.numpy
import tensorflow as tf
from PIL import Image

from configs import selftrain_demo, selftrain_voc
from data_pipelines import supervised
from data_pipelines.prepared import store
from ovseg_jax.methods.selftrain import pseudo_labels as pseudo_label, setup as selftrain_setup
from ovseg_jax.methods import registry
from ovseg_jax.methods.selftrain import trainer as selftrain
from ovseg_jax.train import checkpoint, optim
from ovseg_jax.models import upernet
from initial_workdirs import initial_workdir
from test_vit_weights import HEADS, random_vit_state


@pytest.mark.parametrize("num_classes", [13, 300, 847])
def test_label_png_round_trips_exactly(tmp_path, num_classes):
  rng = np.random.default_rng(num_classes)
  label = rng.integers(0, num_classes, (17, 23))
  ignore = pseudo_label.IGNORE_INDEX if num_classes < 255 else pseudo_label.IGNORE_INDEX_16BIT
  label[rng.random(label.shape) < 0.1] = ignore
  pseudo_label.write_label(tmp_path / "a.png", label, num_classes)
  np.testing.assert_array_equal(pseudo_label.read_label(tmp_path / "a.png"), label)
  assert not list(tmp_path.glob(".*tmp"))  # The atomic write leaves no temporary file.


def test_label_values_outside_the_classes_are_refused(tmp_path):
  with pytest.raises(ValueError, match=r"bad\.png.*neither class ids below 13"):
    pseudo_label.write_label(tmp_path / "bad.png", np.full((2, 2), 13), 13)


def test_confidence_is_quantised_to_1_over_255(tmp_path):
  conf = np.random.default_rng(0).random((9, 7))
  pseudo_label.write_confidence(tmp_path / "c.png", conf)
  assert np.max(np.abs(pseudo_label.read_confidence(tmp_path / "c.png") - conf)) <= 0.5 / 255 + 1e-7


def test_labelling_skips_finished_images(tmp_path):
  images = [(f"k{i}", np.full((4, 5, 3), i, np.uint8)) for i in range(5)]
  calls = []

  def predict(batch):
    calls.append(len(batch))
    return batch[..., 0].astype(np.int32) % 3, np.full(batch.shape[:3], 0.5)

  first = pseudo_label.label_images(iter(images[:3]), predict, tmp_path, 3, batch_size=2)
  again = pseudo_label.label_images(iter(images), predict, tmp_path, 3, batch_size=2)
  assert first == {"labelled": 3, "skipped_done": 0} and again == {"labelled": 2, "skipped_done": 3}
  assert calls == [2, 1, 2]
  loaded, labels, conf = pseudo_label.load_pseudo_labelled(tmp_path, images)
  np.testing.assert_array_equal(labels[:, 0, 0], [0, 1, 2, 0, 1])
  np.testing.assert_allclose(conf, 128 / 255)


@pytest.mark.parametrize("num_classes", [21, 300])
def test_label_files_read_pseudo_labels_with_low_confidence_ignored(tmp_path, num_classes):
  rng = np.random.default_rng(num_classes)
  label, confidence = rng.integers(0, num_classes, (9, 7)), rng.random((9, 7))
  pseudo_label.write_label(tmp_path / "k.png", label, num_classes)
  pseudo_label.write_confidence(tmp_path / "k_confidence.png", confidence)
  ignore = pseudo_label.ignore_index(num_classes)
  files = supervised.LabelFiles(str(tmp_path), pseudo_label.label_dtype(num_classes) == np.uint16, 0.4, ignore)
  expected = np.where(pseudo_label.read_confidence(tmp_path / "k_confidence.png") >= 0.4, label, ignore)
  np.testing.assert_array_equal(files.read(tf.constant("k")).numpy(), expected)
  assert 0 < np.mean(expected == ignore) < 1


def test_layer_decay_multipliers_follow_beit_layer_ids():
  model = upernet.UperNetViT(num_classes=3, patch_size=8, width=16, depth=4, num_heads=2, mlp_dim=32, channels=8)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  mult = optim.layer_decay_multipliers(params, depth=4, decay=0.7)
  # By hand: embeddings are layer 0 (0.7^5), block i is layer i+1 (0.7^(4-i)), the neck and head 1.
  assert mult["backbone"]["patch_embed"]["kernel"] == pytest.approx(0.7 ** 5)
  assert mult["backbone"]["pos_embedding"] == pytest.approx(0.7 ** 5)
  for i in range(4):
    leaves = jax.tree.leaves(mult["backbone"][f"block_{i}"])
    assert leaves and all(m == pytest.approx(0.7 ** (4 - i)) for m in leaves)
  assert set(jax.tree.leaves(mult["head"])) == {1.0} and set(jax.tree.leaves(mult["neck"])) == {1.0}


def test_poly_schedule_matches_formula():
  schedule = optim.poly_schedule(1e-4, total_steps=100, warmup_steps=10, power=0.9)
  for step in (0, 5, 10, 50, 99, 110):
    expected = 1e-4 * step / 10 if step < 10 else 1e-4 * (1 - min(step, 100) / 100) ** 0.9
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-12)


@pytest.mark.parametrize("size,bins", [(7, 3), (12, 6), (5, 1), (4, 6)])
def test_adaptive_pool_matrix_averages_torch_bins(size, bins):
  x = np.random.default_rng(size).normal(size=size)
  expected = [x[int(np.floor(i * size / bins)):int(np.ceil((i + 1) * size / bins))].mean() for i in range(bins)]
  np.testing.assert_allclose(upernet.adaptive_pool_matrix(size, bins) @ x, expected, rtol=1e-5)


def test_upernet_logits_at_stride_4_and_invalid_blocks():
  model = upernet.UperNetViT(num_classes=5, patch_size=8, width=16, depth=4, num_heads=2, mlp_dim=32, channels=8)
  out = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0], jnp.zeros((2, 64, 48, 3)))
  assert out.shape == (2, 16, 12, 5)
  with pytest.raises(ValueError, match="must name 4 blocks"):
    upernet.UperNetViT(num_classes=5, patch_size=8, width=16, depth=2, num_heads=2, mlp_dim=32).init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_segmentation_loss_is_cross_entropy_over_labelled_pixels():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(2, 6, 5, 4)).astype(np.float32)
  labels = rng.integers(0, 4, (2, 6, 5))
  labels[0, :2] = 255
  loss, metrics = selftrain_setup.segmentation_loss(jnp.asarray(logits), jnp.asarray(labels), 255)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  valid = labels != 255
  expected = -np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0][valid].mean()
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert float(metrics["labelled_fraction"]) == pytest.approx(valid.mean())


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  """A tiny demo S-Seg workdir at its initial state (untrained labels serve as well): (its config, its workdir)."""
  tmp = tmp_path_factory.mktemp("teacher")
  config = selftrain_demo.get_config("tiny")
  config.teacher.data.demo_root = str(tmp / "demo")
  return config.teacher, initial_workdir(config.teacher, tmp / "workdir")


@pytest.mark.slow  # A long end-to-end check: `python -m pytest -q -m slow`.
def test_demo_self_training_end_to_end(tmp_path, teacher):
  config = selftrain_demo.get_config("tiny")
  config.teacher, config.teacher_workdir = teacher[0], str(teacher[1])
  results = registry.get(config).train_and_evaluate(config, tmp_path / "plus")  # As `ovseg_jax.main` runs it.
  saved = {r["predictor"]: r for r in json.loads((tmp_path / "plus" / "results.json").read_text())}
  assert list(saved) == ["S-Seg (teacher)", selftrain.NAME, "uniform random", "all background"]
  assert {r["step"] for r in saved.values()} == {config.total_steps}
  assert 0.0 <= saved[selftrain.NAME]["miou"] <= 1.0 and saved[selftrain.NAME]["background"] == "none"
  assert results[0]["miou"] == pytest.approx(saved["S-Seg (teacher)"]["miou"])
  assert len(list((tmp_path / "plus" / "pseudo_labels").glob("*_confidence.png"))) == 16
  assert "S-Seg+" in (tmp_path / "plus" / "results.md").read_text()
  assert list((tmp_path / "plus" / "overlays").glob("*.png"))


def _tiny_voc(root: Path, sizes: dict[str, tuple[int, int]]) -> None:
  rng = np.random.default_rng(0)
  for split, ids in (("train", ["a", "b", "c"]), ("val", ["d", "e"])):
    for i in ids:
      (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
      (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
      h, w = sizes[i]
      Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
      Image.fromarray(rng.integers(0, 21, (h, w)).astype(np.uint8), mode="P").save(
          root / "SegmentationClass" / f"{i}.png")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")


def _tiny_dataset_config(teacher_workdir: Path, root: Path) -> ml_collections.ConfigDict:
  config = selftrain_voc.get_config()
  tiny = selftrain_demo.get_config("tiny")
  for key in ("model", "optimizer", "checkpoint", "batch_size", "log_every_steps"):
    config[key] = tiny[key]
  config.total_steps = 3
  config.teacher_workdir, config.data.root = str(teacher_workdir), str(root)
  config.data.update(crop_size=32, scale=(64, 48), workers=2)
  config.pseudo_labels.protocol.update(short_side=64, window=64, stride=32, batch_size=2)
  config.eval.protocol.update(short_side=48, window=32, stride=16, batch_size=2)
  config.eval.num_overlays = 1
  return config


def test_dataset_self_training_labels_trains_and_evaluates(tmp_path, teacher):
  sizes = {"a": (50, 70), "b": (64, 40), "c": (48, 48), "d": (40, 60), "e": (56, 44)}
  _tiny_voc(tmp_path / "VOC2012", sizes)
  config = _tiny_dataset_config(teacher[1], tmp_path / "VOC2012")
  results = selftrain.train_and_evaluate(config, tmp_path / "plus")
  for key in "abc":  # Pseudo labels at each training image's own size, VOC class ids.
    label = pseudo_label.read_label(tmp_path / "plus" / "pseudo_labels" / f"{key}.png")
    assert label.shape == sizes[key] and label.min() >= 0 and label.max() < 21
  assert not (tmp_path / "plus" / "pseudo_labels" / "d.png").exists()  # The val split is never labelled.
  [row] = results
  assert row["dataset"] == "voc" and row["num_images"] == 2 and row["step"] == 3
  assert row["predictor"] == selftrain.NAME and 0.0 <= row["miou"] <= 1.0
  [again] = selftrain.evaluate_workdir(config, tmp_path / "plus")
  assert again["miou"] == pytest.approx(row["miou"])


def test_dataset_self_training_from_a_prepared_dataset(tmp_path, teacher):
  sizes = {"a": (50, 70), "b": (64, 40), "c": (48, 48), "d": (40, 60), "e": (56, 44)}
  _tiny_voc(tmp_path / "VOC2012", sizes)
  store.prepare("voc", tmp_path / "VOC2012", tmp_path / "tfds")
  config = _tiny_dataset_config(teacher[1], tmp_path / "tfds")  # The data dir, not the VOC directory.
  config.pseudo_labels.min_confidence = 0.2
  results = selftrain.train_and_evaluate(config, tmp_path / "plus")
  for key in "abc":
    label = pseudo_label.read_label(tmp_path / "plus" / "pseudo_labels" / f"{key}.png")
    assert label.shape == sizes[key] and label.min() >= 0 and label.max() < 21
  assert not (tmp_path / "plus" / "pseudo_labels" / "d.png").exists()
  [row] = results
  assert row["dataset"] == "voc" and row["num_images"] == 2 and row["step"] == 3
  # The crops came through the tf.data pipeline: its counts are in the metrics, every example had a label.
  last = json.loads((tmp_path / "plus" / "metrics.jsonl").read_text().splitlines()[-1])
  assert last["data/examples"] == 3 * config.batch_size and last["data/skipped"] == 0


def test_dataset_configs_without_root_teacher_or_clip_are_refused_by_name(tmp_path, teacher):
  config = _tiny_dataset_config(teacher[1], tmp_path)
  config.data.root = ""
  with pytest.raises(ValueError, match="data.root"):
    selftrain.train_and_evaluate(config, tmp_path / "plus")
  _tiny_voc(tmp_path / "VOC2012", {k: (40, 40) for k in "abcde"})
  config = _tiny_dataset_config("", tmp_path / "VOC2012")
  with pytest.raises(ValueError, match="teacher_workdir"):
    selftrain.train_and_evaluate(config, tmp_path / "plus")
  config = _tiny_dataset_config(teacher[1], tmp_path / "VOC2012")
  config.pseudo_labels.classifier = "ensemble:ovseg_voc"
  with pytest.raises(ValueError, match="pseudo_labels.clip.checkpoint"):
    selftrain.train_and_evaluate(config, tmp_path / "plus")


def test_backbone_initialised_from_a_vit_checkpoint(tmp_path):
  path = tmp_path / "mae_tiny.safetensors"
  safetensors.numpy.save_file(random_vit_state(np.random.default_rng(3), depth=4), str(path))
  config = selftrain_demo.get_config("tiny")
  config.model.backbone.update(patch_size=4, width=32, depth=4, num_heads=HEADS, mlp_dim=48)
  config.init.vit_checkpoint = str(path)
  backbone, what = selftrain.initial_backbone(config)
  assert str(path) in what
  def shapes(model):  # What the overlay checks against: no parameters need to be computed.
    return jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)},
                                             jnp.zeros((1, 32, 32, 3))))["params"]
  copied = selftrain.initialise_backbone(shapes(selftrain_setup.build_upernet(config.model, 5)), backbone,
                                         what)["backbone"]
  np.testing.assert_array_equal(copied["block_3"]["attn"]["query"]["kernel"],
                                backbone["block_3"]["attn"]["query"]["kernel"])
  assert copied["pos_embedding"].shape == (1, 8, 8, 32)  # The stored 4 x 4 grid resized to 32 / 4.
  np.testing.assert_allclose(np.asarray(copied["pos_embedding"]).mean(axis=(1, 2)),
                             backbone["pos_embedding"].mean(axis=(1, 2)), atol=0.05)
  config.model.backbone.width = 64
  wrong = shapes(selftrain_setup.build_upernet(config.model, 5))
  with pytest.raises(checkpoint.CheckpointMismatchError, match="expects"):
    selftrain.initialise_backbone(wrong, backbone, what)
