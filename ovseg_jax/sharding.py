"""Device mesh and shardings from the config: the same code on 1 CPU, 8 fake devices and a pod.

The batch is split over the mesh's data-like axes; parameters are replicated until regex sharding rules
(FSDP / model parallel) are configured. Host batches become global `jax.Array`s without gathering.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(axes: Sequence[tuple[str, int]], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a mesh from `(name, size)` pairs; one size may be -1 meaning "all remaining devices"."""
  devices = list(jax.devices() if devices is None else devices)
  names = [name for name, _ in axes]
  sizes = [int(size) for _, size in axes]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh axes {list(axes)}: at most one axis may have size -1.")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"mesh axes {list(axes)} do not divide the {len(devices)} devices.")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"mesh axes {dict(zip(names, sizes))} need {int(np.prod(sizes))} devices, "
                     f"but {len(devices)} are available; set config.mesh to match.")
  return Mesh(np.asarray(devices).reshape(sizes), tuple(names))


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  """The mesh axes that split the batch dimension."""
  return tuple(a for a in mesh.axis_names if a in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def num_batch_shards(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))


def host_batch_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, Any]:
  """Turns this host's slice of the global batch into global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
