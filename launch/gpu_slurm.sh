#!/usr/bin/env bash
# Trains on a GPU cluster with SLURM: one process per node drives all of that node's GPUs; the processes
# find each other through ovseg_jax.distributed (coordinator = first node of the step, from SLURM variables).
#
#   OVSEG_CONFIG=configs/sseg_cc12m.py OVSEG_WORKDIR=/shared/runs/sseg_cc12m \
#     sbatch --nodes=4 launch/gpu_slurm.sh [--config.batch_size=1024 ...]
#
# The #SBATCH lines below are defaults; sbatch options on the command line override them. Run it with
# --dry-run as first argument (outside SLURM) to print the srun command.
#SBATCH --job-name=ovseg
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

dry_run=0
if [[ "${1:-}" == --dry-run ]]; then
  dry_run=1
  shift
fi
: "${OVSEG_CONFIG:?set OVSEG_CONFIG to a config file, e.g. configs/sseg_cc12m.py}"
: "${OVSEG_WORKDIR:?set OVSEG_WORKDIR to a directory every node can write}"

# sbatch runs a copy of this script; the checkout is where the job was submitted from.
cd "${OVSEG_REPO:-${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}}"
if [[ -n "${OVSEG_VENV:-}" ]]; then
  # shellcheck disable=SC1091
  source "$OVSEG_VENV/bin/activate"
fi

command=(srun --ntasks-per-node=1 --kill-on-bad-exit=1
  python -m ovseg_jax.main --config="$OVSEG_CONFIG" --workdir="$OVSEG_WORKDIR" "$@")
if ((dry_run)); then
  echo "+ ${command[*]}"
else
  "${command[@]}"
fi
