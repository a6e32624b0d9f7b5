#!/usr/bin/env bash
# Runs a working gitmirror on this machine, offline: a coordinator with an embedded
# worker, mirroring a small index of local upstream repositories served by `git daemon`
# on loopback. Everything lives under ./demo (or $GITMIRROR_DEMO_DIR); Ctrl-C stops it,
# and running it again resumes with the same state.
#
# While it runs:   curl -s localhost:8089/api/status
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

scripts/deps.sh run
cargo build --release --bins --locked

demo=$(realpath -m "${GITMIRROR_DEMO_DIR:-$root/demo}")
git_port=${GITMIRROR_DEMO_GIT_PORT:-9419}
mkdir -p "$demo/upstream" "$demo/state" "$demo/mirrors"

export GIT_AUTHOR_NAME=demo GIT_AUTHOR_EMAIL=demo@localhost
export GIT_COMMITTER_NAME=demo GIT_COMMITTER_EMAIL=demo@localhost

# Upstream repositories: a few small projects with branches and tags.
for name in alpha beta gamma delta epsilon; do
  bare="$demo/upstream/$name.git"
  [ -d "$bare" ] && continue
  work=$(mktemp -d)
  git -C "$work" init -q -b main
  for i in 1 2 3; do
    echo "$name change $i" >"$work/README"
    git -C "$work" add README
    git -C "$work" commit -q -m "$name: change $i"
  done
  git -C "$work" tag v1.0
  git -C "$work" branch next
  git clone -q --bare "$work" "$bare"
  rm -rf "$work"
done

# The index, in compass-ci "upstream-repos" layout: <first>/<project>/<name>.
index="$demo/index"
if [ ! -d "$index/.git" ]; then
  git init -q -b master "$index"
  for name in alpha beta gamma delta epsilon; do
    first=${name:0:1}
    mkdir -p "$index/$first/$name"
    printf 'url: git://127.0.0.1:%s/%s.git\n' "$git_port" "$name" >"$index/$first/$name/$name"
  done
  git -C "$index" add -A
  git -C "$index" commit -q -m "demo index"
fi

cat >"$demo/gitmirrord.yaml" <<YAML
# Quickstart configuration: see man gitmirrord.yaml(5) for every key.
listen: 127.0.0.1:5555
http_listen: 127.0.0.1:8089
state_dir: $demo/state
indexes:
  - name: demo
    url: $index
    poll_interval: 10s
local_worker:
  mirror_dir: $demo/mirrors
  fetch:
    min_interval: 30s
YAML

# git-daemon itself, not the `git daemon` wrapper (which would leave it running when
# killed), with its log in the demo dir rather than on this terminal.
"$(git --exec-path)/git-daemon" --export-all --reuseaddr --verbose \
  --base-path="$demo/upstream" --listen=127.0.0.1 --port="$git_port" \
  "$demo/upstream" 2>>"$demo/git-daemon.log" &
daemon_pid=$!
trap 'kill "$daemon_pid" 2>/dev/null || true; wait "$daemon_pid" 2>/dev/null || true' EXIT

cat <<MSG

gitmirror quickstart
  upstream repos : $demo/upstream (git://127.0.0.1:$git_port/, log: $demo/git-daemon.log)
  index          : $index  (add a file a/abc/abc with "url: ..." and commit to add a repo)
  mirrors        : $demo/mirrors
  status         : curl -s localhost:8089/api/status
                   curl -s localhost:8089/api/repos
  stop           : Ctrl-C

MSG
target/release/gitmirrord --config "$demo/gitmirrord.yaml"
