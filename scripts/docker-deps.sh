#!/usr/bin/env bash
# Makes a container engine and a stand-in for the official PostgreSQL image available to the
# container tests (tests/integration/container.rs) and the image benchmark (bench/image.sh).
# Idempotent, and quick when everything is there.
#
#   - Docker: Debian's `docker.io` when no `dockerd` is installed; `dockerd` started as root
#     when nothing answers on its socket, without a bridge or firewall rules
#     (`--bridge=none --iptables=false --ip6tables=false`: containers run with
#     `--network none` or `--network host`), its log in .tools/dockerd.log
#   - the stand-in base image pgward-test/postgres:15 (the tests' STANDIN_BASE): the
#     layout of the official `postgres:15` image (postgres uid/gid 999, PGDATA, the initdb.d
#     directory, the server's bin directory on PATH, the data volume, STOPSIGNAL SIGINT) built
#     from Debian's packages — `debootstrap --variant=minbase` from the Debian mirror apt is
#     configured with, image/standin/rootfs.sh in it (`postgresql-15`), `docker import`, then
#     image/standin/Dockerfile on top.
#     Registries cannot be assumed reachable, so nothing is pulled. Built once: the image
#     carries a hash of its recipe and is rebuilt only when the recipe changes.
#
# Prints nothing on stdout; progress on stderr.
set -euo pipefail

cd "$(dirname "$0")/.."
tools=$PWD/.tools
BASE_IMAGE=pgward-test/postgres:15
PG_MAJOR=15
DOCKERD_LOG=$tools/dockerd.log

log() { printf 'docker-deps: %s\n' "$*" >&2; }
die() { log "$1"; [[ -z ${2:-} ]] || log "HINT: $2"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root: it installs packages and starts dockerd" \
    "run make test (or this script) as root"

apt_install() {
    log "installing: $*"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- the engine ----------------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
[[ ${#missing[@]} -eq 0 ]] || apt_install "${missing[@]}"
command -v docker >/dev/null 2>&1 || die "no docker client on PATH after installing docker.io"

if ! docker info >/dev/null 2>&1; then
    mkdir -p "$tools"
    log "starting dockerd (log: $DOCKERD_LOG)"
    # setsid: the daemon outlives this script and the make that ran it.
    setsid dockerd --bridge=none --iptables=false --ip6tables=false \
        >>"$DOCKERD_LOG" 2>&1 </dev/null &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        kill -0 $! 2>/dev/null || break
        sleep 1
    done
    if ! docker info >/dev/null 2>&1; then
        tail -n 20 "$DOCKERD_LOG" >&2 || true
        if kill -0 $! 2>/dev/null; then
            why="dockerd did not answer on its socket within 60s"
        else
            why="dockerd exited"
        fi
        die "$why; the container tests cannot run (dockerd's log: $DOCKERD_LOG)" \
            "the container tests need a working dockerd (root, cgroups, overlay2 or vfs)"
    fi
fi

# --- the stand-in base image -----------------------------------------------------------------
# The Debian mirror and suite apt uses: deb822 (*.sources) or one-line (*.list) entries; the
# first that serves the release's own suite.
suite=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
[[ -n $suite ]] || die "no VERSION_CODENAME in /etc/os-release: cannot tell which Debian suite"
mirror=$(
    {
        awk -v s="$suite" '
            /^[[:space:]]*$/ { if (u != "" && ok) { print u; exit } u = ""; ok = 0; next }
            /^URIs:/ { u = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) ok = 1 }
            END { if (u != "" && ok) print u }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true
        awk -v s="$suite" '$1 == "deb" && $3 == s { print $2 }' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true
    } | head -n 1
)
[[ -n $mirror ]] || die "no Debian mirror for suite $suite in /etc/apt" \
    "configure one (e.g. /etc/apt/sources.list.d/debian.sources), the stand-in is built from it"

# The recipe: image/standin/ (rootfs.sh, Dockerfile, entrypoint), the mirror, suite and major.
recipe=$( { cat image/standin/rootfs.sh image/standin/Dockerfile image/standin/docker-entrypoint.sh
            printf '%s %s %s\n' "$mirror" "$suite" "$PG_MAJOR"; } | sha256sum | cut -c1-16)
have=$(docker image inspect -f '{{ index .Config.Labels "org.pgward.recipe" }}' "$BASE_IMAGE" \
    2>/dev/null || true)
if [[ $have == "$recipe" ]]; then
    log "ok: $BASE_IMAGE (recipe $recipe); $(docker version -f 'docker {{.Server.Version}}')"
    exit 0
fi

log "building $BASE_IMAGE from $mirror $suite (about two minutes)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap of $suite from $mirror failed"; }

# image/standin/rootfs.sh: what the official image installs, from Debian's packages.
install -m 0755 image/standin/rootfs.sh "$root/tmp/rootfs.sh"
chroot "$root" /tmp/rootfs.sh "$PG_MAJOR" >"$work/chroot.log" 2>&1 || {
    tail -n 20 "$work/chroot.log" >&2
    die "installing postgresql-$PG_MAJOR into the stand-in failed"
}
rm "$root/tmp/rootfs.sh"

tar -C "$root" --numeric-owner -c . | docker import - "$BASE_IMAGE-rootfs" >/dev/null
rm -rf "$root"
cp image/standin/Dockerfile image/standin/docker-entrypoint.sh "$work/"
docker build -q --build-arg ROOTFS="$BASE_IMAGE-rootfs" --build-arg PG_MAJOR=$PG_MAJOR \
    --label "org.pgward.recipe=$recipe" -t "$BASE_IMAGE" "$work" >/dev/null
docker rmi "$BASE_IMAGE-rootfs" >/dev/null 2>&1 || true
log "ok: built $BASE_IMAGE (recipe $recipe)"
