"""Shared test setup: 8 fake CPU devices so sharding code is exercised on one machine, and one on-disk cache of
compiled programs for the whole session.

Many tests compile the same tiny train steps and evaluation programs, in this process, in the other test worker
(`-n 2` in pyproject.toml) and in the `python -m ovseg_jax.main` subprocesses they start; JAX's persistent
compilation cache lets each distinct program compile once. Its key covers the program, the XLA flags, the
devices and the jax version, so a cached program is the program a fresh compile would give.
"""
import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "ovseg_jax_test_compile_cache"))
