r"""Segment your own images with your own words.

  python -m ovseg_jax.predict --checkpoint=/tmp/sseg_demo --image=photo.jpg \
      --classes="minion,tiger,background" --output=out.png
  python -m ovseg_jax.predict --checkpoint=/tmp/sseg_demo --image=photos/ --classes=... --output=out_dir/

Each image is resized so its short side is the model's training size times `--scale`, segmented with sliding
windows of the training size, and written as an overlay with a legend; the share of the image each class
covers is printed. A class named "background" wins where no other class scores above `--background_threshold`
(or is embedded like any class with `--background=class`); `sofa|couch` names a class by several words, whose
probabilities it sums. With `--clip=ViT-B-16.pt --classifier=ensemble:ovseg_voc`
the masks are also classified by CLIP and the scores ensembled.

In a folder, files that are not readable images are skipped and listed at the end. 16-bit images are scaled to 8
bits; images past Pillow's decompression limit (`PIL.Image.MAX_IMAGE_PIXELS`) are refused, and images over
MAX_PIXELS are downscaled first (with a message). Paths may be local or gs://.
"""
from __future__ import annotations

import collections
import warnings
from typing import BinaryIO

import ml_collections
import numpy as np
from absl import flags
from etils import epath
from PIL import Image, UnidentifiedImageError

from data_pipelines.eval_datasets.base import DatasetInfo
from ovseg_jax.eval import classify, engine, prompts, visualize
from ovseg_jax.eval.open_vocabulary import ClipSetup, load_clip_setup
from ovseg_jax.eval.protocol import Protocol
from ovseg_jax.eval.windows import WindowPredictor
from ovseg_jax.train import workdir as workdirs

MAX_PIXELS = 4096 * 4096  # Larger images are downscaled: per-class scores at full size would take GBs.


def parse_classes(text: str, max_classes: int | None = None) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
  """(class names, synonyms) from e.g. 'cat, sofa|couch, background': comma-separated classes, each named by its
  first name; '|' adds names embedded beside it (the class scores the sum of its names' probabilities)."""
  entries = [tuple(n.strip() for n in entry.split("|") if n.strip()) for entry in text.split(",")]
  entries = [e for e in entries if e]
  if not entries:
    raise ValueError(f"the class list {text!r} names no class: give comma-separated names, e.g. "
                     "'cat, dog, background'.")
  if max_classes is not None and len(entries) > max_classes:
    raise ValueError(f"the class list names {len(entries)} classes; give at most {max_classes}.")
  names = tuple(e[0] for e in entries)
  if len(set(names)) != len(names):
    raise ValueError(f"the class list names a class twice: {names}.")
  return names, {e[0]: e for e in entries if len(e) > 1}


def image_paths(path: epath.Path) -> list[epath.Path]:
  """The file itself, or every (non-hidden) file of a folder; which are images is found by reading them."""
  if path.is_dir():
    found = sorted(p for p in path.iterdir() if not p.name.startswith(".") and not p.is_dir())
    if not found:
      raise FileNotFoundError(f"{path} holds no file.")
    return found
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such image file or directory.")
  return [path]


def _to_rgb(image: Image.Image) -> np.ndarray:
  """uint8 RGB; 16-bit grey values (PNG) scaled by 255 / 65535 rather than clipped to white."""
  if image.mode.startswith("I;16") or image.mode == "I":
    grey = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16") or grey.max() > 255:
      grey = np.rint(np.clip(grey, 0, 65535) * (255 / 65535))
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)
  return np.asarray(image.convert("RGB"))


def decode_image(data: BinaryIO, name: str, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str]:
  """(uint8 RGB [H, W, 3], a note: '' or how it was downscaled) of an image file's bytes; ValueError naming it if
  it is not a readable image or is past Pillow's decompression limit."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(data) as image:
        note = ""
        if image.width * image.height > max_pixels:
          factor = (image.width * image.height / max_pixels) ** 0.5
          size = (max(1, int(image.width / factor)), max(1, int(image.height / factor)))
          note = f"downscaled from {image.width}x{image.height} to {size[0]}x{size[1]} (over {max_pixels:,} pixels)"
          image = image.resize(size, Image.Resampling.BOX)
        return _to_rgb(image), note
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise ValueError(f"{name} is past Pillow's decompression limit of {Image.MAX_IMAGE_PIXELS:,} pixels ({e}); "
                     "downscale it first.") from None
  except UnidentifiedImageError:
    raise ValueError(f"{name} is not a readable image (not an image format Pillow knows); give a JPEG or PNG "
                     "file.") from None
  except (OSError, SyntaxError) as e:
    raise ValueError(f"{name} is not a readable image ({e}); give a JPEG or PNG file.") from None


def read_image(path: epath.Path, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str]:
  """`decode_image` of a local or gs:// file."""
  with path.open("rb") as f:
    return decode_image(f, str(path), max_pixels)


def class_areas(labels: np.ndarray, class_names: tuple[str, ...]) -> dict[str, float]:
  """Share of the pixels of each predicted class, largest first."""
  counts = np.bincount(labels.reshape(-1), minlength=len(class_names)) / labels.size
  return {class_names[i]: float(counts[i]) for i in np.argsort(-counts) if counts[i] > 0}


