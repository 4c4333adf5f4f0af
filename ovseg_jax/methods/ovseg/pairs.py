"""OVSeg's mask-category pairs: for each image with a caption, the masks a segmenter proposes are cut out as
masked crops (outside filled with CLIP's mean colour, box resized), the caption's nouns are put in a prompt, and
CLIP names each crop with the noun it matches best (`assign='mask'`), or gives each noun its best crop
(`assign='noun'`). The pairs are written as webdataset shards the CLIP trainer reads (`KEY.png`: the crop, lossless
so its fill colour survives for the mask prompts; `KEY.txt`: the prompt; `KEY.json`: noun, score, source).

Mining is resumable and split over hosts: each host mines its share of the input shards, one output shard per
input shard, written under a temporary name and renamed when complete (with its counts beside it), and skipped
when already there."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from data_pipelines import captions, shards, tokenizer
from ovseg_jax.eval.classify import crop_with_mask
from ovseg_jax.methods.clip.objective import FILL_COLOUR
from ovseg_jax.ops.normalize import PIXEL_MEAN, PIXEL_STD, l2_normalize, normalize_images

COUNTS = ("images", "images_without_nouns", "masks", "masks_empty", "pairs", "pairs_dropped")


@dataclasses.dataclass(frozen=True)
class Pair:
  mask_index: int
  noun: str
  score: float  # Cosine similarity of crop and noun prompt.
  crop: np.ndarray  # uint8 [S, S, 3], outside the mask FILL_COLOUR.


def masked_crops(image: np.ndarray, masks: np.ndarray, size: int) -> np.ndarray:
  """uint8 [N, S, S, 3] masked crops of uint8 `image` [H, W, 3] for bool `masks` [N, H, W] (outside each mask:
  CLIP's mean colour)."""
  crop, crop_mask = jax.vmap(crop_with_mask, in_axes=(None, 0, None))(
      normalize_images(jnp.asarray(image)), jnp.asarray(masks), size)
  pixels = crop * jnp.asarray(PIXEL_STD) + jnp.asarray(PIXEL_MEAN)
  pixels = jnp.clip(jnp.round(pixels * 255), 0, 255).astype(jnp.uint8)
  return np.asarray(jnp.where(crop_mask[..., None], pixels, jnp.asarray(FILL_COLOUR, jnp.uint8)))


def pairs_of_image(image: np.ndarray, caption: str, masks: np.ndarray, encode_crops: Callable,
                   encode_texts: Callable, size: int, template: str = "a photo of a {}.", assign: str = "mask",
                   min_pixels: int = 1, counts: dict[str, int] | None = None) -> list[Pair]:
  """The pairs of one image. `encode_crops(uint8 [N, S, S, 3]) -> [N, D]`, `encode_texts(list of str) -> [K, D]`
  (a CLIP's towers); masks with fewer than `min_pixels` pixels are dropped; `counts` is updated in place."""
  if assign not in ("mask", "noun"):
    raise ValueError(f"assign={assign!r}: use 'mask' (each mask its best noun) or 'noun' (each noun its best mask).")
  counts = {} if counts is None else counts
  add = lambda name, n=1: counts.__setitem__(name, counts.get(name, 0) + n)
  add("images")
  nouns = captions.nouns(captions.clean_caption(caption))
  add("masks", len(masks))
  if not nouns:
    add("images_without_nouns")
    return []
  sizes = masks.reshape(len(masks), -1).sum(-1)
  valid = np.flatnonzero(sizes >= min_pixels)
  add("masks_empty", len(masks) - len(valid))
  if not len(valid):
    return []
  crops = masked_crops(image, masks[valid], size)
  similarity = np.asarray(l2_normalize(jnp.asarray(encode_crops(crops), jnp.float32))
                          @ l2_normalize(jnp.asarray(encode_texts([template.format(n) for n in nouns]),
                                                     jnp.float32)).T)  # [masks, nouns]
  if assign == "mask":
    chosen = [(m, int(np.argmax(similarity[m]))) for m in range(len(valid))]
  else:
    chosen = sorted({(int(np.argmax(similarity[:, k])), k) for k in range(len(nouns))})
  add("pairs", len(chosen))
  add("pairs_dropped", len(valid) - len(chosen) if assign == "noun" else 0)
  return [Pair(int(valid[m]), nouns[k], float(similarity[m, k]), crops[m]) for m, k in chosen]


def _png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size, info.mode = len(data), 0o644
  tar.addfile(info, io.BytesIO(data))


def mine_shard(shard: str, output: Path, propose: Callable[[np.ndarray], np.ndarray], template: str = "a photo of a {}.",
               **pair_options) -> dict[str, int]:
  """Mines one input shard into `output` (a .tar, its counts in the .json beside it); `propose(uint8 image [H, W,
  3]) -> bool masks [N, H, W]`. Other options go to `pairs_of_image`."""
  counts: dict[str, int] = {name: 0 for name in COUNTS}
  stats = shards.SkipStats()
  partial = output.with_name(f".{output.name}.tmp-{os.getpid()}")
  with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
    for key, image_bytes, caption in shards.iterate_samples([shard], stats):
      image = np.asarray(Image.open(io.BytesIO(image_bytes)).convert("RGB"))
      for pair in pairs_of_image(image, caption, np.asarray(propose(image), bool), template=template, counts=counts,
                                 **pair_options):
        name = f"{key}_{pair.mask_index:03d}"
        _add(tar, f"{name}.png", _png(pair.crop))
        _add(tar, f"{name}.txt", template.format(pair.noun).encode())
        _add(tar, f"{name}.json", json.dumps({"source": key, "caption": caption, "noun": pair.noun,
                                              "score": pair.score, "mask_index": pair.mask_index}).encode())
  counts.update({f"skipped_{k}": v for k, v in stats.counts.items()})
  os.replace(partial, output)
  output.with_suffix(".json").write_text(json.dumps(counts, sort_keys=True) + "\n")  # Last: marks it complete.
  return counts


def mine_shards(input_shards: str | Sequence[str], output_dir: str | Path, propose: Callable[[np.ndarray], np.ndarray],
                process_index: int = 0, process_count: int = 1, **options) -> dict[str, int]:
  """Mines this host's share of `input_shards` into `output_dir` (same shard names), skipping shards already
  mined; returns the counts summed over every shard mined so far in `output_dir` (all hosts')."""
  output_dir = Path(output_dir).expanduser()
  output_dir.mkdir(parents=True, exist_ok=True)
  all_shards = shards.expand_pattern(input_shards)
  for shard in shards.host_shards(all_shards, process_index, process_count):
    output = output_dir / (Path(shard).stem + ".tar")
    if not output.with_suffix(".json").exists():
      mine_shard(shard, output, propose, **options)
  totals: dict[str, int] = {}
  for counts_file in sorted(tar.with_suffix(".json") for tar in output_dir.glob("*.tar")):
    if not counts_file.exists():  # Another host's shard still being mined.
      continue
    for name, value in json.loads(counts_file.read_text()).items():
      totals[name] = totals.get(name, 0) + value
  return totals


def clip_encoders(model, params, context_length: int = 77) -> tuple[Callable, Callable]:
  """(encode_crops, encode_texts) of a CLIP (`models.clip.CLIP`) for `pairs_of_image`; crops are resized to the
  model's input size by the caller (`size=model.architecture.image_size`)."""
  encode_image = jax.jit(lambda x: model.apply({"params": params}, normalize_images(x), method="encode_image"))
  encode_text = jax.jit(lambda t: model.apply({"params": params}, t, method="encode_text"))
  return (lambda crops: _padded(encode_image, crops),
          lambda texts: _padded(encode_text, tokenizer.tokenize(texts, context_length)))


def _padded(fn: Callable, x: np.ndarray, multiple: int = 8) -> np.ndarray:
  """fn(x) with x's rows padded to a multiple of `multiple` (so a jitted tower compiles a few shapes, not one per
  count of masks or nouns), the padding's rows dropped."""
  pad = -len(x) % multiple
  return np.asarray(fn(jnp.asarray(np.concatenate([x, np.repeat(x[:1], pad, axis=0)]))))[:len(x)]
