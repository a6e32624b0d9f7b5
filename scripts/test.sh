#!/usr/bin/env bash
# Runs the whole gitmirror test suite on a bare Debian 12 machine: installs what the
# tests need (apt packages, cargo tools), checks formatting and lints, runs every Rust
# test (unit, in-process, end-to-end against real git servers), then the packaging and
# systemd system test.
#
#   scripts/test.sh            everything
#   scripts/test.sh --no-system   skip the packaging/systemd-nspawn system test
set -euo pipefail
cd "$(dirname "$0")/.."

system=1
for arg in "$@"; do
  case "$arg" in
    --no-system) system=0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
scripts/deps.sh test

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# Declared dependencies no crate uses (issue 11 part 4) do not come back.
step "cargo machete (unused dependencies)"
if ! command -v cargo-machete >/dev/null; then
  cargo install --locked cargo-machete
fi
cargo machete

# nextest builds every target first, the binaries the end-to-end tests run included.
step "running tests"
# The fault and hostile-input tests record their figures here (docs/reliability.md).
figures=target/reliability-figures.txt
mkdir -p target && : > "$figures"
GITMIRROR_FIGURES="$PWD/$figures" GITMIRROR_REQUIRE_CHROMIUM=1 \
  GITMIRROR_REQUIRE_SSHD=1 GITMIRROR_REQUIRE_PROMETHEUS=1 \
  cargo nextest run --workspace --locked --no-fail-fast
scripts/figures.sh "$figures"

if [ "$system" = 1 ]; then
  step "packaging and systemd system test"
  tests/packaging/run.sh
fi

step "all tests passed"
