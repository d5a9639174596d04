#!/usr/bin/env bash
# Exporter benchmark: pgward's /metrics against prometheus-postgres-exporter (Debian), same
# cluster, same run: median and p95 scrape time of SCRAPES scrapes each (taken in turn, one of
# each, so both see the same load), series per scrape, and resident memory (peak and after the
# scrapes) of pgward's whole process and of postgres_exporter's; with 1 database and with
# DATABASES databases. See bench/README.md.
set -euo pipefail
export LC_ALL=C.UTF-8

cd "$(dirname "$0")/.."
root=$PWD

scrapes=${SCRAPES:-50}
databases=${DATABASES:-100}
pgward_bin=${PGWARD_BIN:-$root/target/release/pgward}
exporter_bin=${EXPORTER_BIN:-/usr/bin/prometheus-postgres-exporter}
ready_timeout_s=60
source "$root/bench/lib.sh"

[[ -x $exporter_bin ]] || die "$exporter_bin not found. HINT: run scripts/bench-deps.sh"
command -v curl >/dev/null 2>&1 || die "curl not found"
if [[ ! -x $pgward_bin ]]; then
    log "building $pgward_bin"
    cargo build --release --locked
fi

tmp=$(mktemp -d /tmp/pgward-exporterbench.XXXXXX)
chmod 0755 "$tmp"
mkdir "$tmp/run" "$tmp/log"
children=()
trap stop_children_and_remove_tmp EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port=$(free_port)
pgward_port=$(free_port)
exporter_port=$(free_port)
data=$tmp/data
own "$tmp/run"
cat >"$tmp/pgward.yaml" <<YAML
postgres:
  data_dir: $data
  port: $port
  socket_dir: $tmp/run
  user: postgres
  bin_dir: $pg_bin
  init:
    password: bench
storage:
  url: file://$tmp/repo
control:
  socket: $tmp/run/pgward.sock
metrics:
  listen: 127.0.0.1:$pgward_port
YAML

log "starting postgres under pgward ($("$pg_bin/postgres" --version))"
# shellcheck disable=SC2086 # PGWARD_ENV is a list of VAR=value words
env ${PGWARD_ENV:-} "$pgward_bin" --config "$tmp/pgward.yaml" run >"$tmp/log/pgward.log" 2>&1 &
pgward_pid=$!
children+=("$pgward_pid")

wait_http() { # url pid
    local deadline=$(($(now_us) + ready_timeout_s * 1000000))
    until curl -sf -o /dev/null "$1"; do
        kill -0 "$2" 2>/dev/null || die "the process behind $1 exited"
        (($(now_us) < deadline)) || die "$1 did not answer within ${ready_timeout_s}s"
        sleep 0.05
    done
}
wait_http "http://127.0.0.1:$pgward_port/readyz" "$pgward_pid"

DATA_SOURCE_NAME="host=$tmp/run port=$port user=postgres password=bench dbname=postgres sslmode=disable" \
    "$exporter_bin" --web.listen-address="127.0.0.1:$exporter_port" \
    >"$tmp/log/postgres_exporter.log" 2>&1 &
exporter_pid=$!
children+=("$exporter_pid")
wait_http "http://127.0.0.1:$exporter_port/metrics" "$exporter_pid"

psql_q() { # sql
    PGPASSWORD=bench "$pg_bin/psql" -X -A -t -q -w -h "$tmp/run" -p "$port" -U postgres \
        -d postgres -c "$1"
}

kib() { # pid field: VmRSS or VmHWM of pid, in MiB
    awk -v f="$2:" '$1 == f { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

# One scrape of url: its time in ms; its body in file.
scrape() { # url file
    curl -sf -o "$2" -w '%{time_total}' "$1" | awk '{ printf "%.2f\n", $1 * 1000 }'
}

stats() { # file of ms values: median p95
    sort -n "$1" | awk '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        p = v[int(NR * 0.95 + 0.999)]
        printf "%.1f %.1f", m, p }'
}

series() { # body file
    grep -cv '^#' "$1" || true
}

declare -A result
measure() { # label
    local label=$1 i
    : >"$tmp/pgward.ms"
    : >"$tmp/exporter.ms"
    # Warm both (connections, caches).
    scrape "http://127.0.0.1:$pgward_port/metrics" "$tmp/pgward.prom" >/dev/null
    scrape "http://127.0.0.1:$exporter_port/metrics" "$tmp/exporter.prom" >/dev/null
    for ((i = 0; i < scrapes; i++)); do
        scrape "http://127.0.0.1:$pgward_port/metrics" "$tmp/pgward.prom" >>"$tmp/pgward.ms"
        scrape "http://127.0.0.1:$exporter_port/metrics" "$tmp/exporter.prom" >>"$tmp/exporter.ms"
    done
    result[$label,pgward]="$(stats "$tmp/pgward.ms") $(series "$tmp/pgward.prom") $(grep -c '^pg_' "$tmp/pgward.prom" || true) $(kib "$pgward_pid" VmRSS) $(kib "$pgward_pid" VmHWM)"
    result[$label,exporter]="$(stats "$tmp/exporter.ms") $(series "$tmp/exporter.prom") $(grep -c '^pg_' "$tmp/exporter.prom" || true) $(kib "$exporter_pid" VmRSS) $(kib "$exporter_pid" VmHWM)"
    log "$label: pgward ${result[$label,pgward]}; postgres_exporter ${result[$label,exporter]}"
}

measure "1 database"
# Copied as files (the default before 15): each database then costs one WAL record, not its
# pages, so archiving has nothing to do while the exporters are measured.
strategy=
[[ $("$pg_bin/postgres" --version | grep -oE '[0-9]+' | head -n 1) -lt 15 ]] || strategy="STRATEGY FILE_COPY"
log "creating $databases databases"
for ((i = 1; i < databases; i++)); do
    psql_q "CREATE DATABASE bench_$i $strategy"
done
measure "$databases databases"

echo
echo "$scrapes scrapes each, taken in turn; $(nproc) CPUs; $("$pg_bin/postgres" --version)"
printf '%-28s | %-18s | %9s | %9s | %7s | %9s | %7s | %8s\n' cluster exporter "p50 ms" "p95 ms" series "pg_ series" "RSS MB" "peak MB"
printf '%-28s | %-18s | %9s | %9s | %7s | %9s | %7s | %8s\n' ---------------------------- ------------------ --------- --------- ------- --------- ------- --------
for label in "1 database" "$databases databases"; do
    for who in pgward exporter; do
        read -r p50 p95 n pg rss peak <<<"${result[$label,$who]}"
        name=$([[ $who == pgward ]] && echo "pgward (whole process)" || echo "postgres_exporter")
        printf '%-28s | %-18s | %9s | %9s | %7s | %9s | %7s | %8s\n' "$label" "$name" "$p50" "$p95" "$n" "$pg" "$rss" "$peak"
    done
done
echo "postgres_exporter: $("$exporter_bin" --version 2>&1 | head -n 1)"
