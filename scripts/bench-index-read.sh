#!/bin/bash
# The first read of an index by a real coordinator (docs/scale.md, issue 9 tenth session):
# gitmirrord started on an empty state dir with one index, its `index read` line's
# read_s, and its CPU time and peak RSS taken from /proc when that line appears.
#
#   scripts/bench-index-read.sh [GITMIRRORD] [INDEX_GIT_DIR] [ENTRIES]
#
# Defaults: target/release/gitmirrord, the 1M index gitmirror-sim leaves in
# /var/tmp/sim/w1m (build one with `gitmirror-sim --repos N --index-only --work-dir DIR`).
set -euo pipefail
bin=${1:-target/release/gitmirrord}
index=${2:-/var/tmp/sim/w1m/index-1000000.git}
entries=${3:-1000000}
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
cat > "$work/gitmirrord.yaml" <<YAML
listen: 127.0.0.1:0
http_listen: 127.0.0.1:0
state_dir: "$work/state"
allow_file_urls: true
indexes:
  - name: bench
    url: "$index"
    poll_interval: 1h
YAML
RUST_LOG=info "$bin" --config "$work/gitmirrord.yaml" > "$work/log" 2>&1 &
pid=$!
for _ in $(seq 1 2400); do
    grep -q "entries=$entries " "$work/log" && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/log"; exit 1; }
    sleep 0.25
done
cpu=$(awk '{print ($14 + $15) / 100}' "/proc/$pid/stat")
hwm=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$pid/status")
read_s=$(grep "entries=$entries " "$work/log" | grep -o 'read_s=[0-9.]*' | cut -d= -f2)
echo "read_s=$read_s cpu_s=$cpu peak_rss_mib=$hwm"
