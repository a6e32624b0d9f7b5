#!/usr/bin/env bash
# Installs what gitmirror needs on Debian 12: `deps.sh run` for the quickstart,
# `deps.sh test` for the test suite. Idempotent; skips what is already there.
set -euo pipefail

want=(git curl ca-certificates)
if [ "${1:-run}" = test ]; then
  want+=(debootstrap systemd-container lintian rpm mandoc man-db shellcheck iproute2 xz-utils chromium)
fi

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install Rust (https://rustup.rs) first" >&2
  exit 1
fi
if [ "${1:-run}" = test ] && ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
