"""Multi-host start-up in one call: `initialize_distributed()` before any other JAX use.

One process per host. The decision is a pure function of the environment (`distributed_settings`):
  OVSEG_DISTRIBUTED=off                     single process, whatever else is set;
  OVSEG_COORDINATOR_ADDRESS, OVSEG_NUM_PROCESSES, OVSEG_PROCESS_ID
                                            explicit (any cluster); all three or none;
  OVSEG_DISTRIBUTED=tpu, or TPU_WORKER_HOSTNAMES listing several hosts
                                            Cloud TPU pod: `jax.distributed.initialize()` finds the rest;
  SLURM_NTASKS > 1 with SLURM_PROCID        GPU cluster under srun: the coordinator is the first host of
                                            SLURM_STEP_NODELIST (or SLURM_JOB_NODELIST), port
                                            OVSEG_COORDINATOR_PORT or one derived from SLURM_JOB_ID;
  otherwise                                 single process: nothing to do.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

import jax

DEFAULT_PORT = 8476


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
  """Arguments of `jax.distributed.initialize`; None lets JAX detect them (Cloud TPU)."""
  source: str  # 'explicit', 'tpu' or 'slurm'.
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None


def _int(env: Mapping[str, str], name: str) -> int:
  try:
    return int(env[name])
  except ValueError:
    raise ValueError(f"environment variable {name}={env[name]!r} must be an integer.") from None


def first_host(nodelist: str) -> str:
  """The first host of a SLURM node list: 'gpu[003-005,9],cpu1' -> 'gpu003'."""
  first = re.split(r",(?![^\[]*\])", nodelist.strip())[0]  # Commas outside brackets separate hosts.
  host = re.sub(r"\[([^\],\-]+)[^\]]*\]", r"\1", first)  # Each bracket range contributes its first value.
  if not host or "[" in host or "]" in host:
    raise ValueError(f"cannot read the first host of SLURM node list {nodelist!r}; set "
                     f"OVSEG_COORDINATOR_ADDRESS=host:port instead.")
  return host


def _explicit(env: Mapping[str, str]) -> DistributedSettings | None:
  names = ("OVSEG_COORDINATOR_ADDRESS", "OVSEG_NUM_PROCESSES", "OVSEG_PROCESS_ID")
  given = [n for n in names if env.get(n)]
  if not given:
    return None
  if len(given) < len(names):
    missing = [n for n in names if n not in given]
    raise ValueError(f"{', '.join(given)} set but {', '.join(missing)} not: set all three for an explicit "
                     f"multi-process start, or none.")
  num, pid = _int(env, "OVSEG_NUM_PROCESSES"), _int(env, "OVSEG_PROCESS_ID")
  if not 0 <= pid < num:
    raise ValueError(f"OVSEG_PROCESS_ID={pid} must be in [0, OVSEG_NUM_PROCESSES={num}).")
  if num == 1:
    return None
  return DistributedSettings("explicit", env["OVSEG_COORDINATOR_ADDRESS"], num, pid)


def _slurm(env: Mapping[str, str]) -> DistributedSettings | None:
  # SLURM_PROCID is set only inside a job; a single task needs no coordinator.
  if "SLURM_PROCID" not in env or "SLURM_NTASKS" not in env or _int(env, "SLURM_NTASKS") <= 1:
    return None
  nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
  if not nodelist:
    raise ValueError("SLURM_NTASKS > 1 but neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST is set; start "
                     "with srun, or set OVSEG_COORDINATOR_ADDRESS, OVSEG_NUM_PROCESSES and OVSEG_PROCESS_ID.")
  if env.get("OVSEG_COORDINATOR_PORT"):
    port = _int(env, "OVSEG_COORDINATOR_PORT")
  else:  # Jobs sharing a first node get different ports.
    port = DEFAULT_PORT + (_int(env, "SLURM_JOB_ID") % 1000 if env.get("SLURM_JOB_ID") else 0)
  return DistributedSettings("slurm", f"{first_host(nodelist)}:{port}", _int(env, "SLURM_NTASKS"),
                             _int(env, "SLURM_PROCID"))


def distributed_settings(env: Mapping[str, str]) -> DistributedSettings | None:
  """How this process joins the job, from environment variables; None for a single-process run."""
  mode = env.get("OVSEG_DISTRIBUTED", "auto")
  if mode not in ("auto", "off", "tpu"):
    raise ValueError(f"OVSEG_DISTRIBUTED={mode!r}: use 'auto' (default), 'off' or 'tpu'.")
  if mode == "off":
    return None
  explicit = _explicit(env)
  if explicit is not None:
    return explicit
  tpu_hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  if mode == "tpu" or len(tpu_hosts) > 1:
    return DistributedSettings("tpu")
  return _slurm(env)


def initialize_distributed(env: Mapping[str, str] | None = None) -> DistributedSettings | None:
  """Calls `jax.distributed.initialize` as the environment says (see the module docstring); idempotent."""
  settings = distributed_settings(os.environ if env is None else env)
  if settings is None or jax.distributed.is_initialized():
    return settings
  jax.distributed.initialize(coordinator_address=settings.coordinator_address,
                             num_processes=settings.num_processes, process_id=settings.process_id)
  return settings
