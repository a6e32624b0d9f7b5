#!/usr/bin/env bash
# System test of the packages: build and lint the .deb and .rpm packages, then
# install the debs into a Debian 12 root booted with systemd-nspawn and run the
# daemons as an operator would: mirror repos served by a git daemon, watchdog
# restart, stop/start with state kept, remove and purge.
#
#   tests/packaging/run.sh              everything (runs as root)
#   tests/packaging/run.sh --no-build   use the packages already in target/packages/
#   tests/packaging/run.sh --keep       leave the container running at the end
#
# Each step prints PASS, FAIL or SKIP; the exit status is 1 if any step failed.
# The container has its own network namespace (only its loopback): nothing it
# runs can collide with ports used on the host. The debootstrapped root is
# cached in $GITMIRROR_TEST_CACHE (default /var/cache/gitmirror-test).
# The perl expressions and container shell scripts below are single-quoted on
# purpose: they are expanded by perl or by the container's shell.
# shellcheck disable=SC2016 # (for the whole file)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
pkgs=$repo/target/packages
cache=${GITMIRROR_TEST_CACHE:-/var/cache/gitmirror-test}
suite=bookworm
# procps: ps for the checks, and /bin/kill, which the packages depend on.
include=systemd,systemd-sysv,dbus,git,curl,man-db,procps

build=1
keep=0
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    --keep) keep=1 ;;
    *) echo "usage: $0 [--no-build] [--keep]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "run.sh: must run as root (systemd-nspawn, dpkg in the container)" >&2; exit 2; }

work=$(mktemp -d /var/tmp/gitmirror-systest.XXXXXX)
root=$work/root
start_time=$SECONDS

# ---------------------------------------------------------------- helpers

log() { printf '    %s\n' "$*"; }
fail() { printf '    error: %s\n' "$*" >&2; return 1; }

# Run a command inside the booted container, with a clean environment.
ct() {
  local pid
  pid=$(cat "$work/ct.pid")
  nsenter -t "$pid" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 "$@"
}
ct_sh() { ct sh -ec "$1"; }

# wait_until SECONDS DESCRIPTION COMMAND...: poll COMMAND until it succeeds.
wait_until() {
  local limit=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + limit))
  until "$@" >"$work/wait.out" 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "timed out after ${limit}s waiting for $what; last output:"
      sed 's/^/      /' "$work/wait.out" | tail -n 20 >&2
      return 1
    fi
    sleep 0.5
  done
}

json() { # perl expression over $j (the decoded JSON on stdin)
  perl -MJSON::PP -0777 -ne 'my $j = decode_json($_); '"$1"
}

api() { ct curl -fsS --max-time 5 "http://127.0.0.1:8089$1"; }

# Succeeds when the API says every repo is mirrored and there are $1 of them.
all_mirrored() {
  local counts
  counts=$(api /api/status | json 'print "$j->{repos}{total} $j->{repos}{mirrored}\n"')
  echo "repos total/mirrored: $counts"
  [ "$counts" = "$1 $1" ]
}

# Worker ids and uuids, one "id uuid" line each, sorted.
worker_ids() { api /api/workers | json 'print "$_->{id} $_->{uuid}\n" for sort { $a->{id} <=> $b->{id} } @$j'; }

# Succeeds when /api/workers lists the workers recorded after the first mirroring.
same_workers() { worker_ids | diff "$work/workers.before" -; }

container_up() {
  local state
  state=$(ct systemctl is-system-running 2>/dev/null || true)
  echo "$state"
  [ "$state" = running ] || [ "$state" = degraded ]
}

# Succeeds once unit $1 runs again under a pid other than $frozen_pid.
restarted() {
  local now
  now=$(main_pid "$1")
  [ "$now" != 0 ] && [ "$now" != "$frozen_pid" ] && [ "$(ct systemctl is-active "$1")" = active ]
}

main_pid() { ct systemctl show -p MainPID --value "$1"; }

# Commit an entry for upstream repo $1 to the index, as the index's owner.
add_to_index() {
  local owner
  owner=$(ct stat -c %U /srv/index)
  ct runuser -u "$owner" -- env HOME=/nonexistent sh -ec '
    cd /srv/index
    mkdir -p "$(echo "$1" | cut -c1)/$1"
    echo "url: git://127.0.0.1:9419/$1.git" > "$(echo "$1" | cut -c1)/$1/$1"
    git add .
    git -c user.name=test -c user.email=test@example.invalid commit -q -m "add $1"' sh "$1"
}

# As the service user: git refuses repositories that another user owns.
as_gm() { ct runuser -u gitmirror -- env HOME=/nonexistent "$@"; }

journal_tail() {
  [ -f "$work/ct.pid" ] || return 0
  log "last journal lines of the gitmirror units:"
  ct journalctl -u gitmirrord -u gitmirror-worker -n 30 --no-pager -o short-monotonic 2>&1 |
    sed 's/^/      /' >&2 || true
}

