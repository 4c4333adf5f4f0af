"""The open-vocabulary demo's table: each row's seen / unseen / harmonic mIoU and masked-crop accuracy as the mean
and sample standard deviation over seeds, each seed's figures, and per-class IoU and crop accuracy (means over
seeds), written to WORKDIR/results.md and results.json."""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ovseg_jax.eval.tables import markdown_table

METRICS = {"seen mIoU": "seen_miou", "unseen mIoU": "unseen_miou", "h-mIoU": "harmonic_miou",
           "crop acc seen": "crop_accuracy_seen", "crop acc unseen": "crop_accuracy_unseen"}


def mean(values: Sequence[float]) -> float:
  return float(np.mean(values)) if len(values) else float("nan")


def _stats(values: list[float]) -> tuple[float, float]:
  return mean(values), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def _cell(m: float, s: float) -> str:
  if math.isnan(m):
    return "-"
  return f"{100 * m:.1f}" if math.isnan(s) else f"{100 * m:.1f} ± {100 * s:.1f}"


def summarize(per_seed: dict[int, list[dict[str, Any]]], names: list[str]) -> list[dict[str, Any]]:
  """One summary row per row name: {predictor, seeds, <metric>: (mean, sd)} over the seeds that have it."""
  out = []
  for name in names:
    rows = [r for rows in per_seed.values() for r in rows if r["predictor"] == name]
    if rows:
      out.append({"predictor": name, "seeds": len(rows),
                  **{key: _stats([r[key] for r in rows if key in r]) for key in METRICS.values()}})
  return out


def _per_class(per_seed: dict[int, list[dict[str, Any]]], names: list[str], key: str) -> str:
  """Classes x rows table of a per-class figure, mean over seeds, in percent."""
  table, columns = {}, ["class"]
  for name in names:
    found = [r[key] for rows in per_seed.values() for r in rows if r["predictor"] == name and key in r]
    if not found:
      continue
    columns.append(name)
    for cls in dict.fromkeys(c for f in found for c in f):  # A class may be missing from a seed's split.
      values = [f[cls] for f in found if f.get(cls) is not None and not math.isnan(f[cls])]
      table.setdefault(cls, {"class": cls})[name] = 100 * mean(values)
  return markdown_table([{c: row.get(c, float("nan")) for c in columns} for row in table.values()], columns,
                        float_fmt="{:.1f}") if table else ""


def write(per_seed: dict[int, list[dict[str, Any]]], names: list[str], unseen: Sequence[str],
          output: Path) -> list[dict[str, Any]]:
  """Writes results.md and results.json in `output`; returns the summary rows."""
  summary = summarize(per_seed, names)
  seeds = sorted(per_seed)
  head = markdown_table([{"classifier": s["predictor"], "seeds": s["seeds"],
                          **{label: _cell(*s[key]) for label, key in METRICS.items()}} for s in summary],
                        ["classifier", "seeds", *METRICS])
  by_seed = markdown_table([{"classifier": r["predictor"], "seed": seed,
                             **{label: _cell(r.get(key, float("nan")), float("nan")) for label, key in METRICS.items()}}
                            for seed in seeds for r in per_seed[seed] if r["predictor"] in names],
                           ["classifier", "seed", *METRICS])
  mining = "\n".join(f"- seed {seed}: " + ", ".join(f"{k} {v}" for k, v in sorted(per_seed[seed][0]["mining"].items()))
                     for seed in seeds if "mining" in per_seed[seed][0])
  text = (f"# Open-vocabulary demo: {len(seeds)} seed(s) ({', '.join(map(str, seeds))})\n\n"
          f"Percent, mean ± sample standard deviation over seeds. Unseen classes: {', '.join(unseen)}. mIoU on the "
          "held-out split with every classifier naming the proposal model's own masks; crop accuracy: the CLIP's "
          "masked crops of the split's labelled object regions, mean of the per-class accuracies.\n\n"
          f"{head}\n\n## Each seed\n\n{by_seed}\n\n## Mined pairs\n\n{mining or '-'}\n\n"
          f"## Per-class IoU (mean over seeds)\n\n{_per_class(per_seed, names, 'per_class_iou')}\n\n"
          f"## Per-class masked-crop accuracy (mean over seeds)\n\n"
          f"{_per_class(per_seed, names, 'per_class_crop_accuracy')}\n")
  output.mkdir(parents=True, exist_ok=True)
  (output / "results.md").write_text(text)
  (output / "results.json").write_text(json.dumps({"summary": summary, "per_seed": per_seed}, indent=1, default=float))
  print(f"Open-vocabulary demo over seeds {seeds}:\n{head}", flush=True)
  return summary
