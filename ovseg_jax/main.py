r"""Trains and evaluates whatever method a config names (`config.trainer`: sseg, selftrain, clip).

  python -m ovseg_jax.main --config=configs/sseg_demo.py --workdir=/tmp/sseg_demo [--config.total_steps=100]
  python -m ovseg_jax.main --config=configs/selftrain_demo.py --workdir=/tmp/sseg_plus \
      --config.teacher_workdir=/tmp/sseg_demo

Re-running the same command resumes from the latest checkpoint in the workdir. Unknown `--config.*` keys
are rejected at start with the key's name.
"""
from absl import app

from ovseg_jax import cli


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from ovseg_jax.methods import registry  # Imported after flag parsing so a bad flag fails fast.
  from ovseg_jax.train import distributed
  method = registry.get(cli.CONFIG.value)
  distributed.initialize_distributed()
  method.train_and_evaluate(cli.CONFIG.value, cli.WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