# ---------------------------------------------------------------- steps

declare -a summary=()
failed=0
abort=0
gate_failed=0

# step NAME FUNCTION [MODE]: run FUNCTION with errexit in a subshell. MODE:
#   critical  if it fails, skip every later step
#   gate      if it fails, skip the later "gated" steps (those that need the
#             daemons running); the remove/purge steps still run
#   gated     skipped after a failed gate
# State passes between steps in files under $work.
step() {
  local name=$1 fn=$2 mode=${3:-} t0 rc result
  t0=$SECONDS
  if [ "$abort" = 1 ] || { [ "$mode" = gated ] && [ "$gate_failed" = 1 ]; }; then
    summary+=("SKIP  $name")
    printf 'SKIP  %s\n' "$name"
    return 0
  fi
  printf '\n--- %s\n' "$name"
  set +e
  (set -e; "$fn")
  rc=$?
  set -e
  if [ "$rc" = 0 ]; then
    result=PASS
  else
    result=FAIL
    failed=1
    [ -f "$work/installed" ] && journal_tail
    [ "$mode" = critical ] && abort=1
    [ "$mode" = gate ] && gate_failed=1
  fi
  summary+=("$result  $name ($((SECONDS - t0))s)")
  printf '%s  %s (%ss)\n' "$result" "$name" "$((SECONDS - t0))"
}