def make_predictor(candidate: engine.Candidate, train_config: ml_collections.ConfigDict,
                   class_names: tuple[str, ...], synonyms: dict[str, tuple[str, ...]], background: str,
                   threshold: float, scale: float) -> WindowPredictor:
  """The candidate's predictor over the user's classes: short side `scale` training sizes, windows of the
  training size at half-window stride, "background" by the threshold unless `background='class'`."""
  size = train_config.data.image_size
  background_class = "background" if "background" in class_names and background != "class" else None
  info = DatasetInfo(name="predict", class_names=class_names, background_class=background_class)
  protocol = Protocol(short_side=round(size * scale), window=size, stride=size // 2,
                      templates=prompts.templates("single"),
                      background="threshold" if background_class else "none", background_threshold=threshold,
                      background_score=0.0, decode=train_config.eval.protocol.decode, batch_size=8, synonyms=synonyms)
  return candidate.make(info, protocol)


class RestoredModel:
  """The latest checkpoint of an open-vocabulary training workdir, segmenting images for any vocabulary with any
  classifier it offers. The predictors of the last few requests (text embeddings, compiled scorers) are kept, and
  windows of one size make one compiled program for every image size, so a repeated request is fast."""

  def __init__(self, checkpoint: str, clip: ClipSetup | None = None, keep: int = 4):
    from ovseg_jax.methods import registry
    self.workdir = workdirs.as_workdir(checkpoint)
    self.train_config = workdirs.read_config(self.workdir)
    self.method = registry.open_vocabulary(self.train_config, str(self.workdir))
    self.model, self.params, self.step = self.method.restore_model(self.train_config, self.workdir)
    self.clip, self.keep = clip, keep
    self._predictors: collections.OrderedDict[tuple, WindowPredictor] = collections.OrderedDict()

  @property
  def classifiers(self) -> list[str]:
    """The classifiers this model offers: its own, and with a CLIP the CLIP ones and ensembles."""
    return classify.classifier_names() if self.clip else ["learned"]

  def predictor(self, class_names: tuple[str, ...], synonyms: dict[str, tuple[str, ...]], classifier: str,
                background: str = "threshold", threshold: float = 0.5, scale: float = 2.0) -> WindowPredictor:
    """The predictor for these classes (`make_predictor`), kept for the next requests that ask for it."""
    if classifier not in self.classifiers:
      raise ValueError(f"unknown classifier {classifier!r} for {self.workdir}: use one of {self.classifiers}"
                       f"{'' if self.clip else ' (the others need a CLIP checkpoint, --clip)'}.")
    key = (class_names, tuple(sorted(synonyms.items())), classifier, background, threshold, scale)
    if key not in self._predictors:
      candidate = self.method.candidates(self.model, self.params, self.train_config, (classifier,), self.clip)[0]
      self._predictors[key] = make_predictor(candidate, self.train_config, class_names, synonyms, background,
                                             threshold, scale)
      while len(self._predictors) > self.keep:
        self._predictors.popitem(last=False)
    self._predictors.move_to_end(key)
    return self._predictors[key]


def main(argv: list[str]) -> None:
  del argv
  try:
    run(flags.FLAGS)
  except (ValueError, FileNotFoundError) as e:  # Bad input: one clear line, no traceback.
    raise SystemExit(f"error: {e}") from None


def run(f: flags.FlagValues) -> None:
  class_names, synonyms = parse_classes(f.classes)
  paths = image_paths(epath.Path(f.image).expanduser())
  model = RestoredModel(f.checkpoint, load_clip_setup(ml_collections.ConfigDict({"checkpoint": f.clip})))
  predictor = model.predictor(class_names, synonyms, f.classifier, f.background, f.background_threshold, f.scale)
  output = epath.Path(f.output).expanduser()
  many = len(paths) > 1 or output.suffix == ""
  if many:
    output.mkdir(parents=True, exist_ok=True)
  skipped = []
  for path in paths:
    try:
      image, note = read_image(path)
    except ValueError as e:
      if len(paths) == 1:
        raise
      skipped.append(str(e))
      continue
    labels = predictor.predict(image, f.background_threshold)
    target = output / f"{path.stem}.png" if many else output
    target.parent.mkdir(parents=True, exist_ok=True)
    visualize.save_png(visualize.overlay_panel(image, labels, None, list(class_names)), target)
    areas = ", ".join(f"{name} {share:.1%}" for name, share in class_areas(labels, class_names).items())
    print(f"{path} -> {target}: {areas}{f' ({note})' if note else ''}", flush=True)
  if skipped:
    print(f"skipped {len(skipped)} of {len(paths)} files:\n  " + "\n  ".join(skipped), flush=True)
    if len(skipped) == len(paths):
      raise ValueError(f"no readable image in {f.image} (the files skipped are listed above).")


if __name__ == "__main__":
  from ovseg_jax import cli
  flags.DEFINE_string("checkpoint", None, "Training workdir (with config.json and checkpoints/).")
  flags.DEFINE_string("image", None, "An image file or a directory of images.")
  flags.DEFINE_string("classes", None, "Comma-separated class names, e.g. 'minion,tiger,sofa|couch,background' "
                      "('|' adds synonyms of a class).")
  flags.DEFINE_string("output", None, "Output PNG (one image) or directory.")
  flags.DEFINE_float("background_threshold", 0.5, "Pixels whose best class scores below this are background.")
  flags.DEFINE_enum("background", "threshold", ["threshold", "class"],
                    "'threshold': background wins below the threshold; 'class': embed it like any class.")
  flags.DEFINE_float("scale", 2.0, "Short side of the resized image, in training image sizes.")
  flags.DEFINE_string("classifier", "learned", "learned, clip_crop, clip_dense or ensemble:NAME (needs --clip).")
  flags.DEFINE_string("clip", "", "CLIP checkpoint (OpenAI .pt, open_clip file or Hugging Face directory).")
  cli.run(main, required=("checkpoint", "image", "classes", "output"))
