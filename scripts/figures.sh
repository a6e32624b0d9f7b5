#!/usr/bin/env bash
# Prints the figures the fault and hostile-input tests recorded in FILE (the tests append
# `figure: <suite> <key> = <value>` lines to $GITMIRROR_FIGURES): every line, then per
# figure the total over the tests that recorded it (counts add up; seeds and other values
# show the last one).
set -euo pipefail
file=${1:?usage: scripts/figures.sh FILE}
[ -s "$file" ] || { echo "no figures recorded in $file"; exit 0; }
printf '\n==> figures\n'
sort "$file"
printf '\n==> totals\n'
awk -F' = ' '/^figure: /{k=substr($1, 9); if ($2 ~ /^[0-9]+$/ && k !~ /seed$/) t[k]+=$2; else t[k]=$2}
  END {for (k in t) printf "%-64s %s\n", k, t[k]}' "$file" | sort
