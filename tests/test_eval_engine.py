"""Evaluation protocols: sliding windows, background rules, seen/unseen metrics, the suite and predict commands."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
from absl import flags
from PIL import Image

from configs import eval_suite as eval_suite_config
from data_pipelines.eval_datasets import DatasetInfo, Example
from ovseg_jax import evaluate, predict
from ovseg_jax.eval import engine, metrics, prompts, protocol as protocols, windows
from ovseg_jax.eval.open_vocabulary import ClipSetup, open_vocabulary_predictor


def _protocol(**kw):
  base = dict(short_side=None, window=8, stride=4, templates=prompts.SINGLE, background="threshold",
              background_threshold=0.5, background_score=0.3, decode="sum", batch_size=3, synonyms={})
  return protocols.Protocol(**{**base, **kw})


@pytest.mark.parametrize("length,window,stride", [(10, 4, 3), (8, 8, 4), (5, 8, 4), (23, 7, 5), (448, 448, 224)])
def test_window_starts_follow_mmseg_grid(length, window, stride):
  grids = max(length - window + stride - 1, 0) // stride + 1  # mmseg's slide_inference
  expected = [max(min(i * stride, length - window), 0) for i in range(grids)]
  assert windows.window_starts(length, window, stride) == expected


def _window_scores(batch):
  """A score map that depends on the whole window (its mean), so overlaps really differ."""
  x = batch.astype(np.float32)
  return np.stack([x[..., 0] + x.mean(axis=(1, 2, 3))[:, None, None], x[..., 1]], axis=1)


def test_slide_averages_overlapping_windows_like_a_direct_reference():
  image = np.random.default_rng(0).integers(0, 255, (11, 13, 3), dtype=np.uint8)
  out = windows.slide(_window_scores, [image], 2, window=6, stride=4, batch_size=3)[0]
  total, count = np.zeros((2, 11, 13)), np.zeros((11, 13))
  for y in (0, 4, 5):  # Starts on an 11-pixel axis: every 4, the last flush with the end.
    for x in (0, 4, 7):
      crop = image[y:y + 6, x:x + 6]
      total[:, y:y + 6, x:x + 6] += _window_scores(crop[None])[0]
      count[y:y + 6, x:x + 6] += 1
  np.testing.assert_allclose(out, total / count, rtol=1e-6)


def test_one_window_covering_the_image_equals_whole_image_inference():
  image = np.random.default_rng(1).integers(0, 255, (6, 5, 3), dtype=np.uint8)
  padded = np.zeros((8, 8, 3), np.uint8)
  padded[:6, :5] = image
  out = windows.slide(_window_scores, [image], 2, window=8, stride=4, batch_size=2)[0]
  np.testing.assert_allclose(out, _window_scores(padded[None])[0][:, :6, :5], rtol=1e-6)


def test_windows_of_several_images_share_batches_without_mixing_them():
  rng = np.random.default_rng(4)
  images = [rng.integers(0, 255, shape, dtype=np.uint8) for shape in ((11, 13, 3), (6, 5, 3), (9, 9, 3))]
  together = windows.slide(_window_scores, images, 2, window=6, stride=4, batch_size=5)
  for image, out in zip(images, together):
    np.testing.assert_allclose(out, windows.slide(_window_scores, [image], 2, window=6, stride=4, batch_size=2)[0],
                               rtol=1e-6)


def test_background_rules_on_constructed_scores():
  scores = np.array([[[0.9, 0.2, 0.4]], [[0.1, 0.3, 0.45]]])  # classes 1 and 2 of a dataset, background 0
  ids = [1, 2]
  threshold = protocols.decide_labels(scores, ids, 0, _protocol(background="threshold"), 0.35)
  np.testing.assert_array_equal(threshold, [[1, 0, 2]])
  constant = protocols.decide_labels(scores, ids, 0, _protocol(background="constant", background_score=0.42), 0.0)
  np.testing.assert_array_equal(constant, [[1, 0, 2]])
  exclude = protocols.decide_labels(scores, ids, 0, _protocol(background="exclude"), 0.99)
  np.testing.assert_array_equal(exclude, [[1, 2, 2]])
  label = np.array([[0, 1, 2]])
  np.testing.assert_array_equal(protocols.labels_for_metrics(label, 0, 255, _protocol(background="exclude")),
                                [[255, 1, 2]])
  np.testing.assert_array_equal(protocols.labels_for_metrics(label, 0, 255, _protocol()), label)
  assert protocols.text_classes(("background", "a", "b"), 0, _protocol()) == [1, 2]
  assert protocols.text_classes(("background", "a"), 0, _protocol(synonyms={"background": ("sky",)})) == [0, 1]


class _Dataset:
  def __init__(self, info, examples):
    self.info, self._examples = info, examples

  def __len__(self):
    return len(self._examples)

  def __iter__(self):
    return iter(self._examples)


class _FixedPredictor:
  """Scores each image as one-hot maps of a fixed label map (dataset ids 0..C-1), in dataset order."""

  def __init__(self, preds, num_classes, batch_size=2):
    self.protocol, self.background_id, self.class_ids = _protocol(batch_size=batch_size), 0, list(range(num_classes))
    self._preds, self._num_classes = iter(preds), num_classes

  def scores(self, images):
    return [np.eye(self._num_classes)[next(self._preds)].transpose(2, 0, 1) for _ in images]

  def labels(self, scores, threshold, hw):
    return windows.WindowPredictor.labels(self, scores, threshold, hw)


def test_seen_unseen_and_ignore_in_dataset_metrics():
  info = DatasetInfo("toy", ("background", "cat", "dog", "cow"), background_class="background",
                     unseen_classes=("cow",))
  rng = np.random.default_rng(2)
  labels = [rng.integers(0, 4, (7, 9)) for _ in range(3)]
  labels[0][0, :4] = 255
  examples = [Example(f"k{i}", np.zeros((7, 9, 3), np.uint8), lab) for i, lab in enumerate(labels)]
  # A predictor that confuses cows with dogs half of the time.
  preds = [np.where((lab == 3) & (rng.random(lab.shape) < 0.5), 2, np.where(lab == 255, 1, lab)).astype(np.int32)
           for lab in labels]
  results = engine.evaluate_dataset(_FixedPredictor(preds, 4), _Dataset(info, examples), 0.0, "fixed")
  confusion = np.zeros((4, 4), np.int64)
  for p, lab in zip(preds, labels):
    keep = lab != 255
    np.add.at(confusion, (lab[keep], p[keep]), 1)
  iou = np.diag(confusion) / (confusion.sum(0) + confusion.sum(1) - np.diag(confusion))
  assert results["miou"] == pytest.approx(iou.mean())
  assert results["object_miou"] == pytest.approx(iou[1:].mean())
  assert results["seen_miou"] == pytest.approx(iou[1:3].mean()) and results["unseen_miou"] == pytest.approx(iou[3])
  s, u = iou[1:3].mean(), iou[3]
  assert results["harmonic_miou"] == pytest.approx(2 * s * u / (s + u))
  assert results["fwiou"] == pytest.approx(metrics.frequency_weighted_iou(confusion))


def test_threshold_chooser_and_baselines_on_constructed_scores():
  info = DatasetInfo("toy", ("background", "cat", "dog"), background_class="background")
  label = np.array([[1, 0], [2, 0]])

  class Scored(_FixedPredictor):  # Best class 1 or 2; the two low-score pixels are background in the label.
    def scores(self, images):
      return [np.stack([np.array([[0.9, 0.2], [0.0, 0.4]]), np.array([[0.0, 0.0], [0.6, 0.1]])]) for _ in images]

  predictor = Scored([], 3)
  predictor.class_ids = [1, 2]
  threshold = engine.choose_threshold(predictor, _Dataset(info, [Example("a", np.zeros((2, 2, 3), np.uint8), label)]))
  assert 0.4 < threshold <= 0.6  # Any threshold in (0.4, 0.6] is perfect.
  baselines = {r["predictor"]: r for r in engine.baseline_rows(_Dataset(info, [Example("a", None, label)]),
                                                                _protocol())}
  assert baselines["all background"]["miou"] == pytest.approx(0.5 / 3)  # background IoU 2/4, others 0.
  assert 0.0 <= baselines["uniform random"]["miou"] <= 1.0 and baselines["uniform random"]["baseline"]


def _bilinear_float64(scores, hw):
  """torch's F.interpolate(bilinear, align_corners=False), pixel by pixel in float64."""
  c, h, w = scores.shape
  out = np.zeros((c, *hw))
  for y in range(hw[0]):
    sy = max((y + 0.5) * h / hw[0] - 0.5, 0.0)
    y0 = min(int(sy), h - 1)
    y1, fy = min(y0 + 1, h - 1), sy - y0
    for x in range(hw[1]):
      sx = max((x + 0.5) * w / hw[1] - 0.5, 0.0)
      x0 = min(int(sx), w - 1)
      x1, fx = min(x0 + 1, w - 1), sx - x0
      out[:, y, x] = ((1 - fy) * ((1 - fx) * scores[:, y0, x0] + fx * scores[:, y0, x1])
                      + fy * ((1 - fx) * scores[:, y1, x0] + fx * scores[:, y1, x1]))
  return out


