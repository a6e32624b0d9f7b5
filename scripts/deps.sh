#!/usr/bin/env bash
# Installs what gitmirror needs on Debian 12: `deps.sh run` for the quickstart,
# `deps.sh test` for the test suite. Idempotent; skips what is already there.
set -euo pipefail

want=(git curl ca-certificates)
if [ "${1:-run}" = test ]; then
  # openssh-server: the ssh deploy-key test runs its own sshd on loopback; prometheus:
  # promtool and a real Prometheus check the shipped alert rules; openssl: push-hook
  # tests sign payloads from a post-receive hook; nodejs: the page test clicks "fetch now"
  # in chromium over the DevTools protocol (gitmirrord/tests/data/cdp_click.js).
  want+=(debootstrap systemd-container lintian rpm mandoc man-db shellcheck iproute2 xz-utils chromium nodejs
    openssh-server prometheus openssl)
fi

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  # The tests run their own sshd and Prometheus on loopback: the packages' services must
  # not start (on all addresses) as they install.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod 755 /usr/sbin/policy-rc.d
    # shellcheck disable=SC2064 # $sudo is expanded now, on purpose
    trap "$sudo rm -f /usr/sbin/policy-rc.d" EXIT
  fi
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
