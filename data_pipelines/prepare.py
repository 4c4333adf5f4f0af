r"""Standard conversions of raw benchmark downloads into the layouts the evaluation readers take, and the
preparation of those layouts as TensorFlow Datasets.

  python -m data_pipelines.prepare coco_stuff --root=/data/coco      # raw COCO-Stuff maps -> 171 ids
  python -m data_pipelines.prepare cityscapes --root=/data/cityscapes  # labelIds -> labelTrainIds PNGs
  python -m data_pipelines.prepare pascal_context --root=/data/VOCdevkit/VOC2010  # .mat -> 60 and 459 ids
  python -m data_pipelines.prepare ade150 --manual_dir=/data/ADEChallengeData2016 --data_dir=gs://bucket/tfds

With `--manual_dir` and `--data_dir`, NAME is a prepared dataset (`data_pipelines/prepared`: coco_stuff, ade150,
ade847, context59, context60, context459, voc, cityscapes, coco_panoptic, demo): the directory reader's layout
under the manual dir is written once as sharded TFRecord files under DATA_DIR/NAME/VERSION (local or gs://).

`coco_stuff` reads ROOT/stuffthingmaps_trainval2017/{train,val}2017/*.png (the COCO-Stuff release: category
id - 1 per pixel) and writes ROOT/stuffthingmaps_detectron2/{train,val}2017/*.png with the 171 contiguous ids
the `coco_stuff` and `coco_object` readers take. `cityscapes` writes NAME_gtFine_labelTrainIds.png beside
each NAME_gtFine_labelIds.png (the reader also maps on the fly). `pascal_context` reads the release's
ROOT/trainval/ID.mat files (`LabelMap`: 1..459 = line of labels.txt, 0 = unlabelled) and writes
ROOT/SegmentationClassContext/ID.png (context59/60 ids: the 59 classes, everything else background, as mmseg's
conversion does) and ROOT/annotations_detectron2/pc459_SPLIT/ID.tif (0..458, 65535 unlabelled), plus
ImageSets/SegmentationContext/{train,val}.txt from VOC2010's ImageSets/Main lists when missing (4,998 / 5,105
images). VOC and ADE20K-150 need no conversion; ADE20K-847 needs MaskFormer's
datasets/prepare_ade20k_full_sem_seg.py (it reads the ADE20K_2021_17_01 index pickle).
Finished outputs are never rewritten, and each file is written atomically, so an interrupted run can resume.
"""
from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from absl import app, flags
from PIL import Image

from data_pipelines.eval_datasets import cityscapes, coco, pascal_context
from data_pipelines.eval_datasets.files import read_label

ROOT = flags.DEFINE_string("root", None, "The dataset's root directory (label conversions).")
MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "The dataset's root directory, as its reader takes it "
                                 "(TFDS preparation).")
DATA_DIR = flags.DEFINE_string("data_dir", None, "Where the prepared dataset is written (local or gs://).")


_FORMATS = {".png": "PNG", ".tif": "TIFF"}


def _convert(pairs: Iterable[tuple[Path, Path]], convert: Callable[[Path], np.ndarray], what: str) -> dict[str, int]:
  """Writes convert(source) to each target (PNG or TIFF by its suffix) that does not exist yet."""
  counts = {"written": 0, "already_done": 0}
  last = time.perf_counter()
  for source, target in pairs:
    if target.exists():
      counts["already_done"] += 1
      continue
    target.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(convert(source)).save(buffer, format=_FORMATS[target.suffix])
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, target)
    counts["written"] += 1
    if time.perf_counter() - last > 10:
      last = time.perf_counter()
      print(f"{what}: {counts['written']} written, {counts['already_done']} already done", flush=True)
  print(f"{what}: {counts}", flush=True)
  return counts


def _lookup(table: np.ndarray) -> Callable[[Path], np.ndarray]:
  return lambda source: table[np.clip(read_label(source), 0, 255)]


def prepare_coco_stuff(root: Path) -> dict[str, int]:
  raw = root / "stuffthingmaps_trainval2017"
  if not raw.is_dir():
    raise FileNotFoundError(f"{raw} is missing: unpack the COCO-Stuff release's stuffthingmaps_trainval2017.zip "
                            f"into {root}.")
  pairs = [(p, root / "stuffthingmaps_detectron2" / p.parent.name / p.name) for p in sorted(raw.glob("*2017/*.png"))]
  return _convert(pairs, _lookup(coco.raw_to_171()), "coco_stuff")