@pytest.mark.parametrize("hw", [(13, 9), (3, 4), (5, 7)])
def test_scores_are_resized_to_the_label_before_the_decision(hw):
  rng = np.random.default_rng(sum(hw))
  scores = rng.random((3, 5, 7))
  predictor = _FixedPredictor([], 4)
  predictor.class_ids = [1, 2, 3]
  resized = _bilinear_float64(scores, hw)
  np.testing.assert_allclose(windows.resize_scores(scores.astype(np.float32), hw), resized, rtol=1e-5, atol=1e-6)
  expected = np.where(resized.max(0) < 0.6, 0, resized.argmax(0) + 1)
  np.testing.assert_array_equal(predictor.labels(scores.astype(np.float32), 0.6, hw), expected)


def _voc_root(root, ids):
  """A VOC layout of 6 x 8 images whose labels are half background, half aeroplane."""
  for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
    (root / folder).mkdir(parents=True)
  label = np.zeros((6, 8), np.uint8)
  label[:3] = 1
  for i in ids:
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / f"JPEGImages/{i}.jpg")
    Image.fromarray(label, mode="L").save(root / f"SegmentationClass/{i}.png")
  (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
  return root


def _two_voc_entries(first_root, second_root):
  config = eval_suite_config.get_config()
  config.datasets = [eval_suite_config.dataset("voc", 0.95, root=str(first_root)),
                     eval_suite_config.dataset("voc", 0.95, root=str(second_root))]
  config.num_overlays = 0
  return config


class _AllBackground(_FixedPredictor):
  """Every pixel background: no class score reaches the threshold."""

  def __init__(self, info, protocol):
    super().__init__([], info.num_classes)
    self.protocol, self.class_ids = protocol, list(range(1, info.num_classes))
    self.details = {"classifier_note": "a fixed predictor"}

  def scores(self, images):
    return [np.zeros((len(self.class_ids), *x.shape[:2]), np.float32) for x in images]


def test_suite_checks_every_dataset_before_any_model_work(tmp_path):
  made = []
  candidate = engine.Candidate("fixed", lambda info, protocol: made.append(info) or _AllBackground(info, protocol))
  config = _two_voc_entries(_voc_root(tmp_path / "a", ["x1", "x2"]), tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match="voc: ImageSets/Segmentation/val.txt is missing"):
    engine.evaluate_suite(config, [candidate], tmp_path / "out", "t")
  assert not made and not (tmp_path / "out").exists()


def test_suite_writes_each_dataset_as_it_finishes(tmp_path):
  def make(info, protocol):
    if (tmp_path / "out" / "results.json").exists():
      raise RuntimeError("the second dataset fails")
    return _AllBackground(info, protocol)
  config = _two_voc_entries(_voc_root(tmp_path / "a", ["x1", "x2"]), _voc_root(tmp_path / "b", ["y1"]))
  with pytest.raises(RuntimeError, match="second dataset"):
    engine.evaluate_suite(config, [engine.Candidate("fixed", make)], tmp_path / "out", "t")
  saved = json.loads((tmp_path / "out" / "results.json").read_text())
  assert [(r["dataset"], r["num_images"]) for r in saved] == [("voc", 2)]
  assert saved[0]["miou"] == pytest.approx(0.5 / 2)  # background IoU 1/2, aeroplane 0; the rest absent.
  assert saved[0]["classifier_note"] == "a fixed predictor"
  assert "- fixed on voc: a fixed predictor." in (tmp_path / "out" / "results.md").read_text()


def test_published_zero_shot_split_is_the_seen_set_of_the_ensembles():
  config = eval_suite_config.get_config()
  voc_info = DatasetInfo("voc", ("background", "cat", "cow"), background_class="background",
                         unseen_classes=("cow",))
  protocol = engine.dataset_protocol(config, config.datasets[0], voc_info)
  assert protocol.seen_classes == ("cat",)
  no_split = engine.dataset_protocol(config, config.datasets[1], DatasetInfo("c", ("a", "b")))
  assert no_split.seen_classes == ()
  assert [(d.name, d.protocol.background_threshold) for d in config.datasets] == [
      ("voc", 0.95), ("context60", 0.35), ("coco_object", 0.95)]
  without = eval_suite_config.get_config("without_background")
  assert without.protocol.background == "exclude"


def test_prompt_sets():
  assert len(prompts.templates("vild")) == 14 and prompts.templates("single") == ("a photo of a {}.",)
  with pytest.raises(ValueError, match="unknown prompt set 'vlid'"):
    prompts.templates("vlid")
  with pytest.raises(ValueError, match="exactly one"):
    prompts.templates(("a photo.",))


def test_suite_on_a_demo_checkpoint_writes_results_table_and_overlays(demo_workdir, tmp_path):
  config = eval_suite_config.get_config("demo")
  # Three windows per image; a batch of 8 windows is split over the 8 devices of the test session.
  config.protocol.update(short_side=48, window=32, stride=16, batch_size=8)
  results = evaluate.evaluate_checkpoint(config, str(demo_workdir / "checkpoints"), str(tmp_path / "out"))
  saved = json.loads((tmp_path / "out" / "results.json").read_text())
  assert [r["predictor"] for r in saved] == ["S-Seg", "uniform random", "all background"]
  assert saved[0]["dataset"] == "demo" and saved[0]["num_images"] == 16 and results[0]["step"] == 6
  assert 0.0 <= saved[0]["miou"] <= 1.0 and 0.0 <= saved[0]["background_threshold"] <= 1.0
  assert "| demo |" in (tmp_path / "out" / "results.md").read_text()
  assert len(list((tmp_path / "out" / "overlays").glob("demo_S-Seg_*.png"))) == config.num_overlays


def test_suite_refuses_a_directory_without_training_config(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json is missing"):
    evaluate.evaluate_checkpoint(eval_suite_config.get_config("demo"), str(tmp_path))


def test_predict_writes_overlays_for_a_user_vocabulary(demo_workdir, tmp_path, capsys):
  images = tmp_path / "images"
  images.mkdir()
  rng = np.random.default_rng(3)
  for name, size in (("a.jpg", (50, 70)), ("b.png", (64, 64))):
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(images / name)
  (images / "notes.txt").write_text("not an image")
  (images / "c.jpg").write_text("garbage")
  args = SimpleNamespace(classes="minion, tiger,background", image=str(images), checkpoint=str(demo_workdir),
                         output=str(tmp_path / "out"), background="threshold", background_threshold=0.3, scale=1.0,
                         classifier="learned", clip="")
  predict.run(args)  # The unreadable files are skipped and listed; the images are all predicted.
  written = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
  assert written == ["a.png", "b.png"]
  printed = capsys.readouterr().out
  assert printed.count("->") == 2 and "%" in printed
  assert "skipped 2 of 4 files" in printed and "c.jpg is not a readable image" in printed and "notes.txt" in printed
  with pytest.raises(ValueError, match="names no class"):
    predict.parse_classes(" , ")
  with pytest.raises(ValueError, match="c.jpg is not a readable image"):
    predict.run(SimpleNamespace(**{**vars(args), "image": str(images / "c.jpg")}))


def test_predict_reads_16_bit_pngs_scaled_and_refuses_or_downscales_huge_images(tmp_path, monkeypatch):
  from etils import epath
  grey = np.array([[0, 257, 32768, 65535]], np.uint16)
  Image.fromarray(grey).save(tmp_path / "deep.png")
  assert Image.open(tmp_path / "deep.png").mode.startswith("I")
  image, note = predict.read_image(epath.Path(tmp_path / "deep.png"))
  np.testing.assert_array_equal(image[..., 0], [[0, 1, 128, 255]])
  assert image.shape == (1, 4, 3) and (image == image[..., :1]).all() and note == ""

  Image.fromarray(np.zeros((60, 40, 3), np.uint8)).save(tmp_path / "big.png")
  image, note = predict.read_image(epath.Path(tmp_path / "big.png"), max_pixels=600)
  assert image.shape == (30, 20, 3) and note == "downscaled from 40x60 to 20x30 (over 600 pixels)"
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 2,400 pixels: past the limit (an error from 2,000 on).
  with pytest.raises(ValueError, match="big.png is past Pillow's decompression limit of 1,000 pixels"):
    predict.read_image(epath.Path(tmp_path / "big.png"))


def test_classes_take_synonyms_and_a_limit():
  names, synonyms = predict.parse_classes("cat, sofa | couch|settee ,, background|grass")
  assert names == ("cat", "sofa", "background")
  assert synonyms == {"sofa": ("sofa", "couch", "settee"), "background": ("background", "grass")}
  with pytest.raises(ValueError, match="names 3 classes; give at most 2"):
    predict.parse_classes("a, b, c", max_classes=2)
  with pytest.raises(ValueError, match="names a class twice"):
    predict.parse_classes("a|b, a")


def test_class_areas_sum_to_one():
  areas = predict.class_areas(np.array([[0, 1, 1, 2]]), ("a", "b", "c"))
  assert list(areas) == ["b", "a", "c"] and sum(areas.values()) == pytest.approx(1.0)


def test_flags_are_not_defined_by_importing_the_modules():
  assert "checkpoint" not in flags.FLAGS  # Defined only when run as commands, so entry points do not clash.


@pytest.mark.slow  # A long end-to-end check: `python -m pytest -q -m slow`.
def test_every_classifier_on_the_demo_checkpoint_with_a_random_small_clip(demo_workdir, tmp_path):
  import jax
  import jax.numpy as jnp
  from ovseg_jax.eval import classify
  from ovseg_jax.models.clip import CLIP, ClipArchitecture
  arch = ClipArchitecture(embed_dim=16, image_size=16, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2,
                          context_length=77, vocab_size=49408, text_width=32, text_layers=1, text_heads=2)
  module = CLIP(arch)
  params = module.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 77), jnp.int32))["params"]
  clip = ClipSetup(module, params, crop_size=16, seen_classes=("circle", "square"))
  config = eval_suite_config.get_config("demo")
  # Threshold 0: background never wins, so every pixel shows the classifier's choice.
  config.protocol.update(short_side=32, window=32, stride=32, batch_size=4, background_threshold=0.0)
  config.classifiers = tuple(classify.classifier_names())
  config.num_overlays, config.baselines = 1, False
  results = evaluate.evaluate_checkpoint(config, str(demo_workdir), str(tmp_path / "out"), clip=clip)
  names = ["S-Seg" if c == "learned" else f"S-Seg ({c})" for c in config.classifiers]
  assert [r["predictor"] for r in results] == names
  assert all(0.0 <= r["miou"] <= 1.0 for r in results)
  per_class = {r["predictor"]: tuple(r["per_class_iou"].values()) for r in results}
  assert len(set(per_class.values())) > 1  # The classifiers really decide differently.
  table = (tmp_path / "out" / "results.md").read_text()
  assert all(f"| {name} |" in table for name in names)
  with pytest.raises(ValueError, match="needs a CLIP"):
    open_vocabulary_predictor(None, None, ("a",), None, _protocol(background="none"), 8, "clip_crop")
