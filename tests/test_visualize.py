"""Overlay pictures (exact pixel colours, layout, legend) and markdown tables."""
import numpy as np
import pytest
from PIL import Image

from ovseg_jax.eval import tables, visualize

NAMES = ["background", "cat", "dog", "car", "tree"]


def _find(canvas: np.ndarray, panel: np.ndarray) -> list[tuple[int, int]]:
  """Top-left corners where `panel` appears verbatim in `canvas`."""
  h, w = panel.shape[:2]
  hits = []
  for y, x in np.argwhere((canvas == panel[0, 0]).all(-1)):
    if y + h <= canvas.shape[0] and x + w <= canvas.shape[1] and (canvas[y:y + h, x:x + w] == panel).all():
      hits.append((int(y), int(x)))
  return hits


def _upscale(a, s):
  return np.kron(a, np.ones((s, s, 1), a.dtype))


@pytest.fixture
def example():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
  pred = rng.choice([0, 1, 2], (16, 20))  # "car" and "tree" never predicted.
  label = rng.choice([0, 1, 3], (16, 20))  # "dog" and "tree" never labelled.
  label[:4, :5] = 255
  return image, pred, label


def test_class_palette():
  palette = visualize.class_palette(20, background_index=0)
  assert palette.shape == (20, 3) and palette.dtype == np.uint8
  assert (palette[0] == 0).all()
  distances = np.abs(palette[:, None].astype(int) - palette[None].astype(int)).sum(-1)
  np.fill_diagonal(distances, 10**6)
  assert distances.min() > 30  # Every pair of classes tells apart.
  assert (palette[1:].max(1) > 100).all() and (palette[1:].min(1) < 200).all()  # Neither black nor white.
  np.testing.assert_array_equal(palette, visualize.class_palette(20, background_index=0))
  assert (visualize.class_palette(5, background_index=None).max(1) > 100).all()
  with pytest.raises(ValueError, match="background_index"):
    visualize.class_palette(3, background_index=3)


def test_overlay_panels_hold_exact_blended_colours(example):
  image, pred, label = example
  alpha = 0.55
  out = np.asarray(visualize.overlay_panel(image, pred, label, NAMES, alpha=alpha))
  palette = visualize.class_palette(len(NAMES), background_index=0)
  scale = 12  # ceil(192 / 16): the short side reaches the minimum display size.
  expected_pred = np.rint((1 - alpha) * image + alpha * palette[pred].astype(np.float64)).astype(np.uint8)
  expected_label = np.rint((1 - alpha) * image + alpha * palette[np.where(label == 255, 0, label)]).astype(np.uint8)
  expected_label[label == 255] = 255
  found = [_find(out, _upscale(panel, scale)) for panel in (image, expected_pred, expected_label)]
  assert all(len(hits) == 1 for hits in found), found
  (y0, x0), (y1, x1), (y2, x2) = (hits[0] for hits in found)
  assert y0 == y1 == y2 > 0  # Titles above.
  assert x0 < x1 < x2 and x1 - x0 == x2 - x1 >= 20 * scale  # Side by side, equal strides.
  assert out.shape[0] > y0 + 16 * scale  # Legend below.

  two = np.asarray(visualize.overlay_panel(image, pred, None, NAMES, alpha=alpha, scale=2))
  assert len(_find(two, _upscale(expected_pred, 2))) == 1 and two.shape[1] < 3 * 40


def test_legend_lists_only_present_classes(example):
  image, pred, label = example
  assert visualize.legend_entries(pred, label, NAMES) == [(0, "background"), (1, "cat"), (2, "dog"), (3, "car")]
  assert visualize.legend_entries(pred, None, NAMES) == [(0, "background"), (1, "cat"), (2, "dog")]
  out = np.asarray(visualize.overlay_panel(image, pred, label, NAMES))
  palette = visualize.class_palette(len(NAMES), background_index=0)
  drawn = lambda c: (out == palette[c]).all(-1).any()  # Swatches carry the pure palette colour.
  assert all(drawn(c) for c in (1, 2, 3)) and not drawn(4)


def test_legend_wraps_over_rows(example):
  image, _, _ = example
  many = [f"long class name {i}" for i in range(12)]
  one_row = visualize.overlay_panel(image, np.zeros((16, 20), int), None, many)
  wrapped = visualize.overlay_panel(image, np.arange(320).reshape(16, 20) % 12, None, many)
  assert wrapped.width == one_row.width and wrapped.height > one_row.height


def test_overlay_rejects_bad_input(example):
  image, pred, label = example
  with pytest.raises(ValueError, match="prediction holds class id 7"):
    visualize.overlay_panel(image, np.full_like(pred, 7), label, NAMES)
  with pytest.raises(ValueError, match="ground truth has shape"):
    visualize.overlay_panel(image, pred, label[:, :3], NAMES)
  with pytest.raises(ValueError, match="uint8"):
    visualize.overlay_panel(image.astype(np.float32), pred, label, NAMES)


def test_save_overlays(example, tmp_path):
  image, pred, label = example
  paths = visualize.save_overlays(tmp_path / "overlays", np.stack([image] * 3), np.stack([pred] * 3),
                                  np.stack([label] * 3), NAMES, prefix="eval", max_images=2)
  assert [p.name for p in paths] == ["eval_0000.png", "eval_0001.png"]
  assert Image.open(paths[0]).size[0] >= 3 * 240


def test_markdown_tables():
  rows = [{"predictor": "trained", "mIoU": 0.51234, "n": 3}, {"predictor": "a|b", "mIoU": float("nan"), "n": 10}]
  assert tables.markdown_table(rows, ["predictor", "mIoU", "n"]) == (
      "| predictor | mIoU | n |\n"
      "|---|---:|---:|\n"
      "| trained | 0.512 | 3 |\n"
      "| a\\|b | n/a | 10 |")
  with pytest.raises(ValueError, match="column"):
    tables.markdown_table(rows, ["predictor", "pixel acc"])
  assert tables.per_class_table(np.array([0.25, np.nan]), ["sky", "cat"]) == (
      "| id | class | IoU |\n"
      "|---:|---|---:|\n"
      "| 0 | sky | 0.250 |\n"
      "| 1 | cat | n/a |")


def test_blending_a_large_image_is_exact_and_needs_little_float_memory(monkeypatch):
  import tracemalloc
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (1500, 1000, 3), dtype=np.uint8)
  labels = rng.choice([0, 1, 2, 255], (1500, 1000))
  palette = visualize.class_palette(3)
  expected = np.rint((1 - 0.55) * image + 0.55 * palette[np.where(labels == 255, 0, labels)].astype(np.float64))
  expected = expected.astype(np.uint8)
  expected[labels == 255] = 255
  tracemalloc.start()
  blended = visualize.blend_labels(image, labels, palette, 0.55)
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  np.testing.assert_array_equal(blended, expected)
  # The uint8 result is 4.5 MB; blending the whole image in float64 at once would take over 100 MB.
  assert peak < 6 * image.nbytes, peak
