#!/usr/bin/env bash
# Trains on a Cloud TPU VM slice: create it, copy this checkout to every worker, install the requirements,
# run `python -m ovseg_jax.main` on all workers (their output streams here), delete the slice on exit.
#
#   bash launch/tpu_pod.sh --project=my-proj --zone=us-central2-b --accelerator-type=v4-32 \
#     --config=configs/sseg_cc12m.py --workdir=gs://my-bucket/runs/sseg_cc12m [--dry-run] [--keep] \
#     [-- --config.batch_size=1024 ...]
#
# Every option also reads an environment variable (see launch/README.md). --dry-run prints each command
# instead of running it.
set -euo pipefail

usage() {
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

project="${OVSEG_TPU_PROJECT:-}"
zone="${OVSEG_TPU_ZONE:-}"
accelerator="${OVSEG_TPU_ACCELERATOR:-v4-32}"
runtime="${OVSEG_TPU_RUNTIME:-tpu-ubuntu2204-base}"
name="${OVSEG_TPU_NAME:-ovseg-${USER:-user}}"
config="${OVSEG_CONFIG:-}"
workdir="${OVSEG_WORKDIR:-}"
git_url="${OVSEG_GIT_URL:-}"
queued="${OVSEG_TPU_QUEUED:-0}"
spot="${OVSEG_TPU_SPOT:-0}"
keep=0
dry_run=0
extra_args=()

while (($#)); do
  case "$1" in
    --project=*) project="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --accelerator-type=*) accelerator="${1#*=}" ;;
    --runtime-version=*) runtime="${1#*=}" ;;
    --name=*) name="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --git=*) git_url="${1#*=}" ;;
    --queued) queued=1 ;;
    --spot) spot=1 ;;
    --keep) keep=1 ;;
    --dry-run) dry_run=1 ;;
    -h | --help) usage 0 ;;
    --) shift; extra_args=("$@"); break ;;
    *) echo "tpu_pod.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

missing=()
[[ -n "$project" ]] || missing+=("--project (OVSEG_TPU_PROJECT)")
[[ -n "$zone" ]] || missing+=("--zone (OVSEG_TPU_ZONE)")
[[ -n "$config" ]] || missing+=("--config (OVSEG_CONFIG)")
[[ -n "$workdir" ]] || missing+=("--workdir (OVSEG_WORKDIR)")
if ((${#missing[@]})); then
  printf 'tpu_pod.sh: missing %s\n' "${missing[@]}" >&2
  exit 2
fi
if [[ "$workdir" != gs://* ]]; then
  echo "tpu_pod.sh: --workdir=$workdir must be a gs:// path: every worker writes checkpoints there." >&2
  exit 2
fi

# Prints a command with shell quoting where needed, so a dry run can be pasted back.
show() {
  local out=() arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./=:@%+,-]+$ ]]; then
      out+=("$arg")
    else
      out+=("'${arg//\'/\'\\\'\'}'")
    fi
  done
  echo "+ ${out[*]}"
}

run() {
  show "$@"
  if ((!dry_run)); then
    "$@"
  fi
}

where=(--zone="$zone" --project="$project")
repo_root="$(cd "$(dirname "$0")/.." && pwd)"
remote_dir="ovseg_jax"
archive="${TMPDIR:-/tmp}/${name}-code.tar.gz"

quoted_args=""
if ((${#extra_args[@]})); then
  quoted_args=" $(printf '%q ' "${extra_args[@]}")"
  quoted_args="${quoted_args% }"
fi
train_command="set -o pipefail && cd ~/${remote_dir} && OVSEG_DISTRIBUTED=tpu python3 -m ovseg_jax.main \
--config=$(printf '%q' "$config") --workdir=$(printf '%q' "$workdir")${quoted_args} 2>&1 | tee -a ~/train.log"
install_command="cd ~/${remote_dir} && python3 -m pip install -q -r requirements.txt && \
python3 -m pip install -q \"jax[tpu]==\$(sed -n 's/^jax==//p' requirements.txt)\""

delete() {
  if ((queued)); then
    run gcloud compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
  fi
}

spot_flag=()
((spot)) && spot_flag=(--spot)
if ((queued)); then
  run gcloud compute tpus queued-resources create "$name" --node-id="$name" "${where[@]}" \
    --accelerator-type="$accelerator" --runtime-version="$runtime" "${spot_flag[@]}"
else
  run gcloud compute tpus tpu-vm create "$name" "${where[@]}" \
    --accelerator-type="$accelerator" --version="$runtime" "${spot_flag[@]}"
fi
if ((keep)); then
  echo "tpu_pod.sh: --keep: $name stays up; delete it with: gcloud compute tpus tpu-vm delete $name ${where[*]}" >&2
else
  trap delete EXIT
fi

if ((queued)); then
  # A queued resource is granted later; the slice exists only once it is ACTIVE.
  show gcloud compute tpus queued-resources describe "$name" "${where[@]}" --format='value(state.state)'
  while ((!dry_run)); do
    state="$(gcloud compute tpus queued-resources describe "$name" "${where[@]}" --format='value(state.state)')"
    [[ "$state" == ACTIVE ]] && break
    case "$state" in FAILED | SUSPENDED) echo "tpu_pod.sh: queued resource $name is $state" >&2; exit 1 ;; esac
    echo "tpu_pod.sh: $name is $state; waiting"
    sleep 60
  done
fi

if [[ -n "$git_url" ]]; then
  run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all \
    --command="rm -rf ~/${remote_dir} && git clone --depth=1 $(printf '%q' "$git_url") ~/${remote_dir}"
else
  run tar -czf "$archive" --exclude=.git --exclude=__pycache__ -C "$repo_root" .
  run gcloud compute tpus tpu-vm scp "$archive" "$name:~/code.tar.gz" "${where[@]}" --worker=all
  run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all \
    --command="rm -rf ~/${remote_dir} && mkdir -p ~/${remote_dir} && tar -xzf ~/code.tar.gz -C ~/${remote_dir}"
fi
run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="$install_command"
run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="$train_command"
