#!/usr/bin/env bash
# WAL archiving throughput benchmark: how fast each archive_command keeps up with a pgbench
# write load. RUNS rounds of every setup, their order rotated each round; each figure is the
# median of the runs. See bench/README.md for what is measured and how.
#
# Usage: bench/wal-archive.sh [SETUP...]    SETUP is a, b, c or f (default: all four)
#   a  archive_command = test ! -f ARCHIVE/%f && cp %p ARCHIVE/%f
#   b  pgBackRest archive-push, async, process-max 2, to a local posix repository
#   c  pgward wal-push (postgres run by `pgward run`); skipped when this build has no wal-push
#   f  archive_command = true: archives nothing; the floor, what starting any archive_command
#      costs under the same load (postgres forks a shell, the timing wrapper forks the command)
#
#   DURATION        pgbench -T seconds (default 60)
#   RUNS            rounds (default 3)
#   SCALE           pgbench -i -s (default 50)
#   CLIENTS, JOBS   pgbench -c / -j (default 4 / 2)
#   PGWARD_BIN      pgward binary (default target/release/pgward, built when missing for c)
#   ARCHIVE_CMD_PGWARD  archive_command for c (default: what pgward sets, test -f
#                   MARKS/%f || PGWARD_BIN --config CONF wal-push %p, with MARKS the daemon's
#                   marks directory, $PGWARD_ARCHIVED_MARKS in postgres's environment)
#   PGWARD_LOG_LEVEL  pgward's log filter for c, e.g. pgward::wal=debug (default info; log kept with KEEP=1)
#   DRAIN_TIMEOUT   seconds to wait for the .ready backlog to drain (default 600)
#   KEEP=1          keep the temporary directory (its path is printed)
set -euo pipefail
export LC_ALL=C.UTF-8

cd "$(dirname "$0")/.."
root=$PWD

setups=("$@")
[[ ${#setups[@]} -gt 0 ]] || setups=(a b c f)
duration=${DURATION:-60}
runs=${RUNS:-3}
scale=${SCALE:-50}
clients=${CLIENTS:-4}
jobs=${JOBS:-2}
drain_timeout_s=${DRAIN_TIMEOUT:-600}
pgward_bin=${PGWARD_BIN:-$root/target/release/pgward}
ready_timeout_s=60
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
# shellcheck source=bench/runs.sh
source "$root/bench/runs.sh"

# --- prerequisites ---------------------------------------------------------------------------
for t in psql pgbench pg_ctl initdb; do
    [[ -x $pg_bin/$t ]] || die "$pg_bin/$t not found. HINT: run scripts/test-deps.sh"
done

declare -A note skipped
for s in "${setups[@]}"; do
    case $s in
    a | f) ;;
    b)
        if ! pgbackrest version >/dev/null 2>&1; then
            die "setup b needs pgbackrest. HINT: run scripts/bench-deps.sh"
        fi
        ;;
    c)
        if [[ ! -x $pgward_bin ]]; then
            log "building $pgward_bin"
            cargo build --release --locked
        fi
        if ! "$pgward_bin" wal-push --help >/dev/null 2>&1; then
            skipped[c]="pgward wal-push not available in this build"
        fi
        ;;
    *) die "unknown setup '$s' (expected a, b, c or f)" ;;
    esac
done

# --- scratch space and cleanup ---------------------------------------------------------------
tmp=$(mktemp -d /tmp/pgward-walbench.XXXXXX)
chmod 0755 "$tmp"
children=()

