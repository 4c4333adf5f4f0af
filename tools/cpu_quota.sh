#!/bin/bash
# Runs a command with its CPU time cut to (cores / FACTOR), to see how a machine FACTOR times slower at everything
# (compiling and compute) would run it:
#
#   sudo tools/cpu_quota.sh 2 python -m pytest -q
#
# The command and its children run in a new cgroup with a CFS quota of (cores * 10 ms / FACTOR) per 10 ms
# (cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`); needs root. Threads that spin while waiting use the quota too,
# so this errs on the slow side. Prints the cgroup's throttling counts to stderr at the end.
set -euo pipefail

if [[ $# -lt 2 ]] || ! [[ $1 =~ ^[0-9]+([.][0-9]+)?$ ]] || [[ $1 =~ ^0+([.]0*)?$ ]]; then
  echo "usage: $0 FACTOR COMMAND [ARGS...]  (FACTOR > 0: the machine's CPU time is divided by it)" >&2
  exit 2
fi
factor=$1
shift
period_us=10000
quota_us=$(awk -v cores="$(nproc)" -v f="$factor" -v p="$period_us" 'BEGIN { printf "%d", cores * p / f }')

if [[ -f /sys/fs/cgroup/cgroup.controllers ]] && grep -qw cpu /sys/fs/cgroup/cgroup.controllers; then
  group=/sys/fs/cgroup/cpu_quota_$$
  mkdir "$group"
  echo "$quota_us $period_us" > "$group/cpu.max"
elif [[ -d /sys/fs/cgroup/cpu ]]; then
  group=/sys/fs/cgroup/cpu/cpu_quota_$$
  mkdir "$group"
  echo "$period_us" > "$group/cpu.cfs_period_us"
  echo "$quota_us" > "$group/cpu.cfs_quota_us"
else
  echo "$0: no cgroup cpu controller under /sys/fs/cgroup; this needs Linux cgroups and root." >&2
  exit 1
fi
echo $$ > "$group/cgroup.procs"
status=0
"$@" || status=$?
echo "cpu_quota: $quota_us us per $period_us us; $(tr '\n' ' ' < "$group/cpu.stat")" >&2
echo $$ > "$(dirname "$group")/cgroup.procs"  # Out of the group, so that it can be removed.
rmdir "$group"
exit "$status"
