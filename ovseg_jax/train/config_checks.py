"""Checks of config values that would otherwise fail late (after compilation) or silently: each names the key and
the fix, and runs before anything is built or written."""
from __future__ import annotations

import math
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and what to give instead."""


def value(config: ml_collections.ConfigDict, key: str) -> Any:
  """`config.a.b.c` for key 'a.b.c'."""
  for part in key.split("."):
    config = config[part]
  return config


def check_int(config: ml_collections.ConfigDict, key: str, minimum: int = 1) -> None:
  v = value(config, key)
  if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
    raise ConfigError(f"{key}={v!r} must be a whole number >= {minimum} (e.g. --config.{key}={max(minimum, 100)}).")


def check_number(config: ml_collections.ConfigDict, key: str, minimum: float, inclusive: bool = True) -> None:
  v = value(config, key)
  fits = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (
      v >= minimum if inclusive else v > minimum)
  if not fits:
    raise ConfigError(f"{key}={v!r} must be a finite number {'>=' if inclusive else '>'} {minimum}.")


def check_pair(config: ml_collections.ConfigDict, key: str, low: float, high: float = math.inf) -> None:
  """A (min, max) pair with low < min <= max <= high, e.g. data.crop_scale=(0.5, 1.0)."""
  v = value(config, key)
  pair = tuple(v) if isinstance(v, (tuple, list)) else None
  fits = pair is not None and len(pair) == 2 and all(
      isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in pair) and \
      low < pair[0] <= pair[1] <= high
  if not fits:
    bound = f" <= {high}" if math.isfinite(high) else ""
    raise ConfigError(f"{key}={v!r} must be a (min, max) pair with {low} < min <= max{bound}, e.g. "
                      f"--config.{key}='({low + (min(high, 1.0) - low) / 2:g}, {min(high, 1.0):g})'.")


def check_loop(config: ml_collections.ConfigDict) -> None:
  """What the shared training loop reads: step counts, intervals, the time budget and the learning rate."""
  check_int(config, "total_steps", minimum=0)
  for key in ("batch_size", "log_every_steps", "checkpoint.every_steps", "checkpoint.keep"):
    check_int(config, key)
  if config.get("max_train_minutes") is not None:
    check_number(config, "max_train_minutes", 0)
  check_number(config, "optimizer.lr", 0, inclusive=False)
