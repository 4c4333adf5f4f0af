"""Device mesh and shardings from the config: the same code on 1 CPU, 8 fake devices and a pod.

The batch is split over the mesh's data-like axes (`data`, `fsdp`); host batches become global `jax.Array`s
without gathering. Parameters are placed by regex rules (big_vision style). Config format:

  config.mesh.axes = (('data', -1), ('fsdp', 2))   # (name, size) pairs; one size may be -1: the rest.
  config.sharding_rules = (                         # (regex, tactic) pairs; the first match wins.
      ('text_encoder/token_embedding/embedding', (None, 'model')),
      ('.*', 'fsdp'),
  )

A regex is searched (`re.search`) in the '/'-joined parameter path, e.g. `backbone/vit/block_0/mlp/dense_0/
kernel`. Tactics:
  'replicate'  a full copy on every device (also what unmatched parameters get);
  'fsdp'       the largest dimension divisible by the size of the mesh's `fsdp` axis is split over it, for
               tensors of at least `min_size` elements (2**14 by default); smaller tensors, tensors with no
               divisible dimension and meshes without (or with a size-1) `fsdp` axis replicate;
  a tuple      an explicit PartitionSpec, one entry per dimension: an axis name, a tuple of axis names or
               None, e.g. `(None, 'model')`; it must match the rank and divide the dimensions.
Optimizer state leaves that mirror a parameter (Adam's mu and nu) shard like it; everything else in the
train state (step, counts) is replicated.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
FSDP_AXIS = "fsdp"
FSDP_MIN_SIZE = 2**14

Rules = Sequence[tuple[str, Any]]


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


def batch_constraint(mesh: Mesh):
  """`constrain(x, batch_dim=0)`: inside a jitted function, keeps `x` split over the batch axes along
  `batch_dim` (other dimensions unsplit). Used where per-example work must stay local to each device: with
  FSDP-sharded weights XLA may otherwise split activations along feature dimensions, and an on-device
  while-loop (the Hungarian matcher) over such arrays would communicate on every iteration."""
  axes = batch_axes(mesh)

  def constrain(x: jax.Array, batch_dim: int = 0) -> jax.Array:
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*([None] * batch_dim), axes)))
  return constrain


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def num_batch_shards(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))


def host_batch_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, Any]:
  """Turns this host's slice of the global batch into global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def path_name(path: Sequence[Any]) -> str:
  """'/'-joined names of a pytree key path: `backbone/vit/block_0/mlp/dense_0/kernel`."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def _fsdp_spec(shape: tuple[int, ...], mesh: Mesh, min_size: int) -> P:
  axis_size = mesh.shape.get(FSDP_AXIS, 1)
  if axis_size == 1 or int(np.prod(shape)) < min_size:
    return P()
  # Largest dimension first; among equal sizes the earliest, so the choice does not depend on sort details.
  for dim in sorted(range(len(shape)), key=lambda d: (-shape[d], d)):
    if shape[dim] % axis_size == 0:
      spec = [None] * len(shape)
      spec[dim] = FSDP_AXIS
      return P(*spec)
  return P()


def _explicit_spec(name: str, shape: tuple[int, ...], tactic: Sequence[Any], mesh: Mesh) -> P:
  if len(tactic) != len(shape):
    raise ValueError(f"sharding rule for {name!r}: spec {tuple(tactic)} has {len(tactic)} entries but the "
                     f"parameter has shape {shape} (rank {len(shape)}); give one axis name or None per dimension.")
  entries = []
  for dim, entry in zip(shape, tactic):
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    unknown = [a for a in axes if a not in mesh.shape]
    if unknown:
      raise ValueError(f"sharding rule for {name!r}: spec {tuple(tactic)} names mesh axes {unknown} that "
                       f"config.mesh.axes {dict(mesh.shape)} does not have.")
    split = int(np.prod([mesh.shape[a] for a in axes]))
    if dim % split:
      raise ValueError(f"sharding rule for {name!r}: spec {tuple(tactic)} splits a dimension of size {dim} "
                       f"(shape {shape}) into {split} parts, which does not divide it; change the rule or "
                       f"config.mesh.axes.")
    entries.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return P(*entries)


def _spec_for(name: str, shape: tuple[int, ...], rules: Rules, mesh: Mesh, min_size: int) -> P:
  for pattern, tactic in rules:
    if not re.search(pattern, name):
      continue
    if isinstance(tactic, str):
      if tactic == "replicate":
        return P()
      if tactic == "fsdp":
        return _fsdp_spec(shape, mesh, min_size)
      raise ValueError(f"sharding rule ({pattern!r}, {tactic!r}) for {name!r}: unknown tactic; use "
                       f"'replicate', 'fsdp' or a PartitionSpec-like tuple such as (None, 'model').")
    if isinstance(tactic, (tuple, list)):
      return _explicit_spec(name, shape, tactic, mesh)
    raise ValueError(f"sharding rule ({pattern!r}, {tactic!r}) for {name!r}: a tactic is 'replicate', 'fsdp' "
                     f"or a tuple of mesh axis names / None, not {type(tactic).__name__}.")
  return P()


def param_shardings(abstract_params: Any, mesh: Mesh, rules: Rules, min_size: int = FSDP_MIN_SIZE) -> Any:
  """`NamedSharding`s for a parameter pytree (arrays or `jax.ShapeDtypeStruct`s) from `(regex, tactic)` rules.

  Paths are relative to the tree passed in; see the module docstring for the tactics.
  """
  for rule in rules:
    if len(rule) != 2:
      raise ValueError(f"sharding rule {rule!r}: each rule is a (regex, tactic) pair.")
  def one(path, leaf):
    return NamedSharding(mesh, _spec_for(path_name(path), tuple(leaf.shape), rules, mesh, min_size))
  return jax.tree_util.tree_map_with_path(one, abstract_params)


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Rules, min_size: int = FSDP_MIN_SIZE) -> Any:
  """Shardings for a whole train state with a `.params` field (e.g. `train.TrainState`).

  Every leaf whose path ends with a parameter's path and has its shape (the parameters themselves, Adam's
  mu and nu, whatever optax wrapper holds them) shards like that parameter; the rest is replicated.
  """
  if not hasattr(abstract_state, "params"):
    raise TypeError(f"state_shardings needs a train state with a `params` field, got "
                    f"{type(abstract_state).__name__}; use param_shardings for a bare parameter tree.")
  by_path = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_state.params):
    name = path_name(path)
    by_path[name] = (tuple(leaf.shape), _spec_for(name, tuple(leaf.shape), rules, mesh, min_size))

  def one(path, leaf):
    parts = path_name(path).split("/")
    for start in range(len(parts)):  # Longest suffix first.
      shape, spec = by_path.get("/".join(parts[start:]), (None, None))
      if shape == tuple(leaf.shape):
        return NamedSharding(mesh, spec)
    return replicated(mesh)
  return jax.tree_util.tree_map_with_path(one, abstract_state)
