#!/usr/bin/env bash
# The fault and hostile-input suites of docs/reliability.md, with their figures.
#
#   scripts/reliability.sh          the bounded form (CI runs it on every submission as
#                                   part of scripts/test.sh; this runs it alone)
#   scripts/reliability.sh --long   the long form: 10x the faults, 10,000 cases per
#                                   property test (about an hour on 2 cores)
#
# Prints every `figure:` line the tests recorded, then the totals per figure.
set -euo pipefail
cd "$(dirname "$0")/.."

long=0
for arg in "$@"; do
  case "$arg" in
    --long) long=1 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

scripts/deps.sh test
if [ "$long" = 1 ]; then
  export GITMIRROR_FAULTS=long PROPTEST_CASES=10000
fi
figures=$(mktemp --suffix=.figures)
export GITMIRROR_FIGURES="$figures"

suites='binary(faults_worker) | binary(faults_coordinator) | binary(faults_formats)
  | binary(partition)
  | binary(hostile_index) | binary(hostile_wire) | binary(hostile_http)
  | binary(fuzz) | binary(trust) | binary(startup)'
status=0
cargo nextest run --workspace --locked --no-fail-fast -E "$suites" || status=$?

echo "($([ "$long" = 1 ] && echo long || echo bounded) form)"
scripts/figures.sh "$figures"
rm -f "$figures"
exit "$status"
