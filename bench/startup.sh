#!/usr/bin/env bash
# Startup, shutdown and idle-memory benchmark: pgward against postgres alone and against the
# supervisord + yacron + postgres_exporter stack it replaces. One run of each setup; see
# bench/README.md for what is measured and how.
#
# Usage: bench/startup.sh [SETUP...]      SETUP is a, b or c (default: all three)
#   PGWARD_BIN   pgward binary (default target/release/pgward, built when missing)
#   IDLE_SECS    idle time before memory is read (default 3)
#   KEEP=1       keep the temporary directory (its path is printed)
set -euo pipefail
export LC_ALL=C.UTF-8 # so ${#s} counts characters when the report is aligned

cd "$(dirname "$0")/.."
root=$PWD

setups=("$@")
[[ ${#setups[@]} -gt 0 ]] || setups=(a b c)
idle_secs=${IDLE_SECS:-3}
pgward_bin=${PGWARD_BIN:-$root/target/release/pgward}
venv=$root/.pgward/bench-venv
ready_timeout_s=60
stop_timeout_s=120
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"

# --- prerequisites ---------------------------------------------------------------------------
psql_bin=$pg_bin/psql
[[ -x $psql_bin ]] || psql_bin=$(command -v psql) || die "psql not found"
for s in "${setups[@]}"; do
    case $s in
    a) ;;
    b)
        if [[ ! -x $pgward_bin ]]; then
            log "building $pgward_bin"
            cargo build --release --locked
        fi
        ;;
    c)
        if ! command -v supervisord >/dev/null || [[ ! -x /usr/bin/prometheus-postgres-exporter ]] ||
            [[ ! -x $venv/bin/yacron ]]; then
            die "setup c needs supervisor, prometheus-postgres-exporter and yacron." \
                "HINT: run scripts/bench-deps.sh"
        fi
        ;;
    *) die "unknown setup '$s' (expected a, b or c)" ;;
    esac
done

# --- scratch space and cleanup ---------------------------------------------------------------
tmp=$(mktemp -d /tmp/pgward-bench.XXXXXX)
chmod 0755 "$tmp"
children=()

