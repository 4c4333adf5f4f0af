"""Pictures and tables of segmentation results: class palettes, image | prediction | ground-truth overlays with a
legend. Plain numpy + PIL (etils for gs:// outputs), so it runs anywhere results are looked at."""
from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from etils import epath
from PIL import Image, ImageDraw, ImageFont

MIN_PANEL_SIZE = 192  # Shortest panel side in pixels: small (e.g. 64x64) inputs are upscaled to stay readable.
IGNORE_COLOR = (255, 255, 255)
BACKGROUND = "background"
_MARGIN, _GAP, _SWATCH = 8, 8, 12
_BLEND_PIXELS = 1 << 18  # Pixels per band of `blend_labels`.
_TEXT, _SWATCH_OUTLINE = (0, 0, 0), (96, 96, 96)


def class_palette(num_classes: int, background_index: int | None = 0) -> np.ndarray:
  """Distinct deterministic colours, uint8 [C, 3]; the background class (if any) is black.

  Hues step by the golden ratio so neighbouring ids differ strongly; saturation and value stay high so no
  class looks like black background or white ignore pixels.
  """
  if background_index is not None and not 0 <= background_index < num_classes:
    raise ValueError(f"class_palette: background_index {background_index} is outside [0, {num_classes}); "
                     "pass None when there is no background class.")
  golden = (math.sqrt(5) - 1) / 2
  palette = np.array([colorsys.hsv_to_rgb((i * golden) % 1.0, 0.95 - 0.3 * (i // 2 % 2), 0.95 - 0.25 * (i % 2))
                      for i in range(num_classes)]).reshape(num_classes, 3)
  palette = np.rint(palette * 255).astype(np.uint8)
  if background_index is not None:
    palette[background_index] = 0
  return palette


def _check_label_map(name: str, labels: np.ndarray, image_shape: tuple[int, ...], num_classes: int,
                     ignore_index: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.shape != image_shape[:2]:
    raise ValueError(f"{name} has shape {labels.shape} but the image is {image_shape[:2]}; resize it to the image.")
  bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
  if bad.any():
    raise ValueError(f"{name} holds class id {labels[bad][0]} outside [0, {num_classes}) that is not the ignore "
                     f"index {ignore_index}; pass one class name per id.")
  return labels


def blend_labels(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float,
                 ignore_index: int = 255) -> np.ndarray:
  """(1 - alpha) * image + alpha * class colour per pixel, uint8 [H, W, 3]; ignore pixels are white.

  Blended in bands of rows, so a large photo needs a few MB of float64 beside its uint8 result, not several GB.
  """
  blended = np.empty(image.shape, np.uint8)
  rows = max(1, _BLEND_PIXELS // max(1, image.shape[1]))
  for top in range(0, image.shape[0], rows):
    band = labels[top:top + rows]
    colors = palette[np.where(band == ignore_index, 0, band)].astype(np.float64)
    blended[top:top + rows] = np.rint((1 - alpha) * image[top:top + rows].astype(np.float64) + alpha * colors)
    blended[top:top + rows][band == ignore_index] = IGNORE_COLOR
  return blended


def legend_entries(pred: np.ndarray, label: np.ndarray | None, class_names: Sequence[str],
                   ignore_index: int = 255) -> list[tuple[int, str]]:
  """(id, name) of the classes present in the prediction or the label, by id."""
  present = set(np.unique(pred).tolist())
  if label is not None:
    present |= set(np.unique(label).tolist())
  present.discard(ignore_index)
  return [(i, class_names[i]) for i in sorted(present)]


def _legend_layout(draw: ImageDraw.ImageDraw, font: Any, entries: list[tuple[int, str]],
                   width: int) -> list[tuple[int, int, int, str]]:
  """(x, row, id, name) per entry, flowing left to right and wrapping within `width`."""
  placed, x, row = [], _MARGIN, 0
  for class_id, name in entries:
    entry_width = _SWATCH + 4 + math.ceil(draw.textlength(name, font=font)) + 12
    if x > _MARGIN and x + entry_width > width - _MARGIN:
      x, row = _MARGIN, row + 1
    placed.append((x, row, class_id, name))
    x += entry_width
  return placed


def overlay_panel(image: np.ndarray, pred: np.ndarray, label: np.ndarray | None, class_names: Sequence[str],
                  ignore_index: int = 255, alpha: float = 0.55, scale: int | None = None) -> Image.Image:
  """`image | prediction | ground truth` side by side (without the last if `label` is None), class colours
  blended over the image, titles above and a legend of the classes present below.

  `scale` (nearest-neighbour upscaling) defaults to the smallest integer giving panels of MIN_PANEL_SIZE.
  The palette is `class_palette` with the class named "background" (if any) in black.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"overlay_panel: image must be uint8 [H, W, 3], got {image.dtype} {image.shape}.")
  names = list(class_names)
  pred = _check_label_map("prediction", pred, image.shape, len(names), ignore_index)
  palette = class_palette(len(names), names.index(BACKGROUND) if BACKGROUND in names else None)
  panels = [("image", image), ("prediction", blend_labels(image, pred, palette, alpha, ignore_index))]
  if label is not None:
    label = _check_label_map("ground truth", label, image.shape, len(names), ignore_index)
    panels.append(("ground truth", blend_labels(image, label, palette, alpha, ignore_index)))
  height, width = image.shape[:2]
  scale = scale or max(1, math.ceil(MIN_PANEL_SIZE / min(height, width)))

  font = ImageFont.load_default()
  measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  line_height = measure.textbbox((0, 0), "Ag", font=font)[3] + 2
  row_height = max(_SWATCH, line_height) + 4
  panel_w, panel_h = width * scale, height * scale
  canvas_w = 2 * _MARGIN + len(panels) * panel_w + (len(panels) - 1) * _GAP
  legend = _legend_layout(measure, font, legend_entries(pred, label, names, ignore_index), canvas_w)
  panel_top = _MARGIN + line_height + 4
  legend_top = panel_top + panel_h + _GAP
  num_rows = legend[-1][1] + 1 if legend else 0
  canvas = Image.new("RGB", (canvas_w, legend_top + num_rows * row_height + _MARGIN), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for k, (title, pixels) in enumerate(panels):
    left = _MARGIN + k * (panel_w + _GAP)
    canvas.paste(Image.fromarray(pixels.repeat(scale, 0).repeat(scale, 1)), (left, panel_top))
    draw.text((left, _MARGIN), title, fill=_TEXT, font=font)
  for x, row, class_id, name in legend:
    y = legend_top + row * row_height
    draw.rectangle([x, y, x + _SWATCH - 1, y + _SWATCH - 1], fill=tuple(palette[class_id].tolist()),
                   outline=_SWATCH_OUTLINE)
    draw.text((x + _SWATCH + 4, y), name, fill=_TEXT, font=font)
  return canvas


def save_png(picture: Image.Image, path: str | Path) -> epath.Path:
  """Writes a PNG to a local path or a gs:// URI."""
  path = epath.Path(path)
  with path.open("wb") as f:
    picture.save(f, format="PNG")
  return path


def save_overlays(out_dir: str | Path, images: np.ndarray, preds: np.ndarray, labels: np.ndarray | None,
                  class_names: Sequence[str], prefix: str = "overlay", max_images: int = 8) -> list[epath.Path]:
  """Writes `overlay_panel` PNGs of the first `max_images` images to `out_dir/{prefix}_{i:04d}.png` (local or
  gs://)."""
  if len(images) != len(preds) or (labels is not None and len(labels) != len(images)):
    raise ValueError(f"save_overlays: {len(images)} images, {len(preds)} predictions and "
                     f"{'no' if labels is None else len(labels)} labels; pass one of each per image.")
  out_dir = epath.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  return [save_png(overlay_panel(images[i], preds[i], None if labels is None else labels[i], class_names),
                   out_dir / f"{prefix}_{i:04d}.png") for i in range(min(len(images), max_images))]
