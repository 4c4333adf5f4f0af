"""Shared test setup: 8 fake CPU devices so sharding code is exercised on one machine; one on-disk cache of compiled
programs for the whole session; one tiny trained S-Seg demo workdir for the tests that restore a checkpoint.

Many tests compile the same tiny train steps and evaluation programs, in this process, in the other test worker
(`-n 2` in pyproject.toml) and in the `python -m ovseg_jax.main` subprocesses they start; JAX's persistent
compilation cache lets each distinct program compile once. Its key covers the program, the XLA flags, the
devices and the jax version, so a cached program is the program a fresh compile would give.
"""
import fcntl
import os
import shutil
import tempfile

import pytest

# XLA's cheap backend optimisation and its older loop emitters instead of the MLIR fusion emitters: the tests' tiny
# programs run a few steps, so compiling them dominates (each about a third less CPU time; the suite 354 s -> 263 s);
# the programs compute the same operations. XLA:CPU's concurrency-optimised scheduler is off: with it, a sharded
# train step loaded from the compilation cache ran two all-gathers at once on the 8 host devices and deadlocked in
# their rendezvous (4 of 4 runs; 0 of 5 without it).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
                      "--xla_llvm_disable_expensive_passes=true --xla_cpu_use_fusion_emitters=false "
                      "--xla_cpu_enable_concurrency_optimized_scheduler=false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "ovseg_jax_test_compile_cache"))


@pytest.fixture(scope="session")
def demo_workdir(tmp_path_factory, request):
  """A 6-step S-Seg run of `configs/sseg_demo.py:tiny` with its demo data (checkpoint, config.json, results).

  Read-only for the tests. Under pytest-xdist the workers share one run: the first to need it trains it under a
  file lock in the session's common temporary directory, the others wait and reuse it."""
  from configs import sseg_demo
  from ovseg_jax.methods.sseg import trainer
  if hasattr(request.config, "workerinput"):  # An xdist worker: its base temp dir is one of the session's.
    root = tmp_path_factory.getbasetemp().parent / "sseg_demo"
  else:
    root = tmp_path_factory.mktemp("sseg_demo")
  run = root / "run"
  root.mkdir(exist_ok=True)
  with open(root / "lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (run / "results.json").exists():
      shutil.rmtree(run, ignore_errors=True)  # A worker that failed half way leaves nothing to reuse.
      config = sseg_demo.get_config("tiny")
      config.data.demo_root = str(root / "demo")
      trainer.train_and_evaluate(config, run)
  return run
