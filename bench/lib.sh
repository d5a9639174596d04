# shellcheck shell=bash
# shellcheck disable=SC2034 # pg_bin and as_pg are for the scripts that source this file.
# Shared helpers of the bench/ scripts (sourced, not run). Sets `pg_bin` (the newest Debian
# PostgreSQL bin dir) and `as_pg` (the prefix that runs a command as the server's user when
# root).

log() { printf 'bench: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}

now_us() { echo "${EPOCHREALTIME/./}"; }

free_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Gives paths to the server's user when root (the server runs as postgres).
own() { # paths...
    [[ $(id -u) -ne 0 ]] || chown -R postgres:postgres "$@"
}

# Removes a run's temporary directory, or keeps it (and says where) with KEEP=1.
remove_tmp() { # dir
    if [[ ${KEEP:-0} == 1 ]]; then
        log "kept $1"
    else
        rm -rf "$1"
    fi
}

# Stops the run's children (pgward stops postgres, fast, on SIGTERM), waits for them, and
# removes the temporary directory: the EXIT trap of scripts whose children are all pgward or
# exporters (they set `children` and `tmp`).
# shellcheck disable=SC2154 # children and tmp are set by the sourcing script
stop_children_and_remove_tmp() {
    local pid
    set +e
    trap '' INT TERM
    for pid in "${children[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${children[@]}"; do
        wait "$pid" 2>/dev/null
    done
    remove_tmp "$tmp"
}

show_log() { # file
    log "last lines of $1:"
    tail -n 20 "$1" >&2 || true
}

# The cluster of a script that runs one pgward-managed postgres: these use its `tmp` (sockets in
# `$tmp/run`, or in `sock_dir` when set), `port`, `data`, `ready_timeout_s` and
# `drain_timeout_s`.
# shellcheck disable=SC2154 # set by the sourcing script
psql_q() { # sql
    "$pg_bin/psql" -X -A -t -q -w -h "${sock_dir:-$tmp/run}" -p "$port" -U postgres -d postgres -c "$1"
}

# pgbench -i -s SCALE on the cluster, its output in $tmp/log/pgbench-init.log (shown on failure).
pgbench_init() { # scale
    log "pgbench -i -s $1"
    "$pg_bin/pgbench" -i -s "$1" -q -h "${sock_dir:-$tmp/run}" -p "$port" -U postgres postgres \
        >"$tmp/log/pgbench-init.log" 2>&1 || {
        show_log "$tmp/log/pgbench-init.log"
        die "pgbench -i failed"
    }
}

wait_ready() { # alive_pid
    local deadline=$(($(now_us) + ready_timeout_s * 1000000))
    until psql_q 'select 1' >/dev/null 2>&1; do
        kill -0 "$1" 2>/dev/null || return 1
        (($(now_us) < deadline)) || return 1
        sleep 0.05
    done
}

ready_count() {
    local f n=0
    for f in "$data"/pg_wal/archive_status/*.ready; do
        [[ -e $f ]] && n=$((n + 1))
    done
    echo "$n"
}

# Waits until pgward has archived every .ready segment, so that archiving does not compete
# with the next measurement.
wait_drained() {
    local deadline=$(($(now_us) + drain_timeout_s * 1000000))
    while [[ $(ready_count) -gt 0 ]]; do
        (($(now_us) < deadline)) || die "WAL archiving did not drain within ${drain_timeout_s}s"
        sleep 0.1
    done
}

pg_bin=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
[[ -n $pg_bin && -x $pg_bin/postgres ]] ||
    die "no PostgreSQL server under /usr/lib/postgresql/*/bin. HINT: run scripts/test-deps.sh"

# As root, postgres runs as the postgres OS user (pgward drops privileges itself).
if [[ $(id -u) -eq 0 ]]; then
    as_pg=(runuser -u postgres --)
else
    as_pg=()
fi

# Writes DIR/pgbackrest.conf (logs and locks under DIR): the repository and compression lines
# given, then what every benchmark shares: two processes, a fast start checkpoint, no archive
# check (postgres archives into pgward's repository, not pgBackRest's), a retention high enough
# that nothing expires inside a timed backup, and the `bench` stanza of the cluster at $data
# (socket in $sock_dir or $tmp/run, port $port).
pgbr_write_conf() { # dir lines
    local d=$1
    mkdir -p "$d/log" "$d/lock"
    cat >"$d/pgbackrest.conf" <<CONF
[global]
$2
repo1-retention-full=99
process-max=2
start-fast=y
archive-check=n
log-path=$d/log
lock-path=$d/lock
log-level-console=warn
log-level-file=info

[bench]
pg1-path=$data
pg1-socket-path=${sock_dir:-$tmp/run}
pg1-port=$port
pg1-user=postgres
CONF
    own "$d"
}
