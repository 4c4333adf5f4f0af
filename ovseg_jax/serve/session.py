"""What the demo page asks of the models: one request (an image, a vocabulary, a classifier) segmented by every
restored checkpoint, answered as overlays, legends and class shares; the demo's held-out scenes as examples.

Requests run one at a time (one model forward at a time is all a CPU can serve well) through
`predict.RestoredModel`, the path `python -m ovseg_jax.predict` takes.
"""
from __future__ import annotations

import base64
import dataclasses
import io
import itertools
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from data_pipelines import eval_datasets
from data_pipelines.eval_datasets import Example
from ovseg_jax import predict
from ovseg_jax.eval import engine, visualize

MAX_CLASSES = 40  # Beyond this the legend and the palette's colours stop being readable.
OVERLAY_ALPHA = 0.55


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one request may hold: bytes of an upload, pixels before an image is downscaled, classes. Labels are
  decided from class scores resized to the image (float32, one map per class), so 1024 x 1024 keeps a request with
  every class under 200 MB; the model sees the image at its protocol's size anyway."""
  upload_bytes: int = 32 << 20
  pixels: int = 1 << 20
  classes: int = MAX_CLASSES


def png_bytes(image: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(image).save(out, format="PNG")
  return out.getvalue()


def data_url(image: np.ndarray) -> str:
  return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def held_out_examples(model: predict.RestoredModel, count: int) -> tuple[list[Example], str]:
  """The first `count` held-out scenes of a demo-trained model (none for other data) and a suggested vocabulary:
  the demo's classes, background with the scene words its protocol gives it."""
  roots = engine.training_data_roots(model.train_config)
  if "demo" not in roots or count <= 0:
    return [], ""
  dataset = eval_datasets.load("demo", roots["demo"], "eval")
  examples = list(itertools.islice(dataset, count))
  synonyms = dict(model.train_config.eval.protocol.get("synonyms", {}))
  names = ["|".join(synonyms.get(name, (name,))) for name in dataset.info.class_names]
  return examples, ", ".join(names)


def legend(labels: np.ndarray, class_names: Sequence[str], palette: np.ndarray) -> list[dict[str, Any]]:
  """Every class of the request with its colour and share of the image, largest share first."""
  areas = predict.class_areas(labels, tuple(class_names))
  entries = [{"name": name, "color": "#%02x%02x%02x" % tuple(palette[i].tolist()), "share": areas.get(name, 0.0)}
             for i, name in enumerate(class_names)]
  return sorted(entries, key=lambda e: -e["share"])


class Session:
  """The restored models, the examples, and the one-at-a-time segmentation of the page's requests."""

  def __init__(self, models: Sequence[predict.RestoredModel], scale: float = 2.0, num_examples: int = 8,
               limits: Limits = Limits()):
    if not models:
      raise ValueError("no checkpoint: give --checkpoint=WORKDIR (once per model to compare).")
    self.models, self.scale, self.limits = list(models), scale, limits
    self.names = self._model_names()
    for model in self.models:  # The first demo-trained model's scenes.
      self.examples, self.suggested_classes = held_out_examples(model, num_examples)
      if self.examples:
        break
    self.example_pngs = [png_bytes(e.image) for e in self.examples]
    # The classifiers every model offers, in the first model's order.
    self.classifiers = [c for c in self.models[0].classifiers if all(c in m.classifiers for m in self.models)]
    self._lock = threading.Lock()

  def _model_names(self) -> list[str]:
    short = [m.workdir.name for m in self.models]
    labels = [str(m.workdir) if short.count(s) > 1 else s for m, s in zip(self.models, short)]
    return [f"{label} (step {m.step})" for label, m in zip(labels, self.models)]

  def image(self, upload: bytes | None, example: str | None, filename: str = "the upload") -> tuple[np.ndarray, str]:
    """The request's image: an upload's bytes, else the example of that index."""
    if upload:
      return predict.decode_image(io.BytesIO(upload), filename, self.limits.pixels)
    if example is None or example == "":
      raise ValueError("no image: upload one or pick an example.")
    if not example.isdigit() or int(example) >= len(self.examples):
      raise ValueError(f"no example {example!r}: pick one of the {len(self.examples)} shown.")
    return self.examples[int(example)].image, ""

  def segment(self, image: np.ndarray, classes: str, classifier: str, threshold: float,
              note: str = "") -> dict[str, Any]:
    """Every model's overlay (data URL, the image's size), legend and time for one image and vocabulary."""
    class_names, synonyms = predict.parse_classes(classes, self.limits.classes)
    if classifier not in self.classifiers:
      raise ValueError(f"unknown classifier {classifier!r}: use one of {self.classifiers}.")
    if not 0.0 <= threshold <= 1.0:
      raise ValueError(f"background threshold {threshold} is outside [0, 1].")
    background = class_names.index(visualize.BACKGROUND) if visualize.BACKGROUND in class_names else None
    palette = visualize.class_palette(len(class_names), background)
    results = []
    with self._lock:
      for name, model in zip(self.names, self.models):
        start = time.perf_counter()
        predictor = model.predictor(class_names, synonyms, classifier, "threshold", threshold, self.scale)
        labels = predictor.predict(image, threshold)
        overlay = visualize.blend_labels(image, labels, palette, OVERLAY_ALPHA)
        results.append({"model": name, "overlay": data_url(overlay), "legend": legend(labels, class_names, palette),
                        "seconds": round(time.perf_counter() - start, 3)})
    return {"width": image.shape[1], "height": image.shape[0], "note": note, "image": data_url(image),
            "results": results}
