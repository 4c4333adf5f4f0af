"""The one results writer: every evaluation (training runs, eval jobs, self-training) reports rows of the same
kind — one per dataset and predictor — as results.json, results.md (with per-class IoU) and a console table."""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from etils import epath

from ovseg_jax.eval.tables import markdown_table, per_class_table

# S-Seg's published mIoU (paper Table 2, trained on CC12M), shown beside our rows for reference only.
PUBLISHED_SSEG = {"voc": 44.9, "context59": 22.9, "coco_object": 22.5}


def _percent(row: dict[str, Any], key: str) -> float:
  return 100 * row[key] if key in row else float("nan")


def _background(row: dict[str, Any]) -> str:
  rule = row.get("background", "")
  if rule == "threshold":
    source = " (tune split)" if row.get("threshold_chosen_on") else ""
    return f"threshold {row['background_threshold']:.3f}{source}"
  return rule or "-"


def results_table(rows: list[dict[str, Any]]) -> str:
  """Markdown table, one line per row, in percent; columns that no row fills are left out."""
  table = [{"dataset": r["dataset"], "predictor": r["predictor"], "images": r["num_images"],
            "background": _background(r), "mIoU": _percent(r, "miou"),
            "object-class mIoU": _percent(r, "object_miou"), "pixel acc": _percent(r, "pixel_accuracy"),
            "fwIoU": _percent(r, "fwiou"), "seen mIoU": _percent(r, "seen_miou"),
            "unseen mIoU": _percent(r, "unseen_miou"), "h-mIoU": _percent(r, "harmonic_miou"),
            "published S-Seg mIoU": PUBLISHED_SSEG.get(r["dataset"], float("nan"))} for r in rows]
  columns = [c for c in table[0] if not all(isinstance(t[c], float) and math.isnan(t[c]) for t in table)]
  return markdown_table(table, columns, float_fmt="{:.1f}")


def write_results(rows: list[dict[str, Any]], output: str | epath.Path, title: str) -> str:
  """Writes `output/results.json` and `output/results.md`, prints the title and table; returns the table."""
  output = epath.Path(output)
  output.mkdir(parents=True, exist_ok=True)
  table = results_table(rows)
  per_class = [f"## {r['predictor']} on {r['dataset']}: per-class IoU\n\n"
               f"{per_class_table(np.asarray(list(r['per_class_iou'].values())), list(r['per_class_iou']))}\n"
               for r in rows if "per_class_iou" in r and not r.get("baseline")]
  note = ("\nPublished S-Seg numbers (paper Table 2, CC12M) are for reference; other models and data differ.\n"
          if any(r["dataset"] in PUBLISHED_SSEG for r in rows) else "")
  (output / "results.json").write_text(json.dumps(rows, indent=2, default=float))
  (output / "results.md").write_text(f"# {title}\n\n{table}\n{note}\n" + "\n".join(per_class))
  print(f"{title}:\n{table}", flush=True)
  return table