stop_postmaster() { # data_dir
    local pid
    [[ -f $1/postmaster.pid ]] || return 0
    pid=$(head -n 1 "$1/postmaster.pid" 2>/dev/null)
    [[ -n $pid ]] || return 0
    kill -INT "$pid" 2>/dev/null || return 0
    for _ in $(seq 600); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local pid d
    set +e
    trap '' INT TERM
    for pid in "${children[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for d in "$tmp"/*/data; do
        stop_postmaster "$d"
    done
    # pgBackRest's async archiver outlives archive-push by design; it exits once idle, but
    # nothing may be left running.
    pkill_bench_pgbackrest
    remove_tmp "$tmp"
}
# Only pgbackrest processes started with this run's config file (never a broad name match).
pkill_bench_pgbackrest() {
    local p
    for p in $(pgrep -f -- "--config=$tmp/b/pgbackrest.conf" 2>/dev/null); do
        kill -TERM "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- helpers ---------------------------------------------------------------------------------

psql_q() { # sockdir port sql
    "$pg_bin/psql" -X -A -t -q -w -h "$1" -p "$2" -U postgres -d postgres -c "$3"
}

wait_ready() { # sockdir port [alive_pid]
    local deadline=$(($(now_us) + ready_timeout_s * 1000000))
    until psql_q "$1" "$2" 'select 1' >/dev/null 2>&1; do
        if [[ -n ${3:-} ]] && ! kill -0 "$3" 2>/dev/null; then
            return 1
        fi
        (($(now_us) < deadline)) || return 1
        sleep 0.05
    done
}

ready_count() { # data_dir
    local f n=0
    for f in "$1"/pg_wal/archive_status/*.ready; do
        [[ -e $f ]] && n=$((n + 1))
    done
    echo "$n"
}

# Waits until no .ready file is left; prints the seconds it took, or ">N" on timeout.
wait_drained() { # data_dir
    local t0 deadline
    t0=$(now_us)
    deadline=$((t0 + drain_timeout_s * 1000000))
    while [[ $(ready_count "$1") -gt 0 ]]; do
        if (($(now_us) >= deadline)); then
            echo ">$drain_timeout_s"
            return 0
        fi
        sleep 0.1
    done
    awk -v us=$(($(now_us) - t0)) 'BEGIN { printf "%.1f", us / 1e6 }'
}

# "p50_ms p99_ms calls failures" from the wrapper's "<ns> <exit status>" lines.
latency_stats() { # file
    if [[ ! -s $1 ]]; then
        echo "- - 0 0"
        return
    fi
    sort -n -k1,1 "$1" | awk '
        { d[NR] = $1; if ($2 != 0) f++ }
        END {
            i50 = int(NR * 0.50 + 0.999999); i99 = int(NR * 0.99 + 0.999999)
            printf "%.1f %.1f %d %d\n", d[i50] / 1e6, d[i99] / 1e6, NR, f + 0
        }'
}

# The timing wrapper: archive_command = 'timed-archive LATFILE SHELL-COMMAND'. It runs the
# command in its own shell (eval, no extra fork) and appends "<duration ns> <exit status>" to
# LATFILE; appends under PIPE_BUF are atomic, so concurrent callers do not interleave. Bash's
# clock has microsecond resolution. The wrapper's own start-up (a bash exec) is not counted.
cat >"$tmp/timed-archive" <<'SH'
#!/usr/bin/env bash
lat=$1
shift
t0=${EPOCHREALTIME/./}
eval "$1"
rc=$?
t1=${EPOCHREALTIME/./}
echo "$(((t1 - t0) * 1000)) $rc" >>"$lat"
exit $rc
SH
chmod 0755 "$tmp/timed-archive"

# Settings every setup shares (written to postgresql.conf); only archive_command differs.
common_conf() { # sockdir port
    cat <<CONF
port = $2
unix_socket_directories = '$1'
listen_addresses = ''
wal_level = replica
archive_mode = on
synchronous_commit = off
max_wal_size = 4GB
checkpoint_timeout = 15min
shared_buffers = 256MB
CONF
}

declare -A wal_mbps segs_ps tps ready_end drain_s p50 p99 calls fails

# Drives one running cluster: pgbench -i, drain, then the timed pgbench run and the
# measurements. The setup has started postgres with archive_command already set.
measure() { # setup sockdir port data_dir latfile
    local s=$1 sock=$2 port=$3 data=$4 lat=$5 t0 t1 lsn0 lsn1 arch0 arch1 out
    log "$s: pgbench -i -s $scale"
    "$pg_bin/pgbench" -i -s "$scale" -q -h "$sock" -p "$port" -U postgres postgres \
        >"$tmp/$s/pgbench-init.log" 2>&1 || {
        show_log "$tmp/$s/pgbench-init.log"
        note[$s]="pgbench -i failed"
        return 0
    }
    # Start the timed run from the same place in every setup: the load's own backlog archived,
    # a checkpoint done.
    psql_q "$sock" "$port" 'checkpoint' >/dev/null
    log "$s: init done, draining its backlog ($(ready_count "$data") segments)"
    out=$(wait_drained "$data")
    log "$s: drained in ${out}s"
    [[ $out != '>'* ]] || {
        note[$s]="the backlog of pgbench -i did not drain within ${drain_timeout_s}s"
        return 0
    }
    : >"$lat"

    read -r lsn0 arch0 < <(psql_q "$sock" "$port" \
        "select pg_current_wal_lsn(), archived_count from pg_stat_archiver" | tr '|' ' ')
    t0=$(now_us)
    log "$s: pgbench -T $duration -c $clients -j $jobs"
    "$pg_bin/pgbench" -T "$duration" -c "$clients" -j "$jobs" -h "$sock" -p "$port" \
        -U postgres postgres >"$tmp/$s/pgbench.log" 2>&1 || {
        show_log "$tmp/$s/pgbench.log"
        note[$s]="pgbench failed"
        return 0
    }
    t1=$(now_us)
    ready_end[$s]=$(ready_count "$data")
    read -r lsn1 arch1 < <(psql_q "$sock" "$port" \
        "select pg_current_wal_lsn(), archived_count from pg_stat_archiver" | tr '|' ' ')
    drain_s[$s]=$(wait_drained "$data")

    local wal_bytes
    wal_bytes=$(psql_q "$sock" "$port" "select pg_wal_lsn_diff('$lsn1', '$lsn0')::bigint")
    wal_mbps[$s]=$(awk -v b="$wal_bytes" -v us=$((t1 - t0)) 'BEGIN { printf "%.1f", b / 1048576 / (us / 1e6) }')
    segs_ps[$s]=$(awk -v n=$((arch1 - arch0)) -v us=$((t1 - t0)) 'BEGIN { printf "%.2f", n / (us / 1e6) }')
    tps[$s]=$(awk '/^tps = / { printf "%.0f", $3 }' "$tmp/$s/pgbench.log")
    read -r "p50[$s]" "p99[$s]" "calls[$s]" "fails[$s]" < <(latency_stats "$lat")
    [[ ${fails[$s]} -eq 0 ]] || note[$s]="${fails[$s]} archive_command calls failed"
    [[ ${drain_s[$s]} != '>'* ]] || note[$s]="backlog did not drain within ${drain_timeout_s}s"
}

# A fresh data dir copied from the template and a socket dir, owned by the server's user.
prepare() { # setup
    local d=$tmp/$1
    mkdir -p "$d/run" "$d/archive"
    cp -a "$tmp/template" "$d/data"
    : >"$d/latency"
}

start_pg_ctl() { # setup port
    local d=$tmp/$1
    "${as_pg[@]}" "$pg_bin/pg_ctl" start -w -D "$d/data" -l "$d/postgres.log" >/dev/null || {
        show_log "$d/postgres.log"
        return 1
    }
    wait_ready "$d/run" "$2"
}

# --- template cluster --------------------------------------------------------------------------
log "initdb template with $pg_bin ($("$pg_bin/postgres" --version))"
mkdir "$tmp/template"
own "$tmp/template"
"${as_pg[@]}" "$pg_bin/initdb" -D "$tmp/template" -U postgres --auth=trust --no-sync \
    >"$tmp/initdb.log" 2>&1 || {
    show_log "$tmp/initdb.log"
    die "initdb failed"
}

# --- (a) cp ------------------------------------------------------------------------------------
run_a() {
    local d=$tmp/a port
    prepare a
    port=$(free_port)
    {
        common_conf "$d/run" "$port"
        echo "archive_command = '$tmp/timed-archive $d/latency \"test ! -f $d/archive/%f && cp %p $d/archive/%f\"'"
    } >>"$d/data/postgresql.conf"
    own "$d"
    start_pg_ctl a "$port" || {
        note[a]="postgres did not start"
        return 0
    }
    measure a "$d/run" "$port" "$d/data" "$d/latency"
    stop_postmaster "$d/data"
}

# --- (f) the floor: an archive_command that does nothing ---------------------------------------
run_f() {
    local d=$tmp/f port
    prepare f
    port=$(free_port)
    {
        common_conf "$d/run" "$port"
        echo "archive_command = '$tmp/timed-archive $d/latency $(type -P true)'"
    } >>"$d/data/postgresql.conf"
    own "$d"
    start_pg_ctl f "$port" || {
        note[f]="postgres did not start"
        return 0
    }
    measure f "$d/run" "$port" "$d/data" "$d/latency"
    stop_postmaster "$d/data"
}

# --- (b) pgBackRest ----------------------------------------------------------------------------
run_b() {
    local d=$tmp/b port conf
    prepare b
    port=$(free_port)
    conf=$d/pgbackrest.conf
    mkdir -p "$d/repo" "$d/spool" "$d/log" "$d/lock"
    cat >"$conf" <<CONF
[global]
repo1-path=$d/repo
archive-async=y
spool-path=$d/spool
process-max=2
compress-type=${PGBR_COMPRESS:-zst}
log-path=$d/log
lock-path=$d/lock
log-level-console=warn
log-level-file=info

[bench]
pg1-path=$d/data
pg1-socket-path=$d/run
pg1-port=$port
pg1-user=postgres
CONF
    {
        common_conf "$d/run" "$port"
        echo "archive_command = '$tmp/timed-archive $d/latency \"pgbackrest --config=$conf --stanza=bench archive-push %p\"'"
    } >>"$d/data/postgresql.conf"
    own "$d"
    start_pg_ctl b "$port" || {
        note[b]="postgres did not start"
        return 0
    }
    "${as_pg[@]}" pgbackrest --config="$conf" --stanza=bench stanza-create >"$d/stanza.log" 2>&1 || {
        show_log "$d/stanza.log"
        note[b]="pgbackrest stanza-create failed"
        stop_postmaster "$d/data"
        return 0
    }
    measure b "$d/run" "$port" "$d/data" "$d/latency"
    stop_postmaster "$d/data"
    pkill_bench_pgbackrest
}

# --- (c) pgward --------------------------------------------------------------------------------
run_c() {
    local d=$tmp/c port pid cmd
    prepare c
    port=$(free_port)
    # What pgward sets itself: its mark first (a shell built-in), then wal-push. pgward writes
    # the marks directory's path into the command it sets; this wrapped one reads it from the
    # environment pgward gives postgres.
    cmd=${ARCHIVE_CMD_PGWARD:-test -f \$PGWARD_ARCHIVED_MARKS/%f || $pgward_bin --config $d/pgward.yaml wal-push %p}
    mkdir -p "$d/repo"
    cat >"$d/pgward.yaml" <<YAML
postgres:
  data_dir: $d/data
  port: $port
  socket_dir: $d/run
  user: postgres
  bin_dir: $pg_bin
  parameters:
    listen_addresses: ""
    wal_level: replica
    synchronous_commit: "off"
    max_wal_size: 4GB
    checkpoint_timeout: 15min
    shared_buffers: 256MB
    # pgward sets archive_mode itself; this archive_command only wraps its wal-push to time it.
    archive_command: '$tmp/timed-archive $d/latency "$cmd"'
  stop: { mode: fast }
control:
  socket: $d/run/pgward.sock
# A free port for /metrics: the default, 9187, may be taken by another run or an exporter.
metrics:
  listen: 127.0.0.1:$(free_port)
storage:
  url: file://$d/repo
wal: { archive: true, push_concurrency: 4 }
log:
  level: ${PGWARD_LOG_LEVEL:-info}
YAML
    own "$d"
    "$pgward_bin" run --config "$d/pgward.yaml" 2>"$d/pgward.log" &
    pid=$!
    children+=("$pid")
    wait_ready "$d/run" "$port" "$pid" || {
        show_log "$d/pgward.log"
        note[c]="pgward did not bring postgres up"
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        return 0
    }
    measure c "$d/run" "$port" "$d/data" "$d/latency"
    # Peak resident memory of pgward itself over the whole run (uploads, compression buffers).
    peak_rss_c=$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status" 2>/dev/null || echo "?")
    kill -TERM "$pid"
    wait "$pid" || note[c]="pgward exited with status $? after SIGTERM"
    grep -q ' ERROR ' "$d/pgward.log" && note[c]="pgward logged errors (see $d/pgward.log)"
    true
}

# Every figure of every run: all["<figure>|<setup>"] holds one value per run, space-separated.
declare -A all
keep_values() { # setup
    local s=$1 f
    local -A now=([wal_mbps]=${wal_mbps[$s]:-} [segs_ps]=${segs_ps[$s]:-} [tps]=${tps[$s]:-}
        [ready_end]=${ready_end[$s]:-} [drain_s]=${drain_s[$s]:-} [p50]=${p50[$s]:-}
        [p99]=${p99[$s]:-} [calls]=${calls[$s]:-} [rss]=${peak_rss_c:-})
    [[ $s == c ]] || now[rss]=
    for f in "${!now[@]}"; do
        # Only numbers: a run that failed, or a drain that timed out (">N"), adds nothing.
        [[ ${now[$f]} =~ ^[0-9.]+$ ]] && all["$f|$s"]+=" ${now[$f]}"
    done
    unset "wal_mbps[$s]" "segs_ps[$s]" "tps[$s]" "ready_end[$s]" "drain_s[$s]" "p50[$s]" \
        "p99[$s]" "calls[$s]"
    peak_rss_c=
}

# Round r runs every setup, in an order rotated by one each round, so no setup always runs
# first or after the same other one.
for ((r = 1; r <= runs; r++)); do
    mapfile -t order < <(round_order "$r" "${setups[@]}")
    for s in "${order[@]}"; do
        if [[ -n ${skipped[$s]:-} ]]; then
            [[ $r -gt 1 ]] || log "setup $s skipped: ${skipped[$s]}"
            continue
        fi
        # A fresh directory per run: the previous run's is kept (KEEP=1) under its round.
        if [[ -d $tmp/$s ]]; then
            if [[ ${KEEP:-0} == 1 ]]; then mv "$tmp/$s" "$tmp/$s-round$((r - 1))"; else rm -rf "${tmp:?}/$s"; fi
        fi
        log "setup $s, round $r of $runs"
        "run_$s"
        keep_values "$s"
        # Each setup's cluster and archive are a few GB: free the disk before the next one.
        [[ ${KEEP:-0} == 1 ]] || rm -rf "${tmp:?}/$s/data" "${tmp:?}/$s/archive" "${tmp:?}/$s/repo" \
            "${tmp:?}/$s/spool"
    done
done

# --- report ----------------------------------------------------------------------------------
declare -A label=(
    [a]="(a) cp"
    [b]="(b) pgBackRest async, 2 procs"
    [c]="(c) pgward wal-push"
    [f]="(f) true (floor, no archive)"
)
row() {
    printf '%-30s | %16s | %6s | %6s | %10s | %13s | %17s | %17s | %6s\n' "$@"
}
# shellcheck disable=SC2086 # the runs' values are space-separated numbers
cell() { # figure setup format
    summary "$3" ${all["$1|$2"]:-}
}
# shellcheck disable=SC2086
med() { median ${all["$1|$2"]:-}; }
echo
echo "pgbench -i -s $scale, then -T $duration -c $clients -j $jobs; synchronous_commit=off;" \
    "median (min–max) of $runs runs, setups interleaved"
row "setup" "WAL MB/s" "segs/s" "tps" ".ready end" "drain s" "p50 ms" "p99 ms" "calls"
row "------------------------------" "----------------" "------" "------" "----------" \
    "-------------" "-----------------" "-----------------" "------"
for s in "${setups[@]}"; do
    if [[ -n ${skipped[$s]:-} ]]; then
        printf '%-30s | skipped: %s\n' "${label[$s]}" "${skipped[$s]}"
        continue
    fi
    row "${label[$s]}" "$(cell wal_mbps "$s" %.1f)" "$(med segs_ps "$s")" "$(med tps "$s")" \
        "$(cell ready_end "$s" %.0f)" "$(cell drain_s "$s" %.1f)" "$(cell p50 "$s" %.1f)" \
        "$(cell p99 "$s" %.1f)" "$(med calls "$s")"
done
for s in "${setups[@]}"; do
    [[ -z ${note[$s]:-} ]] || echo "note $s: ${note[$s]}"
    [[ $s != c || -z ${all["rss|c"]:-} ]] || echo "pgward peak RSS during (c): $(cell rss c %.1f) MB"
done
echo
echo "postgres: $("$pg_bin/postgres" --version); $(pgbackrest version 2>/dev/null || echo 'no pgbackrest')."
echo "$(machine_line); $runs rounds, the setups' order rotated each round"

for s in "${setups[@]}"; do
    [[ -z ${note[$s]:-} ]] || exit 1
done
