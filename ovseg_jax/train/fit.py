"""Fitting a method's `Trainable` in a workdir, the same way for every method: the batch split checked, the
latest checkpoint resumed, the config recorded only once the resume succeeded, then the shared loop."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from ovseg_jax.train import loop, sharding, workdir as workdirs
from ovseg_jax.train.config_checks import ConfigError
from ovseg_jax.train.step import Trainable


@dataclasses.dataclass
class HostData:
  """This host's batches, host-side figures for the metrics, and the read position saved with checkpoints."""
  batches: Iterator[dict[str, np.ndarray]]
  extra_scalars: Callable[[], dict[str, float]] = dict
  data_position: Callable[[], dict[str, Any]] = dict


def check_batch_size(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  if config.batch_size % jax.process_count() or config.batch_size % sharding.num_batch_shards(mesh):
    raise ConfigError(f"batch_size={config.batch_size} must divide over {jax.process_count()} hosts and "
                      f"{sharding.num_batch_shards(mesh)} batch shards of the mesh.")


def checked_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """The mesh of `config.mesh.axes`, once the global batch is known to split over it."""
  mesh = sharding.make_mesh(config.mesh.axes)
  check_batch_size(config, mesh)
  return mesh


def fit(config: ml_collections.ConfigDict, workdir: epath.Path, mesh: jax.sharding.Mesh, trainable: Trainable,
        host_data: Callable[[dict[str, Any] | None, int], HostData],
        initialise: Callable[[Any], Any] | None = None) -> Any:
  """Trains `trainable` from the workdir's latest checkpoint (or `initialise(state)` on a fresh start) to
  `config.total_steps`; returns the final state. `host_data(data_position, start_step)` opens the input where
  the checkpoint left it."""
  ckpt, state, data_position = loop.resume(config, workdir, trainable.state)
  workdirs.write_config(workdir, config)  # Only now: a refused start leaves the workdir's own config.
  loop.describe_parameters(state.params, workdir)
  if data_position is None and initialise is not None:
    state = initialise(state)
  start_step = int(state.step)
  if start_step < config.total_steps:
    data = host_data(data_position, start_step)
    state = loop.run(config, workdir, mesh, lambda s, b, k: trainable.step(s, b, k, trainable.frozen), state,
                     data.batches, ckpt, start_step, data.extra_scalars, data.data_position)
  ckpt.close()
  return state
