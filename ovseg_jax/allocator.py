"""A faster malloc for CPU runs, preloaded by re-executing the command.

XLA's CPU runtime allocates and frees large buffers on every step; glibc's malloc hands them back to the kernel
each time, so a step pays page faults and system time that mimalloc or tcmalloc avoid by keeping freed memory
(benchmarks/README.md has the before/after). mimalloc comes from PyPI (`cmeel-mimalloc`, in requirements.txt),
so a fresh machine has it without system packages; Debian's libtcmalloc-minimal4 is the fallback. A library
must be preloaded before the process starts, hence the re-execution. `OVSEG_MALLOC=system` keeps glibc's.

mimalloc by default returns pages freed for 10 ms to the kernel, so a step's temporaries, freed and allocated again
by the next step, fault their pages in again every step. It runs with `MIMALLOC_PURGE_DELAY=-1` (keep them; an
explicit setting wins): on the demo, 5x fewer page faults, half the system time and 6-7% more steps per second.
"""
from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

OPT_OUT = "OVSEG_MALLOC"
MIMALLOC_PURGE_DELAY, KEEP_FREED_PAGES = "MIMALLOC_PURGE_DELAY", "-1"
_CANDIDATES = (
    ("mimalloc", Path(sysconfig.get_paths()["purelib"]) / "cmeel.prefix" / "lib" / "libmimalloc.so.3"),
    ("tcmalloc", Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")),
)


def available() -> tuple[str, Path] | None:
  """(name, path) of the first installed fast allocator, or None."""
  return next(((name, path) for name, path in _CANDIDATES if path.is_file()), None)


def active() -> str:
  """The allocator this process runs with: 'mimalloc', 'tcmalloc' or 'system'."""
  preloaded = os.environ.get("LD_PRELOAD", "")
  return next((name for name, _ in _CANDIDATES if name in preloaded), "system")


def reexec_with_fast_allocator(module: str) -> None:
  """Restarts `python -m module <same arguments>` with a fast allocator preloaded, unless one already is,
  none is installed, or OVSEG_MALLOC=system. Returns only when no restart happens."""
  found = available()
  if found is None or active() != "system" or os.environ.get(OPT_OUT) == "system" or sys.platform != "linux":
    return
  name, path = found
  preload = " ".join(p for p in (str(path), os.environ.get("LD_PRELOAD", "")) if p)
  environ = {**os.environ, "LD_PRELOAD": preload}
  if name == "mimalloc":
    environ.setdefault(MIMALLOC_PURGE_DELAY, KEEP_FREED_PAGES)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], environ)
