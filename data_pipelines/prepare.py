r"""Standard conversions of raw benchmark downloads into the layouts the evaluation readers take.

  python -m data_pipelines.prepare coco_stuff --root=/data/coco      # raw COCO-Stuff maps -> 171 ids
  python -m data_pipelines.prepare cityscapes --root=/data/cityscapes  # labelIds -> labelTrainIds PNGs

`coco_stuff` reads ROOT/stuffthingmaps_trainval2017/{train,val}2017/*.png (the COCO-Stuff release: category
id - 1 per pixel) and writes ROOT/stuffthingmaps_detectron2/{train,val}2017/*.png with the 171 contiguous ids
the `coco_stuff` and `coco_object` readers take. `cityscapes` writes NAME_gtFine_labelTrainIds.png beside
each NAME_gtFine_labelIds.png (the reader also maps on the fly). VOC and ADE20K-150 need no conversion;
Pascal Context needs mmseg's `tools/convert_datasets/pascal_context.py` (it reads the Detail API's .mat files).
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

from data_pipelines.eval_datasets import cityscapes, coco
from data_pipelines.eval_datasets.files import read_label

ROOT = flags.DEFINE_string("root", None, "The dataset's root directory.")


def _convert(pairs: Iterable[tuple[Path, Path]], table: np.ndarray, what: str) -> dict[str, int]:
  """Writes table[label] for each (source, target) pair whose target does not exist yet."""
  counts = {"written": 0, "already_done": 0}
  last = time.perf_counter()
  for source, target in pairs:
    if target.exists():
      counts["already_done"] += 1
      continue
    target.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(table[np.clip(read_label(source), 0, 255)]).save(buffer, format="PNG")
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, target)
    counts["written"] += 1
    if time.perf_counter() - last > 10:
      last = time.perf_counter()
      print(f"{what}: {counts['written']} written, {counts['already_done']} already done", flush=True)
  print(f"{what}: {counts}", flush=True)
  return counts


def prepare_coco_stuff(root: Path) -> dict[str, int]:
  raw = root / "stuffthingmaps_trainval2017"
  if not raw.is_dir():
    raise FileNotFoundError(f"{raw} is missing: unpack the COCO-Stuff release's stuffthingmaps_trainval2017.zip "
                            f"into {root}.")
  pairs = [(p, root / "stuffthingmaps_detectron2" / p.parent.name / p.name) for p in sorted(raw.glob("*2017/*.png"))]
  return _convert(pairs, coco.raw_to_171(), "coco_stuff")


def prepare_cityscapes(root: Path) -> dict[str, int]:
  gt = root / "gtFine"
  if not gt.is_dir():
    raise FileNotFoundError(f"{gt} is missing: unpack gtFine_trainvaltest.zip into {root}.")
  pairs = [(p, p.with_name(p.name.replace("_labelIds.png", "_labelTrainIds.png")))
           for p in sorted(gt.glob("*/*/*_gtFine_labelIds.png"))]
  return _convert(pairs, cityscapes.label_id_to_train_id(), "cityscapes")


CONVERSIONS: dict[str, Callable[[Path], dict[str, int]]] = {"coco_stuff": prepare_coco_stuff,
                                                            "cityscapes": prepare_cityscapes}


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in CONVERSIONS:
    raise app.UsageError(f"usage: python -m data_pipelines.prepare {{{','.join(CONVERSIONS)}}} --root=DIR")
  try:
    CONVERSIONS[argv[1]](Path(ROOT.value).expanduser())
  except FileNotFoundError as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  flags.mark_flag_as_required("root")
  app.run(main)
