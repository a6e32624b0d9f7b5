#!/usr/bin/env bash
# Initial mirror speed on real repos (issue 11 §2): the worker's clone code against
# `git clone --mirror`, 1 and 4 at a time, every repo served by one loopback `git daemon`
# (gitmirror-worker/benches/clone_real.rs does the timing and prints wall and CPU ratios).
#
#   scripts/bench-clone.sh                 # the default set of public repos (network once)
#   scripts/bench-clone.sh SRC...          # bare repos on disk, or URLs to mirror first
#   scripts/bench-clone.sh --small N       # N generated small repos (3 commits, 2 tags)
#
# URLs are mirrored once into $GITMIRROR_BENCH_CACHE (default target/bench-clone/cache,
# reused by later runs). Each source is then copied with `git clone --mirror --no-local`
# (one pack, as a hosting service serves it) and given a bitmap into
# target/bench-clone/serve/. GITMIRROR_BENCH_CONCURRENCY (default 1,4) and
# GITMIRROR_BENCH_ROUNDS (default 3) pass through. Not part of the test suite: minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

defaults=(
  https://github.com/BurntSushi/ripgrep  # 1,575 refs (1,287 refs/pull), 22k objects
  https://github.com/serde-rs/serde      # ~1,570 refs, 41k objects
  https://github.com/sharkdp/fd          # ~1,180 refs, no annotated tags
  https://github.com/rust-lang/log       # ~500 refs
  https://github.com/dtolnay/anyhow      # ~320 refs, small
  https://github.com/deuxfleurs-org/garage # 114 refs, 21k objects, 44 MB
)
small=0
if [ "${1:-}" = --small ]; then
  small=${2:?--small needs a number}
  shift 2
elif [ $# -eq 0 ]; then
  set -- "${defaults[@]}"
fi

cache=${GITMIRROR_BENCH_CACHE:-target/bench-clone/cache}
serve=target/bench-clone/serve
rm -rf "$serve"
mkdir -p "$serve" "$cache"

# Small repos, as most of an index is: a few commits, a branch, a light and an annotated tag.
for ((i = 0; i < small; i++)); do
  d=$serve/small$i.git
  git init -q --bare -b main "$d"
  w=$(mktemp -d)
  git -C "$w" init -q -b main
  for c in 1 2 3; do
    echo "$i $c" >"$w/file$c"
    git -C "$w" add "file$c"
    git -C "$w" -c user.name=b -c user.email=b@example.org commit -q -m "commit $c"
  done
  git -C "$w" branch dev HEAD~1
  git -C "$w" tag v1 HEAD~2
  git -C "$w" -c user.name=b -c user.email=b@example.org tag -a v2 -m v2
  git -C "$w" push -q "$PWD/$d" 'refs/*:refs/*'
  rm -rf "$w"
done

# A short, unique name for a source: the repo name (for `.../owner+name/repo`, the
# fetch tool's layout, and `.../owner/name`, the last component that is not `repo`).
name_of() {
  local s=${1%/} base
  s=${s%.git}
  base=$(basename "$s")
  if [ "$base" = repo ]; then
    base=$(basename "$(dirname "$s")")
  fi
  base=${base##*+}
  printf '%s' "${base//[^A-Za-z0-9._-]/_}"
}

for src in "$@"; do
  name=$(name_of "$src")
  if [ ! -d "$src" ]; then
    if [ ! -d "$cache/$name.git" ]; then
      echo "mirroring $src into $cache/$name.git"
      git clone --mirror -q "$src" "$cache/$name.git.part"
      mv "$cache/$name.git.part" "$cache/$name.git"
    fi
    src=$cache/$name.git
  fi
  if [ -e "$serve/$name.git" ]; then
    echo "two sources named $name; rename one" >&2
    exit 2
  fi
  git clone --mirror -q --no-local "$src" "$serve/$name.git"
  git --git-dir "$serve/$name.git" repack -adq --write-bitmap-index
done
du -sh "$serve"

nice -n 10 cargo bench -q -p gitmirror-worker --bench clone_real --no-run
echo "load before: $(cat /proc/loadavg)"
GITMIRROR_BENCH_REPOS=$PWD/$serve cargo bench -q -p gitmirror-worker --bench clone_real
echo "load after: $(cat /proc/loadavg)"
