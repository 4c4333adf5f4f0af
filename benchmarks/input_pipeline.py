r"""Input pipeline throughput: the image-text tf.data pipeline beside a plain webdataset + PIL loop doing
the same work (decode, random resized crop, resize to 224, flip, tokenise), and beside what the demo's
train step consumes; and the supervised segmentation pipeline (a prepared dataset through tf.data) beside the
Python/PIL crops of data_pipelines.segmentation_crops doing the same work (decode, resize by a short side of
320-960, 640 crop with the category-area rule, flip, padding, per-class targets); measured in one run on data
this script writes.

  python -m benchmarks.input_pipeline [--num_images=2000] [--out=/tmp/input_pipeline.json]
"""
from __future__ import annotations

import io
import itertools
import os
import random
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags
from PIL import Image

from benchmarks import common
from ovseg_jax import allocator

SAMPLES_PER_SHARD = 250


def write_shards(directory: Path, num_images: int, seed: int = 0) -> list[str]:
  """img2dataset-style shards of smooth random photos-like JPEGs with short captions."""
  rng = np.random.default_rng(seed)
  paths = []
  for shard in range(-(-num_images // SAMPLES_PER_SHARD)):
    path = directory / f"{shard:05d}.tar"
    with tarfile.open(path, "w") as tar:
      for i in range(min(SAMPLES_PER_SHARD, num_images - shard * SAMPLES_PER_SHARD)):
        h, w = rng.integers(320, 501, 2)
        coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((int(w), int(h)), Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        key = f"{shard:05d}{i:04d}"
        for name, data in ((f"{key}.jpg", buffer.getvalue()), (f"{key}.txt", b"a dog runs on the grass")):
          info = tarfile.TarInfo(name)
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
    paths.append(str(path))
  return paths


def tfdata_rate(paths: list[str], batch_size: int, num_images: int) -> float:
  from data_pipelines import image_text
  batches, _ = image_text.make_image_text_iterator(paths, batch_size=batch_size, image_size=224,
                                                   shuffle_buffer=1000, crop_scale=(0.08, 1.0))
  next(batches)  # Start-up: TF graph building, first decodes.
  steps = max(1, num_images // batch_size - 1)
  seconds = common.median_seconds(lambda: [next(batches) for _ in range(steps)], repeats=3, warmup=0)
  return steps * batch_size / seconds


def _pil_random_resized_crop(image: Image.Image, rng: random.Random, size: int = 224) -> np.ndarray:
  """torchvision's RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) + flip, in PIL."""
  w, h = image.size
  for _ in range(10):
    area = w * h * rng.uniform(0.08, 1.0)
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = int(round((area * ratio) ** 0.5)), int(round((area / ratio) ** 0.5))
    if 0 < cw <= w and 0 < ch <= h:
      x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
      break
  else:
    x, y, cw, ch = 0, 0, w, h
  crop = image.resize((size, size), Image.BILINEAR, box=(x, y, x + cw, y + ch))
  if rng.random() < 0.5:
    crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
  return np.asarray(crop)


def webdataset_rate(paths: list[str], batch_size: int, num_images: int) -> float:
  import webdataset as wds
  from data_pipelines import tokenizer
  rng = random.Random(0)

  def loop():
    dataset = wds.WebDataset(paths, shardshuffle=False).decode("pil").to_tuple("jpg", "txt")
    batch_images, batch_texts = [], []
    for image, text in itertools.islice(dataset, num_images):
      batch_images.append(_pil_random_resized_crop(image.convert("RGB"), rng))
      batch_texts.append(text)
      if len(batch_images) == batch_size:
        np.stack(batch_images), tokenizer.tokenize(batch_texts)
        batch_images, batch_texts = [], []

  return num_images / common.median_seconds(loop, repeats=3, warmup=1)


SEGMENTATION_SPEC = dict(crop_size=640, short_sides=tuple(int(x * 0.1 * 640) for x in range(5, 16)), max_size=2560,
                         cat_max_ratio=1.0, ignore_index=255)  # configs/mask2former_coco_stuff.py's crops.


def write_segmentation_root(root: Path, num_images: int, seed: int = 0) -> None:
  """An ADE20K-150 layout of COCO-sized (480 x 640) photo-like JPEGs with blocky label PNGs."""
  rng = np.random.default_rng(seed)
  for i in range(num_images):
    coarse = rng.integers(0, 256, (31, 41, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((640, 480), Image.BILINEAR)
    label = Image.fromarray(rng.integers(0, 151, (6, 8), dtype=np.uint8)).resize((640, 480), Image.NEAREST)
    for path, picture in ((root / "images" / "training" / f"{i:08d}.jpg", image),
                          (root / "annotations" / "training" / f"{i:08d}.png", label)):
      path.parent.mkdir(parents=True, exist_ok=True)
      picture.save(path, quality=90)


def supervised_rates(directory: Path, num_images: int, batch_size: int, max_targets: int = 64) -> dict[str, float]:
  """Examples/s of the tf.data pipeline over `num_images` prepared as ade150, and of segmentation_crops' PIL crops
  (its thread pool) with the numpy targets, both over the same files."""
  from data_pipelines import eval_datasets, segmentation_crops, supervised
  from data_pipelines.prepared import store
  from ovseg_jax.methods.mask2former.data import semantic_targets
  write_segmentation_root(directory / "ade", num_images)
  store.prepare("ade150", directory / "ade", directory / "tfds")
  spec = segmentation_crops.CropSpec(**SEGMENTATION_SPEC)
  steps = max(1, num_images // batch_size - 1)
  pipeline = supervised.SupervisedPipeline(directory / "tfds", "ade150", "train", batch_size, spec,
                                           targets=supervised.Targets(max_targets=max_targets))
  next(pipeline)  # Start-up: graph building, first decodes.
  tf_seconds = common.median_seconds(lambda: [next(pipeline) for _ in range(steps)], repeats=3, warmup=0)
  dataset = eval_datasets.load("ade150", directory / "ade", "train")

  def read(index: int) -> tuple[np.ndarray, np.ndarray]:
    example = dataset.example(index)
    return example.image, example.label
  crops = segmentation_crops.crop_batches(len(dataset), read, batch_size, 0, 0, spec, workers=os.cpu_count() or 1)

  def python_steps():
    for _ in range(steps):
      [semantic_targets(label, max_targets) for label in next(crops)["label"]]
  pil_seconds = common.median_seconds(python_steps, repeats=3, warmup=1)
  return {"tf.data": steps * batch_size / tf_seconds, "python": steps * batch_size / pil_seconds}


def demo_step_rate() -> float:
  """Images per second the demo config's jitted train step consumes (its own 64-px batches)."""
  import jax
  from configs import sseg_demo
  from ovseg_jax.methods import registry
  from ovseg_jax.train import sharding
  config = sseg_demo.get_config()
  mesh = sharding.make_mesh(config.mesh.axes)
  trainable = registry.get(config).build(config, mesh)
  batch = sharding.host_batch_to_global(common.random_batch(trainable, config.batch_size), mesh)
  step, state = trainable.step, trainable.state
  holder = {"state": state}

  def run():
    for _ in range(5):
      holder["state"], metrics = step(holder["state"], batch, jax.random.key(0), None)
    jax.block_until_ready(metrics)
  return 5 * config.batch_size / common.median_seconds(run, repeats=3, warmup=1)


def main(argv) -> None:
  del argv
  allocator.reexec_with_fast_allocator("benchmarks.input_pipeline")  # As training runs (ovseg_jax/allocator.py).
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    paths = write_shards(Path(tmp), f.num_images)
    print(f"wrote {f.num_images} images in {len(paths)} shards in {time.perf_counter() - start:.1f}s", flush=True)
    tf_rate = tfdata_rate(paths, f.batch_size, f.num_images)
    wds_rate = webdataset_rate(paths, f.batch_size, f.num_images)
    segmentation = supervised_rates(Path(tmp), f.num_segmentation_images, 8)
  step_rate = demo_step_rate()
  rows = [{"pipeline": "tf.data (data_pipelines.image_text)", "img/s": tf_rate, "vs webdataset + PIL": tf_rate / wds_rate},
          {"pipeline": "webdataset + PIL loop", "img/s": wds_rate, "vs webdataset + PIL": 1.0},
          {"pipeline": "demo train step consumes", "img/s": step_rate, "vs webdataset + PIL": step_rate / wds_rate}]
  common.report("Image-text input pipeline, 224 px random resized crops (medians of 3)", rows, f.out or None)
  rows = [{"pipeline": "tf.data over a prepared dataset (data_pipelines.supervised)", "img/s": segmentation["tf.data"],
           "vs Python/PIL": segmentation["tf.data"] / segmentation["python"]},
          {"pipeline": "Python/PIL crops (data_pipelines.segmentation_crops)", "img/s": segmentation["python"],
           "vs Python/PIL": 1.0}]
  common.report("Supervised segmentation input, 640 px crops with targets (medians of 3)", rows,
                f"{f.out}.segmentation.json" if f.out else None)


if __name__ == "__main__":
  flags.DEFINE_integer("num_images", 2000, "Images in the generated shards (320-500 px JPEGs).")
  flags.DEFINE_integer("batch_size", 64, "Batch size of both pipelines.")
  flags.DEFINE_integer("num_segmentation_images", 64, "Images of the generated segmentation dataset (480 x 640).")
  flags.DEFINE_string("out", "", "JSON output path.")
  app.run(main)
