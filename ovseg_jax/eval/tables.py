"""Markdown tables for results files, consoles and benchmark reports."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _cell(value: Any, float_fmt: str) -> str:
  if isinstance(value, (float, np.floating)):
    return "n/a" if math.isnan(value) else float_fmt.format(value)
  return str(value).replace("|", "\\|")


def markdown_table(rows: list[dict[str, Any]], columns: list[str], float_fmt: str = "{:.3f}") -> str:
  """GitHub markdown table of `rows` (one dict each) in `columns` order; numeric columns right-aligned, NaN
  shown as n/a."""
  for i, row in enumerate(rows):
    missing = [c for c in columns if c not in row]
    if missing:
      raise ValueError(f"markdown_table: row {i} has no value for column(s) {missing}; its keys are {list(row)}.")
  numeric = [bool(rows) and all(_is_number(row[c]) for row in rows) for c in columns]
  lines = ["| " + " | ".join(columns) + " |",
           "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
  lines += ["| " + " | ".join(_cell(row[c], float_fmt) for c in columns) + " |" for row in rows]
  return "\n".join(lines)


def per_class_table(per_class_iou: np.ndarray, class_names: Sequence[str]) -> str:
  """Markdown table `id | class | IoU`; classes absent from prediction and label show n/a."""
  if len(per_class_iou) != len(class_names):
    raise ValueError(f"per_class_table: {len(per_class_iou)} IoUs for {len(class_names)} class names.")
  rows = [{"id": i, "class": name, "IoU": float(iou)} for i, (name, iou) in enumerate(zip(class_names, per_class_iou))]
  return markdown_table(rows, ["id", "class", "IoU"])