teardown() {
  local rc=$? np
  if [ "$keep" = 1 ] && [ -f "$work/ct.pid" ]; then
    echo "container left running (--keep): nsenter -t $(cat "$work/ct.pid") -a bash; root $root"
    exit "$rc"
  fi
  if [ -f "$work/nspawn.pid" ]; then
    np=$(cat "$work/nspawn.pid")
    if kill -0 "$np" 2>/dev/null; then
      if [ -f "$work/ct.pid" ]; then ct systemctl poweroff >/dev/null 2>&1 || true; fi
      for _ in $(seq 60); do kill -0 "$np" 2>/dev/null || break; sleep 0.5; done
      if kill -0 "$np" 2>/dev/null; then kill -TERM "$np" 2>/dev/null || true; fi
      for _ in $(seq 20); do kill -0 "$np" 2>/dev/null || break; sleep 0.5; done
      if kill -0 "$np" 2>/dev/null; then kill -KILL "$np" 2>/dev/null || true; fi
    fi
  fi
  rm -rf "$work"
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- host side

host_tools() {
  local want=(debootstrap:debootstrap systemd-nspawn:systemd-container lintian:lintian
    rpm:rpm rpmlint:rpmlint mandoc:mandoc shellcheck:shellcheck nsenter:util-linux curl:curl)
  local missing=() t
  for t in "${want[@]}"; do
    command -v "${t%%:*}" >/dev/null || missing+=("${t#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

static_checks() {
  shellcheck "$here"/*.sh "$repo/packaging/build-packages.sh"
  shellcheck -s sh "$repo"/packaging/debian/*.post* "$repo"/packaging/rpm/*.pre* "$repo"/packaging/rpm/*.post*
  log "shellcheck: clean"
  local page
  for page in "$repo"/man/*.[58]; do
    mandoc -Tlint -W warning "$page"
  done
  log "mandoc -Tlint -W warning: clean"
  "$here/man-keys.sh"
}

unit_security() {
  local unit score
  for unit in gitmirrord gitmirror-worker gitmirror-git-daemon; do
    score=$(systemd-analyze security --offline=yes "$repo/systemd/$unit.service" 2>/dev/null |
      sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p')
    [ -n "$score" ] || fail "no score for $unit.service"
    log "systemd-analyze security --offline=yes $unit.service: $score"
    perl -e 'exit($ARGV[0] <= 2.0 ? 0 : 1)' "$score" || fail "$unit.service scores $score, above 2.0"
  done
}

build_packages() {
  if [ "$build" = 1 ]; then
    "$repo/packaging/build-packages.sh"
  else
    log "--no-build: using $pkgs"
  fi
  local p
  for p in gitmirrord gitmirror-worker; do
    ls "$pkgs/${p}_"*.deb "$pkgs/$p-"[0-9]*.rpm >/dev/null
  done
}

lint_debs() {
  local rc=0
  lintian --fail-on error --display-level '>=info' "$pkgs"/*.deb >"$work/lintian.out" 2>&1 || rc=$?
  grep -v 'running with root privileges' "$work/lintian.out" | sed 's/^/    /' || true
  [ "$rc" = 0 ] || fail "lintian exits $rc (errors, or it could not run)"
  log "lintian: $(grep -c '^E:' "$work/lintian.out" || true) errors, $(grep -c '^W:' "$work/lintian.out" || true) warnings"
}

# packaging/rpm/rpmlintrc filters what does not apply, each filter saying why;
# a filter that matches nothing is itself an error (unused-rpmlintrc-filter).
lint_rpms() {
  local rc=0
  rpmlint -r "$repo/packaging/rpm/rpmlintrc" "$pkgs"/*.rpm >"$work/rpmlint.out" 2>&1 || rc=$?
  grep ': [EWI]: \|packages and' "$work/rpmlint.out" | sed 's/^/    /' || true
  if [ "$rc" != 0 ]; then
    # No finding printed: show why it could not run.
    grep -q ': E: ' "$work/rpmlint.out" || tail -n 20 "$work/rpmlint.out" | sed 's/^/    /' >&2
    fail "rpmlint exits $rc (errors, or it could not run)"
  fi
  log "rpmlint: $(grep -c ': E: ' "$work/rpmlint.out" || true) errors, $(grep -c ': W: ' "$work/rpmlint.out" || true) warnings"
}

check_debs() {
  local p deb contents dep
  for p in gitmirrord gitmirror-worker; do
    deb=$(ls "$pkgs/${p}_"*.deb)
    contents=$(dpkg-deb -c "$deb")
    for f in "./usr/bin/$p" "./usr/lib/systemd/system/$p.service" "./usr/lib/sysusers.d/$p.conf" \
      "./usr/share/man/man8/$p.8.gz" "./usr/share/man/man5/$p.yaml.5.gz" "./etc/gitmirror/$p.yaml"; do
      grep -q " $f\$" <<<"$contents" || fail "$deb lacks $f"
    done
    grep -q -- "-rw-r----- .* ./etc/gitmirror/$p.yaml\$" <<<"$contents" || fail "$p.yaml is not mode 0640"
    for dep in git procps; do
      dpkg-deb -f "$deb" Depends | grep -cw "$dep" >/dev/null || fail "$deb does not depend on $dep"
    done
    dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles >"$work/conffiles"
    grep -qx "/etc/gitmirror/$p.yaml" "$work/conffiles" ||
      fail "$deb: /etc/gitmirror/$p.yaml is not a conffile"
    log "$(basename "$deb"): files, conffile, Depends: $(dpkg-deb -f "$deb" Depends)"
  done
  # gitmirrorctl, its man page and the alert rules ship with the coordinator (issue 16).
  contents=$(dpkg-deb -c "$(ls "$pkgs"/gitmirrord_*.deb)")
  for f in ./usr/bin/gitmirrorctl ./usr/share/man/man8/gitmirrorctl.8.gz \
    ./usr/share/gitmirror/prometheus/gitmirror.rules.yml \
    ./usr/share/gitmirror/prometheus/gitmirror.dashboard.json \
    ./usr/share/bash-completion/completions/gitmirrorctl \
    ./usr/share/zsh/vendor-completions/_gitmirrorctl \
    ./usr/share/fish/vendor_completions.d/gitmirrorctl.fish; do
    grep -q " $f\$" <<<"$contents" || fail "gitmirrord deb lacks $f"
  done
  contents=$(dpkg-deb -c "$(ls "$pkgs"/gitmirror-worker_*.deb)")
  grep -q ' ./usr/lib/systemd/system/gitmirror-git-daemon.service$' <<<"$contents" ||
    fail "worker deb lacks gitmirror-git-daemon.service"
}

check_rpms() {
  local p rpmf files tag script expected
  for p in gitmirrord gitmirror-worker; do
    rpmf=$(ls "$pkgs/$p-"[0-9]*.rpm)
    files=$(rpm -qlp "$rpmf" 2>/dev/null)
    expected="/etc/gitmirror/$p.yaml
/usr/bin/$p
/usr/lib/systemd/system/$p.service
/usr/lib/sysusers.d/$p.conf
/usr/share/man/man5/$p.yaml.5.gz
/usr/share/man/man8/$p.8.gz"
    [ "$p" = gitmirror-worker ] && expected+=$'\n/usr/lib/systemd/system/gitmirror-git-daemon.service'
    [ "$p" = gitmirrord ] && expected+=$'\n/usr/bin/gitmirrorctl\n/usr/share/man/man8/gitmirrorctl.8.gz\n/usr/share/gitmirror/prometheus/gitmirror.rules.yml\n/usr/share/gitmirror/prometheus/gitmirror.dashboard.json\n/usr/share/bash-completion/completions/gitmirrorctl\n/usr/share/zsh/site-functions/_gitmirrorctl\n/usr/share/fish/vendor_completions.d/gitmirrorctl.fish'
    diff <(sort <<<"$expected") <(sort <<<"$files") || fail "$rpmf: unexpected file list"
    rpm -qpR "$rpmf" 2>/dev/null | grep -cx 'git' >/dev/null || fail "$rpmf does not require git"
    rpm -qpc "$rpmf" 2>/dev/null | grep -cx "/etc/gitmirror/$p.yaml" >/dev/null || fail "$rpmf: config not marked %config"
    rpm -qp --qf '[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]' "$rpmf" 2>/dev/null |
      grep -qx -- "-rw-r----- root:gitmirror /etc/gitmirror/$p.yaml" || fail "$rpmf: config not 0640 root:gitmirror"
    # Each scriptlet is plain shell: no unexpanded rpm macros, and sh can parse it.
    rpm -qp --scripts "$rpmf" 2>/dev/null >"$work/scripts"
    grep -q '%{\|%systemd\|%sysusers' "$work/scripts" && fail "$rpmf: unexpanded rpm macro in a scriptlet"
    for tag in PREIN POSTIN PREUN POSTUN; do
      script=$(rpm -qp --qf "%{$tag}" "$rpmf" 2>/dev/null | grep -v '^ *#' || true)
      if [ -z "$script" ] || [ "$script" = "(none)" ]; then fail "$rpmf has no $tag scriptlet"; fi
      sh -n <<<"$script" || fail "$rpmf: $tag does not parse as sh"
      grep -q 'enable\b' <<<"$script" && [ "$tag" != PREUN ] && fail "$rpmf: $tag enables a unit"
      grep -qw start <<<"$script" && fail "$rpmf: $tag starts a unit"
    done
    log "$(basename "$rpmf"): files, %config 0640 root:gitmirror, Requires git, plain-shell scriptlets"
  done
  # The file list unpacks into a scratch root.
  local scratch=$work/rpmroot
  mkdir -p "$scratch"
  rpm --root "$scratch" --dbpath /var/lib/rpm --nodeps --noscripts -i "$pkgs"/*.rpm 2>&1 |
    grep -v 'should not be used directly\|assuming you know\|group gitmirror does not exist' || true
  for f in /usr/bin/gitmirrord /usr/bin/gitmirror-worker /etc/gitmirror/gitmirrord.yaml \
    /usr/share/man/man8/gitmirrord.8.gz /usr/lib/systemd/system/gitmirror-git-daemon.service; do
    [ -e "$scratch$f" ] || fail "rpm -i --root did not install $f"
  done
  gzip -t "$scratch"/usr/share/man/man*/*.gz
  [ "$(rpm --root "$scratch" --dbpath /var/lib/rpm -qa | wc -l)" = 2 ] || fail "rpm database lacks the packages"
  log "rpm --root scratch -i: both packages unpack"
}

# ---------------------------------------------------------------- container

prepare_root() {
  local key tarball
  key=$(printf '%s\n' "$suite" minbase "$include" v1 | sha256sum | cut -c1-12)
  tarball=$cache/$suite-$key.tar
  mkdir -p "$cache"
  (
    flock 9
    if [ ! -f "$tarball" ]; then
      log "debootstrapping $suite (cached afterwards as $tarball)"
      rm -rf "$cache/build-root"
      debootstrap --variant=minbase --include="$include" "$suite" "$cache/build-root" >"$work/debootstrap.log" 2>&1 ||
        { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
      tar --numeric-owner -C "$cache/build-root" -cf "$tarball.tmp" .
      mv "$tarball.tmp" "$tarball"
      rm -rf "$cache/build-root"
      # Roots for other package lists are stale now.
      find "$cache" -maxdepth 1 -name "$suite-*.tar" ! -name "$(basename "$tarball")" -delete
    fi
  ) 9>"$cache/.lock"
  mkdir -p "$root"
  tar --numeric-owner -C "$root" -xf "$tarball"
  # minbase has no /etc/hosts; the worker's default name is the host name.
  printf '127.0.0.1 localhost\n::1 localhost ip6-localhost\n127.0.1.1 gitmirror-test\n' >"$root/etc/hosts"
  echo gitmirror-test >"$root/etc/hostname"
  log "root ready from $tarball"
}

boot() {
  setsid systemd-nspawn -D "$root" --register=no --keep-unit --private-network \
    --machine=gitmirror-test -b >"$work/nspawn.log" 2>&1 </dev/null &
  echo $! >"$work/nspawn.pid"
  local np=$! child=""
  for _ in $(seq 100); do
    child=$(ps -o pid= --ppid "$np" | tr -d ' ' | head -n 1 || true)
    [ -n "$child" ] && [ "$(ps -o comm= -p "$child")" = systemd ] && break
    child=""
    kill -0 "$np" 2>/dev/null || { cat "$work/nspawn.log" >&2; fail "systemd-nspawn exited"; }
    sleep 0.2
  done
  [ -n "$child" ] || fail "no systemd inside the container"
  echo "$child" >"$work/ct.pid"
  wait_until 90 "systemctl is-system-running" container_up
  log "container systemd (pid $child): $(ct systemctl is-system-running || true)"
}

install_debs() {
  # Not /tmp: the container mounts a tmpfs there.
  mkdir -p "$root/root/pkgs"
  cp "$pkgs"/*.deb "$root/root/pkgs/"
  ct_sh 'dpkg -i /root/pkgs/*.deb' | sed 's/^/    /'
  touch "$work/installed"
  ct id gitmirror
  local p mode
  for p in gitmirrord gitmirror-worker; do
    mode=$(ct stat -c '%a %U:%G' "/etc/gitmirror/$p.yaml")
    [ "$mode" = "640 root:gitmirror" ] || fail "/etc/gitmirror/$p.yaml is $mode, want 640 root:gitmirror"
    # Installing neither enables nor starts.
    [ "$(ct systemctl is-enabled "$p" || true)" = disabled ] || fail "$p is enabled after install"
    [ "$(ct systemctl is-active "$p" || true)" = inactive ] || fail "$p is running after install"
  done
  log "user gitmirror exists; configs 0640 root:gitmirror; units installed, disabled, inactive"
  ct systemd-analyze verify gitmirrord.service gitmirror-worker.service gitmirror-git-daemon.service 2>&1 |
    tee "$work/verify.out" | sed 's/^/    /'
  if grep -q 'gitmirror' "$work/verify.out"; then fail "systemd-analyze verify complains about a gitmirror unit"; fi
  log "systemd-analyze verify (in the container): clean"
}

# --version and --help exit 0, check-config of a broken file exits 78, and the
# packaged config (every key commented out) is valid as shipped.
binary() { # daemon
  local rc=0
  ct "$1" --version
  ct "$1" --help >/dev/null
  ct_sh 'printf "listen: [not an address\n" > /tmp/bad.yaml'
  ct "$1" check-config --config /tmp/bad.yaml || rc=$?
  [ "$rc" = 78 ] || fail "$1 check-config of a bad file exits $rc, want 78"
  if [ "$1" = gitmirrord ]; then
    ct gitmirrord check-config
  else
    # The worker's config needs a join token: give one inline to a copy.
    ct_sh 'cp /etc/gitmirror/gitmirror-worker.yaml /tmp/w.yaml
      echo "join_token: gmj1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.c2VjcmV0" >> /tmp/w.yaml'
    ct gitmirror-worker check-config --config /tmp/w.yaml
  fi
  log "$1: --version, --help exit 0; check-config exits 78 on a bad file, 0 on the packaged one"
}
binary_coordinator() { binary gitmirrord; }
binary_worker() { binary gitmirror-worker; }

man_pages() {
  local page
  for page in "8 gitmirrord" "8 gitmirror-worker" "5 gitmirrord.yaml" "5 gitmirror-worker.yaml"; do
    # shellcheck disable=SC2086 # section and name
    ct env MANPAGER=cat MANWIDTH=80 man $page >"$work/man.out" 2>&1
    grep -q "^FILES" "$work/man.out" || fail "man $page does not render"
  done
  ct env MANPAGER=cat man gitmirrord | grep -c 'gitmirror coordinator' >/dev/null || fail "man gitmirrord lacks its name line"
  log "man gitmirrord, gitmirror-worker, gitmirrord.yaml(5), gitmirror-worker.yaml(5) render"
}

# Upstream repos served by a git daemon inside the container, and an index
# (a local git repository owned by the gitmirror user) that lists three of them.
upstream() {
  ct_sh '
    git config --global user.name test
    git config --global user.email test@example.invalid
    git config --global init.defaultBranch main
    mkdir -p /srv/upstream /srv/work
    for n in alpha beta gamma delta epsilon; do
      git init -q --bare /srv/upstream/$n.git
      git init -q /srv/work/$n
      cd /srv/work/$n
      echo "$n" > README
      git add README
      git commit -q -m "first $n"
      git tag v1
      git branch topic
      git push -q /srv/upstream/$n.git main topic v1
    done
    git init -q /srv/index
    cd /srv/index
    for n in alpha beta gamma; do
      f=$(echo "$n" | cut -c1)
      mkdir -p "$f/$n"
      echo "url: git://127.0.0.1:9419/$n.git" > "$f/$n/$n"
    done
    git add .
    git commit -q -m "three repos"
    chmod -R a+rX /srv
    chown -R gitmirror:gitmirror /srv/index'
  ct systemd-run --unit=upstream-git --quiet \
    git daemon --reuseaddr --export-all --listen=127.0.0.1 --port=9419 --base-path=/srv/upstream /srv/upstream
  wait_until 20 "the upstream git daemon" ct git ls-remote git://127.0.0.1:9419/alpha.git
  log "5 upstream repos on git://127.0.0.1:9419/, index /srv/index (owned by gitmirror) lists 3"
}

configure() {
  ct_sh '
    cat > /tmp/gitmirrord.yaml <<EOF
# system test
indexes:
  - name: test
    url: /srv/index
    poll_interval: 1h
EOF
    install -m 0640 -o root -g gitmirror /tmp/gitmirrord.yaml /etc/gitmirror/gitmirrord.yaml
    cat > /tmp/gitmirror-worker.yaml <<EOF
# system test
coordinator: 127.0.0.1:5555
name: test-worker
fetch:
  min_interval: 5s
serve_url_base: git://127.0.0.1/
EOF
    install -m 0640 -o root -g gitmirror /tmp/gitmirror-worker.yaml /etc/gitmirror/gitmirror-worker.yaml'
  ct gitmirrord check-config
  log "configs written; gitmirrord check-config passes"
}

start_services() {
  ct systemctl enable --now gitmirrord
  # The token comes from the coordinator's state, so it is printed once the
  # coordinator has started; it belongs to the user the worker runs as.
  ct_sh 'runuser -u gitmirror -- gitmirrord join-token |
    install -m 0600 -o gitmirror -g gitmirror /dev/stdin /etc/gitmirror/join-token'
  ct_sh 'grep -q "^gmj1\." /etc/gitmirror/join-token' || fail "join token does not start with gmj1."
  ct gitmirror-worker check-config
  ct systemctl enable --now gitmirror-worker
  local p
  for p in gitmirrord gitmirror-worker; do
    [ "$(ct systemctl is-active "$p")" = active ] || fail "$p is not active"
  done
  log "both services enabled and active; join token 0600 gitmirror"
}

mirrored() {
  wait_until 120 "all 3 repos mirrored" all_mirrored 3
  log "$(cat "$work/wait.out")"
  # The mirrors are bare, point at upstream and hold its refs.
  local n m
  for n in alpha beta gamma; do
    m=/var/lib/gitmirror-worker/repos/${n:0:1}/$n/$n.git
    as_gm git -C "$m" remote -v | grep -c "git://127.0.0.1:9419/$n.git" >/dev/null || fail "$m does not point at upstream"
    diff <(ct git ls-remote "git://127.0.0.1:9419/$n.git" | grep -v HEAD | sort) \
      <(as_gm git -C "$m" for-each-ref --format='%(objectname)%09%(refname)' | sort) ||
      fail "$m refs differ from upstream"
  done
  worker_ids >"$work/workers.before"
  [ -s "$work/workers.before" ] || fail "no worker in /api/workers"
  log "mirrors match upstream; workers: $(tr '\n' ' ' <"$work/workers.before")"
}

status_and_user() {
  local status p pid user
  status=$(ct systemctl status gitmirrord --no-pager 2>&1 || true)
  head -n 8 <<<"$status" | awk '{print "    " $0}'
  grep -q '^ *Status: "' <<<"$status" || fail "systemctl status gitmirrord shows no Status: line"
  log "worker status: $(ct systemctl show -p StatusText --value gitmirror-worker)"
  for p in gitmirrord gitmirror-worker; do
    pid=$(main_pid "$p")
    user=$(ct ps -o user= -p "$pid" | tr -d ' ')
    [ "$user" = gitmirror ] || fail "$p (pid $pid) runs as '$user'"
  done
  log "both daemons run as gitmirror"
  # The worker's fetches are batch work: they yield the CPU to the coordinator.
  local ni
  ni=$(ct ps -o ni= -p "$(main_pid gitmirror-worker)" | tr -d ' ')
  [ "$ni" = 10 ] || fail "gitmirror-worker runs at nice '$ni', not 10"
  ni=$(ct ps -o ni= -p "$(main_pid gitmirrord)" | tr -d ' ')
  [ "$ni" = 0 ] || fail "gitmirrord runs at nice '$ni', not 0"
  log "the worker runs at nice 10, the coordinator at 0"
}

reload_polls_index() {
  local pid
  pid=$(main_pid gitmirrord)
  add_to_index delta
  # poll_interval is 1h: only the SIGHUP can make the coordinator see it.
  ct systemctl reload gitmirrord
  wait_until 60 "4 repos mirrored after reload" all_mirrored 4
  [ "$(main_pid gitmirrord)" = "$pid" ] || fail "reload restarted the daemon"
  log "systemctl reload (SIGHUP) polled the index at once: $(cat "$work/wait.out")"
}

watchdog() {
  ct mkdir -p /run/systemd/system/gitmirrord.service.d
  ct_sh 'printf "[Service]\nWatchdogSec=4s\n" > /run/systemd/system/gitmirrord.service.d/50-test-watchdog.conf'
  ct systemctl daemon-reload
  ct systemctl restart gitmirrord
  wait_until 60 "4 repos mirrored after restart" all_mirrored 4
  local t0
  frozen_pid=$(main_pid gitmirrord)
  ct kill -STOP "$frozen_pid"
  t0=$SECONDS
  log "froze gitmirrord (pid $frozen_pid) with SIGSTOP"
  wait_until 60 "systemd to restart the frozen coordinator" restarted gitmirrord
  log "restarted as pid $(main_pid gitmirrord) after $((SECONDS - t0))s"
  ct journalctl -u gitmirrord --no-pager | grep -c 'Watchdog timeout' >/dev/null || fail "journal has no 'Watchdog timeout'"
  log "journal: $(ct journalctl -u gitmirrord --no-pager | grep -m1 'Watchdog timeout' | sed 's/^.*gitmirrord.service: //')"
  wait_until 60 "4 repos mirrored after the watchdog restart" all_mirrored 4
  wait_until 30 "the same worker ids and uuids" same_workers
  log "serves again with the same state: workers $(tr '\n' ' ' <"$work/workers.before")"
  ct rm -rf /run/systemd/system/gitmirrord.service.d
  ct systemctl daemon-reload
}

stop_start() {
  local p t0 ms
  for p in gitmirror-worker gitmirrord; do
    t0=$(date +%s%N)
    ct systemctl stop "$p"
    ms=$((($(date +%s%N) - t0) / 1000000))
    log "systemctl stop $p: ${ms} ms, result $(ct systemctl show -p Result --value "$p"), exit status $(ct systemctl show -p ExecMainStatus --value "$p")"
    [ "$ms" -lt 10000 ] || fail "stopping $p took ${ms} ms"
    [ "$(ct systemctl show -p Result --value "$p")" = success ] || fail "$p did not stop cleanly"
  done
  local f
  for f in /var/lib/gitmirrord/registry.json /var/lib/gitmirrord/repos.snapshot /var/lib/gitmirrord/events/00000000000000000001.log \
    /var/lib/gitmirrord/tls-cert.pem /var/lib/gitmirror-worker/identity.json /var/lib/gitmirror-worker/repos.snapshot; do
    ct test -s "$f" || fail "state file $f missing after stop"
  done
  ct_sh 'ls -l /var/lib/gitmirrord /var/lib/gitmirror-worker' | sed 's/^/    /'
  ct systemctl start gitmirrord gitmirror-worker
  wait_until 60 "4 repos mirrored after start" all_mirrored 4
  log "started again: $(cat "$work/wait.out")"
  wait_until 30 "the same worker ids and uuids" same_workers
  log "same worker ids and uuids as before the stop"
}

git_daemon_unit() {
  ct systemctl start gitmirror-git-daemon
  wait_until 20 "gitmirror-git-daemon to serve a mirror" ct git ls-remote git://127.0.0.1/a/alpha/alpha.git
  [ "$(ct ps -o user= -p "$(main_pid gitmirror-git-daemon)" | tr -d ' ')" = gitmirror ] ||
    fail "gitmirror-git-daemon does not run as gitmirror"
  ct systemctl stop gitmirror-git-daemon
  log "gitmirror-git-daemon.service serves the mirrors read-only on git://127.0.0.1/"
}

remove() {
  # What dpkg -r must keep: configuration, join token, state, mirrors (those
  # that exist: the daemons may not have run).
  local path p present=()
  for path in /etc/gitmirror/gitmirrord.yaml /etc/gitmirror/gitmirror-worker.yaml /etc/gitmirror/join-token \
    /var/lib/gitmirrord/registry.json /var/lib/gitmirror-worker/identity.json \
    /var/lib/gitmirror-worker/repos/a/alpha/alpha.git; do
    if ct test -e "$path"; then present+=("$path"); fi
  done
  ct dpkg -r gitmirrord gitmirror-worker | sed 's/^/    /'
  for p in gitmirrord gitmirror-worker; do
    [ "$(ct systemctl is-active "$p" || true)" != active ] || fail "$p still runs after remove"
    ct test ! -e "/usr/bin/$p" || fail "/usr/bin/$p left after remove"
    ct test ! -e "/usr/lib/systemd/system/$p.service" || fail "$p.service left after remove"
    ct test -f "/etc/gitmirror/$p.yaml" || fail "/etc/gitmirror/$p.yaml removed by dpkg -r"
  done
  for path in "${present[@]}"; do
    ct test -e "$path" || fail "$path removed by dpkg -r"
  done
  log "dpkg -r: binaries and units gone; kept ${present[*]}"
}

purge() {
  ct dpkg --purge gitmirrord gitmirror-worker | sed 's/^/    /'
  local path
  for path in /etc/gitmirror/gitmirrord.yaml /etc/gitmirror/gitmirror-worker.yaml /etc/gitmirror/join-token \
    /etc/gitmirror /var/lib/gitmirrord /var/lib/gitmirror-worker; do
    ct test ! -e "$path" || fail "$path left after purge"
  done
  ct id gitmirror >/dev/null || fail "the gitmirror user was removed"
  log "dpkg --purge: configs, join token, /etc/gitmirror and state gone; user gitmirror kept"
}

# The rpm scriptlets, taken from the built rpms, run with /bin/sh on this
# systemd system: %pre must create the user (removed first), the others must
# succeed whether or not the units exist.
rpm_scriptlets() {
  ct userdel gitmirror
  ct id gitmirror >/dev/null 2>&1 && fail "could not remove the gitmirror user"
  mkdir -p "$root/root/rpm-scripts"
  local p tag arg
  for p in gitmirrord gitmirror-worker; do
    for tag in PREIN:1 POSTIN:1 PREUN:0 POSTUN:0; do
      arg=${tag#*:}
      tag=${tag%:*}
      rpm -qp --qf "%{$tag}" "$(ls "$pkgs/$p-"[0-9]*.rpm)" 2>/dev/null >"$root/root/rpm-scripts/$p.$tag"
      ct sh -e "/root/rpm-scripts/$p.$tag" "$arg" || fail "$p %$tag exits $?"
    done
  done
  ct id gitmirror
  log "the rpm scriptlets of both packages run under /bin/sh; %pre created the gitmirror user"
}

# An operator's index is often a checkout that root (or a cron job's user)
# owns. The coordinator must still read it.
root_owned_index() {
  ct chown -R root:root /srv/index
  add_to_index epsilon
  ct systemctl reload gitmirrord
  if ! wait_until 30 "5 repos mirrored from a root-owned index" all_mirrored 5; then
    ct journalctl -u gitmirrord --no-pager -o cat | grep -i 'index poll failed' | tail -n 1 | sed 's/^/    /' || true
    fail "the coordinator cannot poll an index that root owns"
  fi
  log "the coordinator reads an index owned by root"
}

watchdog_worker() {
  ct mkdir -p /run/systemd/system/gitmirror-worker.service.d
  ct_sh 'printf "[Service]\nWatchdogSec=4s\n" > /run/systemd/system/gitmirror-worker.service.d/50-test-watchdog.conf'
  ct systemctl daemon-reload
  ct systemctl restart gitmirror-worker
  local t0
  frozen_pid=$(main_pid gitmirror-worker)
  ct kill -STOP "$frozen_pid"
  t0=$SECONDS
  log "froze gitmirror-worker (pid $frozen_pid) with SIGSTOP"
  wait_until 60 "systemd to restart the frozen worker" restarted gitmirror-worker
  log "restarted as pid $(main_pid gitmirror-worker) after $((SECONDS - t0))s"
  ct journalctl -u gitmirror-worker --no-pager | grep -c 'Watchdog timeout' >/dev/null || fail "journal has no 'Watchdog timeout'"
  wait_until 60 "4 repos mirrored after the worker's watchdog restart" all_mirrored 4
  wait_until 30 "the same worker ids and uuids" same_workers
  log "the worker came back with its id and uuid: $(tr '\n' ' ' <"$work/workers.before")"
  ct rm -rf /run/systemd/system/gitmirror-worker.service.d
  ct systemctl daemon-reload
}

# ---------------------------------------------------------------- run

step "host tools" host_tools critical
step "static checks: shellcheck, mandoc lint, man page keys" static_checks
step "systemd-analyze security <= 2.0" unit_security
step "build packages" build_packages critical
step "lintian" lint_debs
step "rpmlint" lint_rpms
step "deb contents" check_debs
step "rpm contents, scriptlets, scratch-root install" check_rpms
step "container root" prepare_root critical
step "boot container" boot critical
step "install debs" install_debs critical
step "gitmirrord: --version, --help, check-config" binary_coordinator
step "gitmirror-worker: --version, --help, check-config" binary_worker
step "man pages render" man_pages
step "upstream git daemon and index" upstream gate
step "configure" configure gate
step "enable --now, join token" start_services gate
step "all repos mirrored" mirrored gated
step "systemctl status and service user" status_and_user gated
step "reload polls the index" reload_polls_index gated
step "watchdog restarts a frozen coordinator" watchdog gated
step "watchdog restarts a frozen worker" watchdog_worker gated
step "stop within 10 s with state saved, start resumes" stop_start gated
step "gitmirror-git-daemon.service" git_daemon_unit gated
step "index owned by root" root_owned_index gated
step "dpkg -r keeps config and state" remove
step "dpkg --purge" purge
step "rpm scriptlets run in the container" rpm_scriptlets

echo
echo "=== summary ($((SECONDS - start_time))s)"
printf '%s\n' "${summary[@]}"
if [ "$failed" = 1 ]; then
  echo "FAIL"
  exit 1
fi
echo "PASS"