cleanup() {
    local pid d
    set +e
    trap '' INT TERM
    for pid in "${children[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    # Any postmaster still up (an interrupted run): immediate shutdown, then SIGKILL.
    for d in "$tmp"/*/data; do
        [[ -f $d/postmaster.pid ]] || continue
        pid=$(head -n 1 "$d/postmaster.pid" 2>/dev/null)
        [[ -n $pid ]] || continue
        kill -QUIT "$pid" 2>/dev/null
        sleep 0.5
        kill -KILL "$pid" 2>/dev/null
    done
    remove_tmp "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- helpers ---------------------------------------------------------------------------------
ms() { awk -v us="$1" 'BEGIN { printf "%.1f", us / 1000 }'; }

# A fresh data dir copied from the template, and a socket dir, both owned by the server's user.
prepare() { # setup
    local d=$tmp/$1
    mkdir -p "$d/run"
    cp -a "$tmp/template" "$d/data"
    [[ $(id -u) -ne 0 ]] || chown -R postgres:postgres "$d"
}

# True once `select 1` succeeds over the unix socket.
can_query() { # sockdir port
    "$psql_bin" -X -A -t -q -w -h "$1" -p "$2" -U postgres -d postgres -c 'select 1' \
        >/dev/null 2>&1
}

# Polls every 5 ms until a query succeeds; fails when `alive_pid` dies or after the timeout.
wait_ready() { # sockdir port alive_pid
    local deadline=$(($(now_us) + ready_timeout_s * 1000000))
    until can_query "$1" "$2"; do
        if [[ -n ${3:-} ]] && ! kill -0 "$3" 2>/dev/null; then
            return 1
        fi
        (($(now_us) < deadline)) || return 1
        sleep 0.005
    done
}

# True while pid exists and is not a zombie (a postmaster started by pg_ctl is not our child,
# so it is reaped by whoever adopted it, possibly late).
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# Sends `signal` to our child `pid` and waits for it, SIGKILLing it after stop_timeout_s.
# Sets stop_us (signal to exit, in microseconds) and stop_rc (its exit status). Runs in this
# shell, not a subshell, since only the parent can wait for a child.
stop_child() { # signal pid
    local t0 t1 watchdog
    # The watchdog's sleep must not outlive it holding our stdout (a pipe reader would wait).
    (
        exec >/dev/null 2>&1
        nap=
        trap '[[ -z $nap ]] || kill "$nap"; exit 0' TERM
        sleep "$stop_timeout_s" &
        nap=$!
        wait "$nap"
        kill -KILL "$2"
    ) &
    watchdog=$!
    t0=$(now_us)
    kill "-$1" "$2"
    stop_rc=0
    wait "$2" || stop_rc=$?
    t1=$(now_us)
    kill "$watchdog" 2>/dev/null || true
    wait "$watchdog" 2>/dev/null || true
    stop_us=$((t1 - t0))
}

# "RSS_kB PSS_kB" summed over the given pids, from /proc/<pid>/smaps_rollup.
mem_kb() {
    local pid rss=0 pss=0 r p
    for pid in "$@"; do
        read -r r p < <(awk '/^Rss:/ { r = $2 } /^Pss:/ { p = $2 } END { print r + 0, p + 0 }' \
            "/proc/$pid/smaps_rollup")
        rss=$((rss + r))
        pss=$((pss + p))
    done
    echo "$rss $pss"
}

mb() { awk -v kb="$1" 'BEGIN { printf "%.1f", kb / 1024 }'; }

declare -A start_ms stop_ms rss_mb pss_mb note

# --- template cluster --------------------------------------------------------------------------
log "initdb template with $pg_bin ($("$pg_bin/postgres" --version))"
mkdir "$tmp/template"
[[ $(id -u) -ne 0 ]] || chown postgres:postgres "$tmp/template"
"${as_pg[@]}" "$pg_bin/initdb" -D "$tmp/template" -U postgres --auth=trust --no-sync \
    >"$tmp/initdb.log" 2>&1 || {
    show_log "$tmp/initdb.log"
    die "initdb failed"
}

# --- (a) postgres alone ----------------------------------------------------------------------
run_a() {
    local d=$tmp/a port t0 t1 t2 t3 pid
    prepare a
    port=$(free_port)
    t0=$(now_us)
    # -W: pg_ctl's own wait polls every 100 ms; readiness is measured by the psql loop instead.
    "${as_pg[@]}" "$pg_bin/pg_ctl" start -W -D "$d/data" -l "$d/postgres.log" \
        -o "-p $port -k $d/run -c listen_addresses=127.0.0.1" >/dev/null
    if ! wait_ready "$d/run" "$port"; then
        show_log "$d/postgres.log"
        note[a]="postgres did not become ready"
        return 0
    fi
    t1=$(now_us)
    pid=$(head -n 1 "$d/data/postmaster.pid")
    start_ms[a]=$(ms $((t1 - t0)))
    sleep "$idle_secs"
    rss_mb[a]=0
    pss_mb[a]=0
    # `pg_ctl stop -m fast` sends SIGINT (postgres's fast shutdown; SIGTERM would be "smart").
    # It polls every 100 ms, so the signal is sent here and the postmaster watched directly.
    t2=$(now_us)
    kill -INT "$pid"
    while alive "$pid"; do sleep 0.001; done
    t3=$(now_us)
    stop_ms[a]=$(ms $((t3 - t2)))
}

# --- (b) postgres under pgward -----------------------------------------------------------------
run_b() {
    local d=$tmp/b port t0 t1 pid rc read_rss read_pss
    prepare b
    port=$(free_port)
    cat >"$d/pgward.yaml" <<YAML
postgres:
  data_dir: $d/data
  port: $port
  socket_dir: $d/run
  user: postgres
  bin_dir: $pg_bin
  parameters:
    listen_addresses: 127.0.0.1
  stop: { mode: fast }
control:
  socket: $d/run/pgward.sock
# A free port for /metrics: the default, 9187, may be taken by another run or an exporter.
metrics:
  listen: 127.0.0.1:$(free_port)
# Like (a) and (c): supervision only, no WAL archiving (bench/wal-archive.sh measures that).
wal:
  archive: false
log:
  level: info
YAML
    t0=$(now_us)
    "$pgward_bin" run --config "$d/pgward.yaml" 2>"$d/pgward.log" &
    pid=$!
    children+=("$pid")
    if ! wait_ready "$d/run" "$port" "$pid"; then
        show_log "$d/pgward.log"
        note[b]="pgward did not bring postgres up"
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        return 0
    fi
    t1=$(now_us)
    start_ms[b]=$(ms $((t1 - t0)))
    sleep "$idle_secs"
    read -r read_rss read_pss < <(mem_kb "$pid")
    rss_mb[b]=$(mb "$read_rss")
    pss_mb[b]=$(mb "$read_pss")
    stop_child TERM "$pid"
    stop_ms[b]=$(ms "$stop_us")
    rc=$stop_rc
    [[ $rc -eq 0 ]] || note[b]="pgward exited with status $rc after SIGTERM"
    if [[ -f $d/data/postmaster.pid ]] && alive "$(head -n 1 "$d/data/postmaster.pid")"; then
        note[b]="postgres still running after pgward exited"
    fi
}

# --- (c) supervisord + yacron + postgres_exporter ---------------------------------------------
run_c() {
    local d=$tmp/c port eport t0 t1 pid rc pids=() p read_rss read_pss user_line=
    prepare c
    port=$(free_port)
    eport=$(free_port)
    [[ $(id -u) -ne 0 ]] || user_line="user=postgres"
    cat >"$d/yacron.yaml" <<YAML
jobs:
  - name: analyze
    command: $pg_bin/vacuumdb --all --analyze-only -h $d/run -p $port -U postgres
    shell: /bin/sh
    schedule: "0 3 * * 0"
YAML
    cat >"$d/supervisord.conf" <<CONF
[supervisord]
nodaemon=true
logfile=$d/supervisord.log
pidfile=$d/supervisord.pid
childlogdir=$d
$([[ $(id -u) -ne 0 ]] || echo user=root)

[program:postgres]
command=$pg_bin/postgres -D $d/data -p $port -k $d/run -c listen_addresses=127.0.0.1
$user_line
priority=10
autorestart=true
stopsignal=INT
stopwaitsecs=60
redirect_stderr=true
stdout_logfile=$d/postgres.log

[program:yacron]
command=$venv/bin/yacron -c $d/yacron.yaml
priority=20
autorestart=true
redirect_stderr=true
stdout_logfile=$d/yacron.log

[program:postgres_exporter]
command=/usr/bin/prometheus-postgres-exporter --web.listen-address=127.0.0.1:$eport
environment=DATA_SOURCE_NAME="host=$d/run port=$port user=postgres dbname=postgres sslmode=disable"
$user_line
priority=20
autorestart=true
redirect_stderr=true
stdout_logfile=$d/exporter.log
CONF
    t0=$(now_us)
    supervisord -n -c "$d/supervisord.conf" >"$d/supervisord.out" 2>&1 &
    pid=$!
    children+=("$pid")
    if ! wait_ready "$d/run" "$port" "$pid"; then
        show_log "$d/supervisord.log"
        note[c]="supervisord did not bring postgres up"
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        return 0
    fi
    t1=$(now_us)
    start_ms[c]=$(ms $((t1 - t0)))
    sleep "$idle_secs"
    # Everything that is not postgres: supervisord and its children other than the postmaster.
    pids=("$pid")
    for p in $(pgrep -P "$pid"); do
        [[ $(cat "/proc/$p/comm" 2>/dev/null) == postgres ]] || pids+=("$p")
    done
    [[ ${#pids[@]} -eq 3 ]] || note[c]="expected 3 non-postgres processes, found ${#pids[@]}"
    read -r read_rss read_pss < <(mem_kb "${pids[@]}")
    rss_mb[c]=$(mb "$read_rss")
    pss_mb[c]=$(mb "$read_pss")
    stop_child TERM "$pid"
    stop_ms[c]=$(ms "$stop_us")
    rc=$stop_rc
    [[ $rc -eq 0 ]] || note[c]="supervisord exited with status $rc after SIGTERM"
}

for s in "${setups[@]}"; do
    log "setup $s"
    "run_$s"
done

# --- report ----------------------------------------------------------------------------------
declare -A label=(
    [a]="(a) postgres alone (pg_ctl)"
    [b]="(b) postgres under pgward"
    [c]="(c) supervisord+yacron+exporter"
)
# printf pads by bytes; "→" is three, so columns are padded by character count instead.
pad() { # width text [left]
    local fill=$(($1 - ${#2}))
    ((fill > 0)) || fill=0
    if [[ -n ${3:-} ]]; then
        printf '%s%*s' "$2" "$fill" ''
    else
        printf '%*s%s' "$fill" '' "$2"
    fi
}
row() {
    printf '%s | %s | %s | %s | %s\n' "$(pad 33 "$1" left)" "$(pad 15 "$2")" "$(pad 15 "$3")" \
        "$(pad 19 "$4")" "$(pad 6 "$5")"
}
echo
row "setup" "start→ready ms" "SIGTERM→exit ms" "non-postgres RSS MB" "PSS MB"
row "---------------------------------" "---------------" "---------------" \
    "-------------------" "------"
for s in "${setups[@]}"; do
    if [[ $s == a ]]; then
        row "${label[$s]}" "${start_ms[$s]:--}" "${stop_ms[$s]:--}" "n/a" "n/a"
    else
        row "${label[$s]}" "${start_ms[$s]:--}" "${stop_ms[$s]:--}" "${rss_mb[$s]:--}" \
            "${pss_mb[$s]:--}"
    fi
done
for s in "${setups[@]}"; do
    [[ -z ${note[$s]:-} ]] || echo "note $s: ${note[$s]}"
done
echo
echo "targets: pgward adds <= 50 ms to postgres's own start and stop; pgward idles at <= 12 MB RSS"
if [[ -n ${start_ms[a]:-} && -n ${start_ms[b]:-} && -n ${stop_ms[a]:-} && -n ${stop_ms[b]:-} ]]; then
    awk -v sa="${start_ms[a]}" -v sb="${start_ms[b]}" -v ta="${stop_ms[a]}" -v tb="${stop_ms[b]}" \
        -v rss="${rss_mb[b]}" 'BEGIN {
            printf "measured: pgward adds %+.1f ms to start, %+.1f ms to stop; idles at %.1f MB RSS\n",
                sb - sa, tb - ta, rss
        }'
fi
echo "postgres: $("$pg_bin/postgres" --version); one run per setup; $(nproc) CPUs"

# Any note means a setup did not behave as it should: fail, after the table is out.
for s in "${setups[@]}"; do
    [[ -z ${note[$s]:-} ]] || exit 1
done
