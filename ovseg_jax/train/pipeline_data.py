"""A prepared-dataset pipeline (`data_pipelines.supervised`) as the loop's host data: its batches, its counts in
the metrics, and every host's read position saved with each checkpoint so a resumed run continues its epoch."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from data_pipelines import supervised
from ovseg_jax.train import fit, progress


def host_position(data_position: dict[str, Any] | None) -> dict[str, int] | None:
  """This host's read position from a checkpoint's (every host's); the earliest epoch's start if the hosts differ."""
  hosts = (data_position or {}).get("supervised_positions")
  if not hosts:
    return None
  if len(hosts) != jax.process_count():
    progress.log(f"the checkpoint's read positions are for {len(hosts)} hosts, this run has {jax.process_count()}: "
                 "the split is divided anew and reading restarts at the start of the earliest saved epoch.")
    return {"epoch": min(epoch for epoch, _ in hosts), "offset": 0}
  epoch, offset = hosts[jax.process_index()]
  return {"epoch": epoch, "offset": offset}


def all_positions(pipeline: supervised.SupervisedPipeline) -> dict[str, Any]:
  local = np.asarray([[pipeline.position()["epoch"], pipeline.position()["offset"]]], np.int64)
  gathered = local if jax.process_count() == 1 else multihost_utils.process_allgather(local)
  return {"supervised_positions": np.asarray(gathered).reshape(-1, 2).tolist()}


def host_data(pipeline: supervised.SupervisedPipeline, keys: Sequence[str]) -> fit.HostData:
  """The pipeline's batches (only `keys`), its example and skip counts as `data/...` scalars, its positions."""
  return fit.HostData(({k: batch[k] for k in keys} for batch in pipeline),
                      lambda: {f"data/{k}": v for k, v in pipeline.counts().items()},
                      lambda: all_positions(pipeline))
