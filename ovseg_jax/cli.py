"""Command-line plumbing shared by the entry points: config/workdir flags and a clean flag-error exit."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

# The input pipeline's TensorFlow must not print its C++ start-up noise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ovseg_jax import allocator  # noqa: E402

CONFIG = config_flags.DEFINE_config_file("config", None, "Config file: configs/NAME.py[:variant].",
                                         lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Directory with checkpoints, metrics, results and overlays.")


def _parse(argv: list[str]) -> list[str]:
  """Parses flags; a misspelt `--config.key` stops here with the key's name instead of a traceback."""
  try:
    argv = flags.FLAGS(argv)
    if CONFIG.value is not None:  # config_flags reports a config file it could not load only when it is used.
      _ = CONFIG.value.keys()
  except (flags.Error, KeyError, AttributeError, ValueError, TypeError, OSError) as e:
    message = str(e).strip("'\"").replace("\\n", " ")
    if "Traceback" in message:  # A config file that raised: its own last line says what is wrong.
      message = message.strip().splitlines()[-1]
    elif isinstance(e, OSError):  # A missing or unreadable config file: its last line names the path and cause.
      message = f"cannot load the config file: {message.strip().splitlines()[-1].strip()}"
    sys.stderr.write(f"error: bad flag or config override: {message}\n"
                     f"(see --helpfull; config keys are listed in the config file)\n")
    sys.exit(2)
  if not flags.FLAGS["verbosity"].present:  # Library INFO chatter (orbax) would drown the progress lines.
    logging.set_verbosity(logging.WARNING)
  return argv


def run(main: Callable[[list[str]], None], required: tuple[str, ...] = ("config", "workdir")) -> None:
  """Runs an entry point (`python -m MODULE`) with a fast allocator preloaded where one is installed."""
  spec = getattr(sys.modules["__main__"], "__spec__", None)
  if spec is not None:
    allocator.reexec_with_fast_allocator(spec.name)
  flags.mark_flags_as_required(list(required))
  app.run(main, flags_parser=_parse)
