r"""Trains and evaluates whatever method a config names (`config.trainer`: sseg, selftrain, clip).

  python -m ovseg_jax.main --config=configs/sseg_demo.py --workdir=/tmp/sseg_demo [--config.total_steps=100]
  python -m ovseg_jax.main --config=configs/selftrain_demo.py --workdir=/tmp/sseg_plus \
      --config.teacher_workdir=/tmp/sseg_demo

Re-running the same command resumes from the latest checkpoint in the workdir. Unknown `--config.*` keys
are rejected at start with the key's name; values that cannot work (a zero interval, a malformed pair) and a
checkpoint of another model stop the start with one line and exit status 2, before anything is compiled or
written; a NaN/Inf loss or state and unreadable checkpoints stop it with one line and status 1. After SIGTERM
the run checkpoints and exits with status 75 (`train.loop.PREEMPTED_EXIT_STATUS`): run the command again.
"""
import sys

from absl import app

from ovseg_jax import cli


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from ovseg_jax.methods import registry  # Imported after flag parsing so a bad flag fails fast.
  from ovseg_jax.train import checkpoint, config_checks, distributed, progress
  try:
    method = registry.get(cli.CONFIG.value)
    distributed.initialize_distributed()
    method.train_and_evaluate(cli.CONFIG.value, cli.WORKDIR.value)
  except (config_checks.ConfigError, checkpoint.CheckpointMismatchError) as e:
    sys.stderr.write(f"error: {e}\n")
    sys.exit(2)
  except (progress.NonFiniteError, checkpoint.CheckpointCorruptError) as e:
    sys.stderr.write(f"error: {e}\n")
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main)
