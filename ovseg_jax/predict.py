r"""Segment your own images with your own words.

  python -m ovseg_jax.predict --checkpoint=/tmp/sseg_demo --image=photo.jpg \
      --classes="minion,tiger,background" --output=out.png
  python -m ovseg_jax.predict --checkpoint=/tmp/sseg_demo --image=photos/ --classes=... --output=out_dir/

Each image is resized so its short side is the model's training size times `--scale`, segmented with sliding
windows of the training size, and written as an overlay with a legend; the share of the image each class
covers is printed. A class named "background" wins where no other class scores above `--background_threshold`
(or is embedded like any class with `--background=class`). With `--clip=ViT-B-16.pt --classifier=ensemble:ovseg_voc`
the masks are also classified by CLIP and the scores ensembled.

In a folder, files that are not readable images are skipped and listed at the end. 16-bit images are scaled to 8
bits; images past Pillow's decompression limit (`PIL.Image.MAX_IMAGE_PIXELS`) are refused, and images over
MAX_PIXELS are downscaled first (with a message). Paths may be local or gs://.
"""
from __future__ import annotations

import warnings

import ml_collections
import numpy as np
from absl import flags
from etils import epath
from PIL import Image, UnidentifiedImageError

from data_pipelines.eval_datasets.base import DatasetInfo
from ovseg_jax.eval import engine, prompts, visualize
from ovseg_jax.eval.open_vocabulary import load_clip_setup
from ovseg_jax.eval.protocol import Protocol
from ovseg_jax.eval.windows import WindowPredictor
from ovseg_jax.train import workdir as workdirs

MAX_PIXELS = 4096 * 4096  # Larger images are downscaled: per-class scores at full size would take GBs.


def parse_classes(text: str) -> tuple[str, ...]:
  names = tuple(n.strip() for n in text.split(",") if n.strip())
  if not names:
    raise ValueError(f"--classes={text!r} names no class: give comma-separated names, e.g. "
                     "--classes='cat,dog,background'.")
  if len(set(names)) != len(names):
    raise ValueError(f"--classes lists a name twice: {names}.")
  return names


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


def read_image(path: epath.Path, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str]:
  """(uint8 RGB [H, W, 3], a note: '' or how it was downscaled); ValueError naming the file if it is not a
  readable image or is past Pillow's decompression limit."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with path.open("rb") as f, Image.open(f) as image:
        note = ""
        if image.width * image.height > max_pixels:
          factor = (image.width * image.height / max_pixels) ** 0.5
          size = (max(1, int(image.width / factor)), max(1, int(image.height / factor)))
          note = f"downscaled from {image.width}x{image.height} to {size[0]}x{size[1]} (over {max_pixels:,} pixels)"
          image = image.resize(size, Image.Resampling.BOX)
        return _to_rgb(image), note
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise ValueError(f"{path} is past Pillow's decompression limit of {Image.MAX_IMAGE_PIXELS:,} pixels ({e}); "
                     "downscale it first.") from None
  except (UnidentifiedImageError, OSError, SyntaxError) as e:
    raise ValueError(f"{path} is not a readable image ({e}); give a JPEG or PNG file.") from None


def class_areas(labels: np.ndarray, class_names: tuple[str, ...]) -> dict[str, float]:
  """Share of the pixels of each predicted class, largest first."""
  counts = np.bincount(labels.reshape(-1), minlength=len(class_names)) / labels.size
  return {class_names[i]: float(counts[i]) for i in np.argsort(-counts) if counts[i] > 0}


def make_predictor(candidate: engine.Candidate, train_config: ml_collections.ConfigDict,
                   class_names: tuple[str, ...], background: str, threshold: float, scale: float) -> WindowPredictor:
  """The candidate's predictor over the user's classes: short side `scale` training sizes, windows of the
  training size at half-window stride, "background" by the threshold unless `background='class'`."""
  size = train_config.data.image_size
  background_class = "background" if "background" in class_names and background != "class" else None
  info = DatasetInfo(name="predict", class_names=class_names, background_class=background_class)
  protocol = Protocol(short_side=round(size * scale), window=size, stride=size // 2,
                      templates=prompts.templates("single"),
                      background="threshold" if background_class else "none", background_threshold=threshold,
                      background_score=0.0, decode=train_config.eval.protocol.decode, batch_size=8, synonyms={})
  return candidate.make(info, protocol)


def main(argv: list[str]) -> None:
  del argv
  try:
    run(flags.FLAGS)
  except (ValueError, FileNotFoundError) as e:  # Bad input: one clear line, no traceback.
    raise SystemExit(f"error: {e}") from None


def run(f: flags.FlagValues) -> None:
  from ovseg_jax.methods import registry
  class_names = parse_classes(f.classes)
  paths = image_paths(epath.Path(f.image).expanduser())
  workdir = workdirs.as_workdir(f.checkpoint)
  train_config = workdirs.read_config(workdir)
  method = registry.open_vocabulary(train_config, str(workdir))
  model, params, _ = method.restore_model(train_config, workdir)
  clip = load_clip_setup(ml_collections.ConfigDict({"checkpoint": f.clip}))
  candidate = method.candidates(model, params, train_config, (f.classifier,), clip)[0]
  predictor = make_predictor(candidate, train_config, class_names, f.background, f.background_threshold, f.scale)
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
  flags.DEFINE_string("classes", None, "Comma-separated class names, e.g. 'minion,tiger,background'.")
  flags.DEFINE_string("output", None, "Output PNG (one image) or directory.")
  flags.DEFINE_float("background_threshold", 0.5, "Pixels whose best class scores below this are background.")
  flags.DEFINE_enum("background", "threshold", ["threshold", "class"],
                    "'threshold': background wins below the threshold; 'class': embed it like any class.")
  flags.DEFINE_float("scale", 2.0, "Short side of the resized image, in training image sizes.")
  flags.DEFINE_string("classifier", "learned", "learned, clip_crop, clip_dense or ensemble:NAME (needs --clip).")
  flags.DEFINE_string("clip", "", "CLIP checkpoint (OpenAI .pt, open_clip file or Hugging Face directory).")
  cli.run(main, required=("checkpoint", "image", "classes", "output"))