def prepare_cityscapes(root: Path) -> dict[str, int]:
  gt = root / "gtFine"
  if not gt.is_dir():
    raise FileNotFoundError(f"{gt} is missing: unpack gtFine_trainvaltest.zip into {root}.")
  pairs = [(p, p.with_name(p.name.replace("_labelIds.png", "_labelTrainIds.png")))
           for p in sorted(gt.glob("*/*/*_gtFine_labelIds.png"))]
  return _convert(pairs, _lookup(cityscapes.label_id_to_train_id()), "cityscapes")


def _label_map(path: Path) -> np.ndarray:
  import scipy.io
  try:
    return np.asarray(scipy.io.loadmat(path)["LabelMap"]).astype(np.int64)
  except (ValueError, KeyError, OSError) as e:
    raise ValueError(f"{path}: not a Pascal Context .mat file with a LabelMap ({e}); unpack trainval.tar.gz again.") from e


def _context_split_ids(root: Path, have: set[str]) -> dict[str, list[str]]:
  """{train, val}: ids of ImageSets/SegmentationContext lists, written from ImageSets/Main when missing."""
  splits = {}
  for split in ("train", "val"):
    listed = root / "ImageSets" / "SegmentationContext" / f"{split}.txt"
    if not listed.is_file():
      main = root / "ImageSets" / "Main" / f"{split}.txt"
      if not main.is_file():
        raise FileNotFoundError(f"{main} is missing: ROOT must be VOCdevkit/VOC2010 of the VOC 2010 release.")
      ids = [line.split()[0] for line in main.read_text().splitlines() if line.strip()]
      listed.parent.mkdir(parents=True, exist_ok=True)
      listed.write_text("".join(f"{i}\n" for i in ids if i in have))
    splits[split] = [line.strip() for line in listed.read_text().splitlines() if line.strip()]
  return splits


def prepare_pascal_context(root: Path) -> dict[str, int]:
  mats = root / "trainval"
  if not mats.is_dir():
    raise FileNotFoundError(f"{mats} is missing: unpack the Pascal Context release's trainval.tar.gz (one .mat "
                            f"LabelMap per image) into {root} (VOCdevkit/VOC2010).")
  have = {p.stem for p in mats.glob("*.mat")}
  splits = {split: [i for i in ids if i in have] for split, ids in _context_split_ids(root, have).items()}
  to_60 = pascal_context.label_459_to_60()
  counts = _convert([(mats / f"{i}.mat", root / "SegmentationClassContext" / f"{i}.png")
                     for ids in splits.values() for i in ids], lambda p: to_60[_label_map(p)], "context59/60")
  ignore = pascal_context.IGNORE_459
  to_459 = lambda p: np.where((m := _label_map(p)) == 0, ignore, m - 1).astype(np.uint16)
  for split, ids in splits.items():
    pairs = [(mats / f"{i}.mat", root / "annotations_detectron2" / f"pc459_{split}" / f"{i}.tif") for i in ids]
    for key, value in _convert(pairs, to_459, f"context459 {split}").items():
      counts[key] += value
  return counts


CONVERSIONS: dict[str, Callable[[Path], dict[str, int]]] = {"coco_stuff": prepare_coco_stuff,
                                                            "cityscapes": prepare_cityscapes,
                                                            "pascal_context": prepare_pascal_context}


def main(argv: list[str]) -> None:
  usage = (f"usage: python -m data_pipelines.prepare {{{','.join(CONVERSIONS)}}} --root=DIR, or python -m "
           "data_pipelines.prepare NAME --manual_dir=DIR --data_dir=DIR (NAME: see data_pipelines/prepared)")
  tfds_flags = MANUAL_DIR.value is not None or DATA_DIR.value is not None
  if len(argv) != 2 or tfds_flags == (ROOT.value is not None):
    raise app.UsageError(usage)
  try:
    if ROOT.value is not None:
      if argv[1] not in CONVERSIONS:
        raise app.UsageError(usage)
      CONVERSIONS[argv[1]](Path(ROOT.value).expanduser())
    elif MANUAL_DIR.value is None or DATA_DIR.value is None:
      raise app.UsageError(usage)
    else:
      from data_pipelines.prepared import store
      store.prepare(argv[1], Path(MANUAL_DIR.value).expanduser(), DATA_DIR.value)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  app.run(main)
