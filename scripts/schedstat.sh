#!/usr/bin/env bash
# Per thread of a running process: CPU used and time spent waiting in the run queue
# (runnable but not running) over a few seconds, from /proc/<pid>/task/*/schedstat.
# Tells a thread that is slow because it works from one that is slow because the machine
# is busy (docs/scale.md "100k repos, 4 real workers").
#
#   scripts/schedstat.sh PID [SECONDS]   (default 15)
set -euo pipefail
pid=${1:?usage: $0 PID [SECONDS]}
secs=${2:-15}
snap() {
  for t in /proc/"$pid"/task/*; do
    # schedstat: ns on CPU, ns waiting in the run queue, time slices
    echo "$(basename "$t") $(tr ' ' _ < "$t"/comm) $(cat "$t"/schedstat)"
  done | sort
}
before=$(mktemp) after=$(mktemp)
trap 'rm -f "$before" "$after"' EXIT
snap > "$before"
sleep "$secs"
snap > "$after"
join "$before" "$after" |
  awk -v s="$secs" '{printf "%-8s %-18s cpu %.2f cores, run-queue wait %.2f of the wall time\n", $1, $2, ($7-$3)/1e9/s, ($8-$4)/1e9/s}' |
  sort -k4 -rn
