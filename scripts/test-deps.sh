#!/usr/bin/env bash
# Installs what `make test` needs, from Debian's packages. Idempotent, and quick when everything
# is already there: apt is touched only when something is missing, and `apt-get update` runs at
# most once.
#
#   - a PostgreSQL server (postgres, initdb, pg_ctl under /usr/lib/postgresql/<major>/bin);
#     Debian's `postgresql` metapackage is installed only when no server is present
#   - util-linux (unshare), procps (ps, pgrep), psmisc (killall, fuser), for the process tests
#   - an OS user `postgres`, which pgward drops to when it runs as root
set -euo pipefail

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
apt_install() {
    if [[ $updated -eq 0 ]]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        updated=1
    fi
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

# --- the postgres OS user ------------------------------------------------------------------
if ! id -u postgres >/dev/null 2>&1; then
    log "creating system user postgres"
    as_root useradd --system --user-group --home-dir /var/lib/postgresql \
        --shell /bin/bash --comment 'PostgreSQL administrator' postgres
fi

# --- verify --------------------------------------------------------------------------------
"$bin/postgres" --version >/dev/null
command -v unshare >/dev/null
command -v pgrep >/dev/null
log "ok: $("$bin/postgres" --version) in $bin; user postgres uid $(id -u postgres)"
