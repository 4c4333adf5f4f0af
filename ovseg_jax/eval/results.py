"""The one results writer: every evaluation (training runs, eval jobs, self-training) reports rows of the same
kind — one per dataset and predictor — as results.json, results.md (with per-class IoU) and a console table."""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from etils import epath

from ovseg_jax.eval.tables import markdown_table, per_class_table

# S-Seg's published mIoU (paper Table 2, trained on CC12M), shown beside our rows for reference only. The paper
# evaluates with background (sec. 4.1 and appendix A.1: Pascal Context's 59 classes and a background class).
PUBLISHED_SSEG = {"voc": 44.9, "context60": 22.9, "coco_object": 22.5}
# Classifier rows list the classes they counted as seen when there are at most this many.
_MAX_LISTED_SEEN = 40


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
            "PQ": _percent(r, "pq"), "SQ": _percent(r, "sq"), "RQ": _percent(r, "rq"), "sPQ": _percent(r, "seen_pq"),
            "uPQ": _percent(r, "unseen_pq"), "hPQ": _percent(r, "harmonic_pq"),
            "published S-Seg mIoU": PUBLISHED_SSEG.get(r["dataset"], float("nan"))} for r in rows]
  columns = [c for c in table[0] if not all(isinstance(t[c], float) and math.isnan(t[c]) for t in table)]
  return markdown_table(table, columns, float_fmt="{:.1f}")


def classifier_notes(rows: list[dict[str, Any]]) -> str:
  """One line per row whose classifier needs explaining: its sources and stand-ins, and which classes it
  counted as seen (S-Seg trains on captions: its "seen" classes are the benchmark's zero-shot split)."""
  lines = []
  for r in rows:
    if not r.get("classifier_note") and "ensemble_seen_classes" not in r:
      continue
    line = f"- {r['predictor']} on {r['dataset']}: {r.get('classifier_note', '')}"
    if "ensemble_seen_classes" in r:
      seen = r["ensemble_seen_classes"]
      listed = f": {', '.join(seen)}" if 0 < len(seen) <= _MAX_LISTED_SEEN else ""
      line += f". Seen classes ({r['ensemble_seen_source']}): {len(seen)}{listed}"
    lines.append(line + ".")
  return "\n".join(lines)


def write_results(rows: list[dict[str, Any]], output: str | epath.Path, title: str, echo: bool = True) -> str:
  """Writes `output/results.json` and `output/results.md`; with `echo` prints the title and table. Returns the
  table."""
  output = epath.Path(output)
  output.mkdir(parents=True, exist_ok=True)
  table = results_table(rows)
  per_class = [f"## {r['predictor']} on {r['dataset']}: per-class IoU\n\n"
               f"{per_class_table(np.asarray(list(r['per_class_iou'].values())), list(r['per_class_iou']))}\n"
               for r in rows if "per_class_iou" in r and not r.get("baseline")]
  note = ("\nPublished S-Seg numbers (paper Table 2, CC12M) are for reference; other models and data differ.\n"
          if any(r["dataset"] in PUBLISHED_SSEG for r in rows) else "")
  notes = classifier_notes(rows)
  notes = f"\n{notes}\n" if notes else ""
  (output / "results.json").write_text(json.dumps(rows, indent=2, default=float))
  (output / "results.md").write_text(f"# {title}\n\n{table}\n{note}{notes}\n" + "\n".join(per_class))
  if echo:
    print(f"{title}:\n{table}{notes}", flush=True)
  return table
