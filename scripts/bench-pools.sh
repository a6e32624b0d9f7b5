#!/usr/bin/env bash
# Fork pools (issue 13 must-show 2, SPEC §14): what adding a fork of an already mirrored
# project costs upstream. Runs the real coordinator and a worker with `fetch.pools: true`
# against a loopback `git daemon` behind a byte-counting proxy
# (tests/tests/pools.rs::spec_14_fork_transfers_under_10_percent): a generated project of
# COMMITS commits (default 1000: source-like text edited over and over plus a 12 KiB
# binary asset per commit) is mirrored, then a fork with 5 commits of its own enters the
# index. Prints the origin's pack bytes, the bytes the fork's upstream sent (every
# connection, ref advertisements included), their ratio (must be ≤ 10 %), and the disk of
# the worker's mirror_dir against one plain `git clone --mirror` of the origin.
#
#   scripts/bench-pools.sh [COMMITS]
set -euo pipefail
cd "$(dirname "$0")/.."
commits=${1:-1000}
nice -n 10 cargo build -q --bins
out=$(GITMIRROR_BENCH_COMMITS=$commits nice -n 10 cargo test -q -p gitmirror-tests --test pools -- \
  --exact spec_14_fork_transfers_under_10_percent --nocapture 2>&1) || {
  printf '%s\n' "$out" | tail -40
  exit 1
}
printf '%s\n' "$out" | grep '^figure: pools fork_bytes\.' | sed 's/^figure: pools fork_bytes\.//'
