"""The fast allocator is really mapped into a re-executed command, and the opt-out keeps glibc's malloc."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ovseg_jax import allocator

PROBE = """
import os
from ovseg_jax import allocator
allocator.reexec_with_fast_allocator("probe")
maps = open("/proc/self/maps").read()
print(allocator.active(), "libmimalloc" in maps or "libtcmalloc" in maps, os.environ.get("MIMALLOC_PURGE_DELAY", "unset"))
"""


def _run_probe(tmp_path: Path, **env: str) -> str:
  (tmp_path / "probe.py").write_text(PROBE)
  root = Path(__file__).resolve().parents[1]
  inherited = ("LD_PRELOAD", allocator.OPT_OUT, allocator.MIMALLOC_PURGE_DELAY)  # Each test sets its own.
  environ = {k: v for k, v in os.environ.items() if k not in inherited}
  environ.update(PYTHONPATH=f"{tmp_path}{os.pathsep}{root}", **env)
  return subprocess.run([sys.executable, "-m", "probe"], env=environ, cwd=tmp_path, capture_output=True, text=True,
                        check=True).stdout.split()


@pytest.mark.skipif(allocator.available() is None or sys.platform != "linux", reason="no fast allocator installed")
def test_reexecuted_command_runs_with_the_library_mapped(tmp_path):
  name = allocator.available()[0]
  purge_delay = allocator.KEEP_FREED_PAGES if name == "mimalloc" else "unset"
  assert _run_probe(tmp_path) == [name, "True", purge_delay]


@pytest.mark.skipif(allocator.available() is None or allocator.available()[0] != "mimalloc" or sys.platform != "linux",
                    reason="mimalloc not installed")
def test_an_explicit_mimalloc_purge_delay_is_kept(tmp_path):
  assert _run_probe(tmp_path, MIMALLOC_PURGE_DELAY="250") == ["mimalloc", "True", "250"]


def test_opt_out_keeps_the_system_allocator(tmp_path):
  assert _run_probe(tmp_path, OVSEG_MALLOC="system") == ["system", "False", "unset"]
