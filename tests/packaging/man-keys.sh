#!/usr/bin/env bash
# Drift check between the daemons' config code and their man pages.
#
# Fails when a key that a daemon's config structs accept (serde field names of
# structs deriving Deserialize in <crate>/src/config*.rs and
# <crate>/src/config/*.rs, nested sections prefixed, renames and aliases
# honoured; see config-keys.pl) is not documented in its page
# man/<daemon>.yaml.5 as a `Cm` key, or when the page documents a key the code
# does not accept (unless the code takes the section holding it as an opaque
# value, as the coordinator does with local_worker).
#
#   tests/packaging/man-keys.sh
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
extract=$here/config-keys.pl
status=0

# The extractor's own test: every serde feature it claims to honour.
if ! perl "$extract" "$here/fixtures/config-keys-sample.rs" |
    diff -u "$here/fixtures/config-keys-sample.expected" - >&2; then
  echo "FAIL: config-keys.pl self-test (fixtures/config-keys-sample.rs)" >&2
  exit 1
fi

# Words that follow a Cm macro in an mdoc page: the documented keys.
page_keys() {
  perl -ne '
    next unless /^\./;
    my @w = split;
    for (my $i = 0; $i < @w; $i++) {
      next unless $w[$i] eq "Cm";
      for ($i++; $i < @w && $w[$i] !~ /^[A-Z][a-z]{1,2}$/; $i++) {
        print "$w[$i]\n" if $w[$i] =~ /^[a-z_][a-z0-9_.\[\]-]*$/;
      }
      $i--;
    }' "$1" | sort -u
}

config_files() { # crate directory
  local f
  for f in "$1"/src/config*.rs "$1"/src/config/*.rs; do
    [ -f "$f" ] && printf '%s\n' "$f"
  done
  return 0
}

check() { # daemon crate, page, crate whose config types it may embed
  local crate=$1 page=$2 other=$3
  local -a own also
  mapfile -t own < <(config_files "$root/$crate")
  mapfile -t also < <(config_files "$root/$other")
  if [ ${#own[@]} -eq 0 ]; then
    echo "FAIL: no config source in $crate/src (config*.rs or config/*.rs)" >&2
    status=1
    return
  fi
  local code doc
  code=$(perl "$extract" "${own[@]}" --also "${also[@]}")
  doc=$(page_keys "$root/$page")

  local missing extra
  missing=$(comm -23 <(printf '%s\n' "$code") <(printf '%s\n' "$doc"))
  # A documented key the code lacks is fine below a key the code keeps opaque.
  extra=$(comm -13 <(printf '%s\n' "$code") <(printf '%s\n' "$doc") |
    while IFS= read -r key; do
      opaque=0
      prefix=$key
      while [[ $prefix == *.* ]]; do
        prefix=${prefix%.*}
        if grep -qxF -- "$prefix" <<<"$code"; then opaque=1; break; fi
      done
      [ "$opaque" = 1 ] || printf '%s\n' "$key"
    done)
  if [ -n "$missing" ]; then
    echo "FAIL: $page lacks keys that $crate accepts:" >&2
    awk '{print "  " $0}' <<<"$missing" >&2
    status=1
  fi
  if [ -n "$extra" ]; then
    echo "FAIL: $page documents keys that $crate does not accept:" >&2
    awk '{print "  " $0}' <<<"$extra" >&2
    status=1
  fi
  if [ -z "$missing" ] && [ -z "$extra" ]; then
    echo "ok: $page documents all $(wc -l <<<"$code") keys of $crate"
  fi
}

check gitmirrord man/gitmirrord.yaml.5 gitmirror-worker
check gitmirror-worker man/gitmirror-worker.yaml.5 gitmirrord
exit "$status"
