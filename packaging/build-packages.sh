#!/usr/bin/env bash
# Build the gitmirrord and gitmirror-worker packages, each as .deb (cargo-deb)
# and .rpm (cargo-generate-rpm), into target/packages/.
#
#   packaging/build-packages.sh             build release binaries, then package
#   packaging/build-packages.sh --no-build  package the binaries already built
#
# Installs cargo-deb and cargo-generate-rpm (cargo install --locked) when they
# are missing. The package metadata lives in gitmirrord/Cargo.toml and
# gitmirror-worker/Cargo.toml ([package.metadata.deb] and
# [package.metadata.generate-rpm]); units in systemd/, man pages in man/,
# configs and maintainer scripts in packaging/.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

build=1
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    *) echo "usage: $0 [--no-build]" >&2; exit 2 ;;
  esac
done

packages=(gitmirrord gitmirror-worker)
target_dir=${CARGO_TARGET_DIR:-$root/target}
# The rpm metadata names its staged sources relative to the workspace root.
stage=$root/target/packaging
out=$root/target/packages

say() { printf '==> %s\n' "$*"; }
die() { printf 'build-packages.sh: %s\n' "$*" >&2; exit 1; }

# Pinned to the major versions whose behaviour the metadata relies on.
ensure_tool() { # cargo subcommand, crate, version requirement
  if ! cargo "$1" --version >/dev/null 2>&1; then
    say "installing $2 ($3)"
    cargo install --locked "$2" --version "$3"
  fi
}
ensure_tool deb cargo-deb '^3.8'
ensure_tool generate-rpm cargo-generate-rpm '^0.21'
for tool in strip gzip perl; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install binutils gzip perl)"
done

# The Debian changelog must describe the version being packaged.
version=$(cargo metadata --format-version 1 --no-deps --offline 2>/dev/null |
  perl -MJSON::PP -0777 -ne '
    for (@{ decode_json($_)->{packages} }) { print $_->{version} if $_->{name} eq "gitmirrord" }')
[ -n "$version" ] || die "cannot read the gitmirrord version with cargo metadata"
changelog_version=$(sed -n '1s/^[^ ]* (\([^)]*\)).*/\1/p' packaging/debian/changelog)
[ "$changelog_version" = "$version-1" ] ||
  die "packaging/debian/changelog starts with $changelog_version, expected $version-1: add an entry"

# The rpm %pre creates the user before files are installed; it must say what
# the sysusers.d file says.
for p in "${packages[@]}"; do
  line=$(grep '^u ' "systemd/$p.sysusers" | tr -s ' ')
  grep -qF "echo '$line'" "packaging/rpm/$p.pre" ||
    die "packaging/rpm/$p.pre does not create the user as systemd/$p.sysusers does ($line)"
done

if [ "$build" = 1 ]; then
  say "building release binaries"
  cargo build --release --locked --bins -p gitmirrord -p gitmirror-worker
fi

say "staging stripped binaries and gzipped man pages in target/packaging/"
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/man" "$out"
for p in "${packages[@]}"; do
  [ -x "$target_dir/release/$p" ] || die "$target_dir/release/$p is missing (run without --no-build)"
  strip -o "$stage/bin/$p" "$target_dir/release/$p"
  for page in "man/$p.8" "man/$p.yaml.5"; do
    gzip -9 -n -c "$page" >"$stage/man/${page#man/}.gz"
  done
done
# gitmirrorctl ships in the gitmirrord packages.
[ -x "$target_dir/release/gitmirrorctl" ] || die "$target_dir/release/gitmirrorctl is missing (run without --no-build)"
strip -o "$stage/bin/gitmirrorctl" "$target_dir/release/gitmirrorctl"
gzip -9 -n -c man/gitmirrorctl.8 >"$stage/man/gitmirrorctl.8.gz"
# Its shell completions, from its own command line (the hidden `completions` subcommand).
mkdir -p "$stage/completions"
"$stage/bin/gitmirrorctl" completions bash >"$stage/completions/gitmirrorctl.bash"
"$stage/bin/gitmirrorctl" completions zsh >"$stage/completions/_gitmirrorctl"
"$stage/bin/gitmirrorctl" completions fish >"$stage/completions/gitmirrorctl.fish"

rm -f "$out"/*.deb "$out"/*.rpm
for p in "${packages[@]}"; do
  say "building $p .deb"
  # cargo-deb strips the binary itself and gzips the man pages.
  cargo deb --no-build -p "$p" -o "$out/" >/dev/null
  say "building $p .rpm"
  cargo generate-rpm -p "$p" -o "$out/" --payload-compress gzip
done

say "packages in target/packages/:"
ls -l "$out"
