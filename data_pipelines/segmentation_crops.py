"""Training batches for a segmentation network from image files and label PNGs (S-Seg+'s second stage).

Each sample follows mmseg's standard pipeline for 512 crops, which the published second stage uses: resize,
aspect kept, so the image fits `scale` (2048 x 512) times a random ratio in `ratio_range` (0.5-2.0); a random
`crop_size` crop, redrawn up to ten times while one class covers more than `cat_max_ratio` of its labelled
pixels; a random horizontal flip; padding to `crop_size` (image 0, label ignore). mmseg's photometric
distortion is not applied. With `short_sides`, the resize is detectron2's `ResizeShortestEdge` instead (Mask2Former's
semantic configs): the short side one of `short_sides` at random, the long side at most `max_size`; `color_aug`
applies detectron2's ColorAugSSDTransform to the crop before the flip, as Mask2Former's mappers order them
(`data_pipelines.color_augmentation`).

The order is an endless sequence of seeded per-epoch permutations, and every sample's randomness is keyed by
(seed, step, slot), so a resumed run continues exactly where its checkpoint was taken. A thread pool reads
and augments the next batch while the trainer runs (PIL decodes and resizes outside the GIL).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

from data_pipelines import color_augmentation


@dataclasses.dataclass(frozen=True)
class CropSpec:
  crop_size: int = 512
  scale: tuple[int, int] = (2048, 512)
  ratio_range: tuple[float, float] = (0.5, 2.0)
  cat_max_ratio: float = 0.75
  ignore_index: int = 255
  short_sides: tuple[int, ...] = ()  # detectron2's resize: short side chosen from these (then `scale` is unused).
  max_size: int = 0  # Its cap on the long side (0: none).
  color_aug: bool = False  # detectron2's ColorAugSSDTransform on the crop.


def sample_indices(n: int, seed: int, start: int, count: int) -> np.ndarray:
  """Positions start..start+count of the endless sequence of seeded per-epoch permutations of range(n)."""
  out: list[int] = []
  while len(out) < count:
    epoch, offset = divmod(start + len(out), n)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    out.extend(order[offset:offset + count - len(out)].tolist())
  return np.asarray(out)


def _rescale(image: np.ndarray, label: np.ndarray, spec: CropSpec,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  h, w = label.shape
  if spec.short_sides:
    factor = int(rng.choice(spec.short_sides)) / min(h, w)
    if spec.max_size and max(h, w) * factor > spec.max_size:
      factor = spec.max_size / max(h, w)
  else:
    ratio = rng.uniform(*spec.ratio_range)
    factor = min(max(spec.scale) * ratio / max(h, w), min(spec.scale) * ratio / min(h, w))
  size = (max(1, int(w * factor + 0.5)), max(1, int(h * factor + 0.5)))
  image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
  label = np.asarray(Image.fromarray(label.astype(np.int32)).resize(size, Image.NEAREST))
  return image, label


def crop_acceptable(window: np.ndarray, spec: CropSpec) -> bool:
  """The category-area rule: at least two classes, none covering `cat_max_ratio` of the labelled pixels."""
  _, counts = np.unique(window[window != spec.ignore_index], return_counts=True)
  return spec.cat_max_ratio >= 1 or (len(counts) > 1 and counts.max() / counts.sum() < spec.cat_max_ratio)


def _crop_box(label: np.ndarray, spec: CropSpec, rng: np.random.Generator) -> tuple[int, int, int, int]:
  h, w = label.shape
  ch, cw = min(spec.crop_size, h), min(spec.crop_size, w)
  for _ in range(10):
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    if crop_acceptable(label[y:y + ch, x:x + cw], spec):
      break
  return y, x, ch, cw


def augment(image: np.ndarray, label: np.ndarray, spec: CropSpec,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """uint8 image [H, W, 3] and class ids [H, W] -> a (crop_size, crop_size) training crop of both."""
  image, label = _rescale(image, label, spec, rng)
  y, x, ch, cw = _crop_box(label, spec, rng)
  image, label = image[y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]
  if spec.color_aug:
    image = color_augmentation.color_aug_ssd(image, rng)
  if rng.random() < 0.5:
    image, label = image[:, ::-1], label[:, ::-1]
  out_image = np.zeros((spec.crop_size, spec.crop_size, 3), np.uint8)
  out_label = np.full((spec.crop_size, spec.crop_size), spec.ignore_index, np.int32)
  out_image[:ch, :cw], out_label[:ch, :cw] = image, label
  return out_image, out_label


def crop_batches(num_samples: int, read_sample: Callable[[int], tuple[np.ndarray, np.ndarray]], batch_size: int,
                 seed: int, start_step: int, spec: CropSpec, workers: int = 8) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches {'image' uint8 [B, S, S, 3], 'label' int32 [B, S, S]} of augmented samples, from step
  `start_step` on; `read_sample(i)` returns sample i's image and class ids."""
  def sample(step: int, slot: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    return augment(*read_sample(index), spec, np.random.default_rng([seed, step, slot]))

  def submit(step: int) -> list[concurrent.futures.Future]:
    indices = sample_indices(num_samples, seed, step * batch_size, batch_size)
    return [pool.submit(sample, step, slot, int(i)) for slot, i in enumerate(indices)]

  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    step, pending = start_step, submit(start_step)
    while True:
      upcoming = submit(step + 1)
      images, labels = zip(*(f.result() for f in pending))
      yield {"image": np.stack(images), "label": np.stack(labels)}
      step, pending = step + 1, upcoming

