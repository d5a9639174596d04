#!/usr/bin/env bash
# Installs what the benchmarks compare pgward against, on top of scripts/test-deps.sh:
#   - supervisor and prometheus-postgres-exporter (bench/startup.sh), pgbackrest
#     (bench/wal-archive.sh, bench/backup.sh, bench/s3.sh), zstd (bench/backup.sh) and openssl
#     (bench/s3.sh's certificate for pgBackRest's TLS), from Debian's packages
#   - yacron, from PyPI, into a virtualenv at .pgward/bench-venv (kept out of the system Python)
#   - GNU time (/usr/bin/time)
# Idempotent; apt and pip run only when something is missing.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
venv=$root/.pgward/bench-venv

log() { printf 'bench-deps: %s\n' "$*" >&2; }

scripts/test-deps.sh

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        log "need root to run: $*"
        exit 1
    fi
}

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

missing=()
for p in supervisor prometheus-postgres-exporter pgbackrest zstd openssl time python3 python3-venv; do
    have_pkg "$p" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # policy-rc.d in containers keeps the packages' own services from starting; elsewhere stop
    # them below so the benchmark owns every process it measures.
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
        as_root systemctl disable --now supervisor prometheus-postgres-exporter >/dev/null 2>&1 || true
    fi
fi

# Debian's python3, not whatever python3 comes first on PATH: its venv module is the one the
# python3-venv package provides.
if [[ ! -x $venv/bin/yacron ]]; then
    log "installing yacron into $venv"
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check yacron
fi

log "ok: supervisord $(supervisord --version)," \
    "$(prometheus-postgres-exporter --version 2>&1 | head -n 1)," \
    "yacron $("$venv/bin/yacron" --version 2>&1), $(pgbackrest version)," \
    "$(/usr/bin/time --version 2>&1 | head -n 1)"
