#!/usr/bin/env bash
# Fleet benchmark: FLEET_N small clusters, each run by its own `pgward run`, all archiving to
# one S3 server (s3s-fs) through one latency proxy, under a steady pgbench trickle. Measures
# what the fleet costs the storage (requests per second per cluster), how long postgres waits
# for each archive_command (p99), and each daemon's memory and CPU; then a window in which the
# storage answers every request with 503 SlowDown, and how long the fleet takes to catch up
# afterwards, with a check that no WAL segment is missing. See bench/README.md.
#
# Usage: bench/fleet.sh                (as root: pgward drops to the postgres user)
#   FLEET_N           clusters (default 50)
#   LATENCY_MS        delay the proxy adds per request (default 10)
#   RATE              pgbench -R per cluster, transactions per second (default 5)
#   STEADY_SECS       the measured steady window (default 180)
#   SLOWDOWN_SECS     the 503 SlowDown window (default 30)
#   ARCHIVE_TIMEOUT   wal.archive_timeout of each cluster (default 30s)
#   CATCHUP_TIMEOUT   seconds to wait for the fleet to catch up after the window (default 600)
#   PGWARD_BIN        pgward binary (default target/release/pgward, built when missing)
#   KEEP=1            keep the temporary directory (its path is printed)
set -euo pipefail
export LC_ALL=C.UTF-8

cd "$(dirname "$0")/.."
root=$PWD

n=${FLEET_N:-50}
latency_ms=${LATENCY_MS:-10}
rate=${RATE:-5}
steady_s=${STEADY_SECS:-180}
slowdown_s=${SLOWDOWN_SECS:-30}
archive_timeout=${ARCHIVE_TIMEOUT:-30s}
catchup_timeout_s=${CATCHUP_TIMEOUT:-600}
pgward_bin=${PGWARD_BIN:-$root/target/release/pgward}
ready_timeout_s=60
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
# shellcheck source=bench/runs.sh
source "$root/bench/runs.sh"
# shellcheck source=bench/s3lib.sh
source "$root/bench/s3lib.sh"

# --- prerequisites ---------------------------------------------------------------------------
[[ $(id -u) -eq 0 ]] || die "run as root: each pgward drops to the postgres user"
for t in psql pgbench initdb; do
    [[ -x $pg_bin/$t ]] || die "$pg_bin/$t not found. HINT: run scripts/test-deps.sh"
done
command -v curl >/dev/null 2>&1 || die "curl not found"
if [[ ! -x $pgward_bin ]]; then
    log "building $pgward_bin"
    cargo build --release --locked
fi
clk_tck=$(getconf CLK_TCK)

# --- scratch space and cleanup ---------------------------------------------------------------
tmp=$(mktemp -d /tmp/pgward-fleet.XXXXXX)
chmod 0755 "$tmp"
children=()
loaders=()
cleanup() {
    local pid
    for pid in "${loaders[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    stop_all
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_s3
slowdown_file=$tmp/slowdown
start_proxy fleet "$latency_ms" "slowdown=$slowdown_file"

# The archive_command wrapper: runs pgward's own command (what pgward sets: its mark, else
# wal-push) and appends "<end, epoch µs> <duration µs> <exit status> <file>" to the cluster's
# ack log. Bash's clock has microsecond resolution; appends under PIPE_BUF are atomic.
cat >"$tmp/timed-archive" <<'SH'
#!/usr/bin/env bash
log=$1 name=$2
shift 2
t0=${EPOCHREALTIME/./}
eval "$1"
rc=$?
t1=${EPOCHREALTIME/./}
echo "$t1 $((t1 - t0)) $rc $name" >>"$log"
exit $rc
SH
chmod 0755 "$tmp/timed-archive"

# --- the clusters ------------------------------------------------------------------------------
log "initdb template with $pg_bin ($("$pg_bin/postgres" --version))"
mkdir "$tmp/template"
own "$tmp/template"
"${as_pg[@]}" "$pg_bin/initdb" -D "$tmp/template" -U postgres --auth=trust --no-sync \
    >"$tmp/initdb.log" 2>&1 || {
    show_log "$tmp/initdb.log"
    die "initdb failed"
}

declare -a pg_port metrics_port daemon_pid
cdir() { echo "$tmp/c$1"; }
psql_c() { # i sql
    "$pg_bin/psql" -X -A -t -q -w -h "$(cdir "$1")/run" -p "${pg_port[$1]}" -U postgres \
        -d postgres -c "$2"
}
ready_names() { # i: the .ready files of cluster i, one segment name a line
    local f
    for f in "$(cdir "$1")"/data/pg_wal/archive_status/*.ready; do
        [[ -e $f ]] || continue
        f=${f##*/}
        echo "${f%.ready}"
    done
}

start_cluster() { # i
    local i=$1 d cmd
    d=$(cdir "$i")
    mkdir -p "$d/run"
    cp -a "$tmp/template" "$d/data"
    : >"$d/acks"
    pg_port[i]=$(free_port)
    metrics_port[i]=$(free_port)
    cmd="test -f \$PGWARD_ARCHIVED_MARKS/%f || $pgward_bin --config $d/pgward.yaml wal-push %p"
    cat >"$d/pgward.yaml" <<YAML
postgres:
  data_dir: $d/data
  port: ${pg_port[i]}
  socket_dir: $d/run
  user: postgres
  bin_dir: $pg_bin
  parameters:
    listen_addresses: ""
    shared_buffers: 16MB
    max_connections: 20
    # What pgward sets, wrapped to time each call.
    archive_command: '$tmp/timed-archive $d/acks %f "$cmd"'
  stop: { mode: fast }
control:
  socket: $d/run/pgward.sock
metrics:
  listen: 127.0.0.1:${metrics_port[i]}
$(pgward_s3_storage fleet "cluster-$i")
wal: { archive: true, archive_timeout: $archive_timeout }
log:
  level: info
YAML
    own "$d"
    "$pgward_bin" run --config "$d/pgward.yaml" 2>"$d/pgward.log" &
    daemon_pid[i]=$!
    children+=("$!")
}

wait_cluster() { # i
    local i=$1 deadline=$(($(now_us) + ready_timeout_s * 1000000))
    until psql_c "$i" 'select 1' >/dev/null 2>&1; do
        kill -0 "${daemon_pid[i]}" 2>/dev/null || {
            show_log "$(cdir "$i")/pgward.log"
            die "cluster $i: pgward exited"
        }
        (($(now_us) < deadline)) || die "cluster $i: postgres not ready within ${ready_timeout_s}s"
        sleep 0.05
    done
}

log "starting $n clusters"
for ((i = 1; i <= n; i++)); do start_cluster "$i"; done
for ((i = 1; i <= n; i++)); do wait_cluster "$i"; done
log "pgbench -i -s 1 on each"
for ((i = 1; i <= n; i++)); do
    "$pg_bin/pgbench" -i -s 1 -q -h "$(cdir "$i")/run" -p "${pg_port[i]}" -U postgres postgres \
        >"$(cdir "$i")/pgbench-init.log" 2>&1 || {
        show_log "$(cdir "$i")/pgbench-init.log"
        die "cluster $i: pgbench -i failed"
    }
    psql_c "$i" 'checkpoint' >/dev/null
done

# Waits until no cluster has a .ready file; dies after the timeout.
wait_all_drained() { # timeout_s
    local deadline=$(($(now_us) + $1 * 1000000)) i
    for ((i = 1; i <= n; i++)); do
        while [[ -n $(ready_names "$i") ]]; do
            (($(now_us) < deadline)) || die "cluster $i: WAL not archived within $1 s"
            sleep 0.2
        done
    done
}
wait_all_drained 300

# --- steady window -----------------------------------------------------------------------------
# One pgbench client per cluster at RATE transactions per second, running until the end of the
# catch-up; the measured window starts once they all run.
log "pgbench -R $rate on each cluster"
for ((i = 1; i <= n; i++)); do
    "$pg_bin/pgbench" -n -R "$rate" -c 1 -j 1 -T $((steady_s + slowdown_s + catchup_timeout_s + 60)) \
        -h "$(cdir "$i")/run" -p "${pg_port[i]}" -U postgres postgres \
        >"$(cdir "$i")/pgbench.log" 2>&1 &
    loaders+=("$!")
done
sleep 5

cpu_ticks() { # pid: utime + stime
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}
# pgward_storage_requests_total of one daemon, summed over its labels; "" when it has none.
metric_requests() { # i
    curl -sf "http://127.0.0.1:${metrics_port[$1]}/metrics" |
        awk '/^pgward_storage_requests_total[{ ]/ { s += $NF; found = 1 } END { if (found) print s }'
}
snapshot() { # name: proxy counts, CPU ticks and storage requests of every daemon
    local i
    proxy_count fleet 'c["seq"]' >/dev/null
    cp "$tmp/proxy/fleet.json" "$tmp/proxy-$1.json"
    for ((i = 1; i <= n; i++)); do
        echo "$i $(cpu_ticks "${daemon_pid[i]}") $(metric_requests "$i")"
    done >"$tmp/daemons-$1"
}

log "steady window: ${steady_s}s"
t0=$(now_us)
snapshot steady-start
sleep "$steady_s"
snapshot steady-end
t1=$(now_us)
window_s=$(awk -v us=$((t1 - t0)) 'BEGIN { printf "%.3f", us / 1e6 }')
for ((i = 1; i <= n; i++)); do
    awk '/^VmRSS:/ { r = $2 } /^VmHWM:/ { h = $2 } END { printf "%.1f %.1f\n", r / 1024, h / 1024 }' \
        "/proc/${daemon_pid[i]}/status"
done >"$tmp/rss"

# --- SlowDown window ---------------------------------------------------------------------------
declare -a failed0 failed1 backlog_at_end
for ((i = 1; i <= n; i++)); do failed0[i]=$(psql_c "$i" 'select failed_count from pg_stat_archiver'); done
log "SlowDown window: every request answered 503 for ${slowdown_s}s"
: >"$slowdown_file"
sleep "$slowdown_s"
rm -f "$slowdown_file"
t_end=$(now_us)
for ((i = 1; i <= n; i++)); do
    ready_names "$i" >"$(cdir "$i")/backlog"
    backlog_at_end[i]=$(wc -l <"$(cdir "$i")/backlog")
done

# Caught up: every segment that was .ready when the window ended is archived (its .ready gone),
# in every cluster; the trickle goes on meanwhile.
log "waiting for every cluster to archive its backlog"
declare -a caught_s
deadline=$((t_end + catchup_timeout_s * 1000000))
left=$n
while ((left > 0)); do
    left=0
    for ((i = 1; i <= n; i++)); do
        [[ -z ${caught_s[i]:-} ]] || continue
        pending=0
        while read -r seg; do
            [[ ! -e $(cdir "$i")/data/pg_wal/archive_status/$seg.ready ]] || pending=1
        done <"$(cdir "$i")/backlog"
        if ((pending)); then
            left=$((left + 1))
        else
            caught_s[i]=$(awk -v us=$(($(now_us) - t_end)) 'BEGIN { printf "%.1f", us / 1e6 }')
        fi
    done
    ((left == 0)) && break
    (($(now_us) < deadline)) || die "$left clusters did not catch up within ${catchup_timeout_s}s"
    sleep 0.2
done
t_caught=$(now_us)
for ((i = 1; i <= n; i++)); do failed1[i]=$(psql_c "$i" 'select failed_count from pg_stat_archiver'); done

# --- stop the load, archive what is left, and look for missing WAL -------------------------------
for pid in "${loaders[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
for pid in "${loaders[@]}"; do wait "$pid" 2>/dev/null || true; done
loaders=()
for ((i = 1; i <= n; i++)); do psql_c "$i" 'select pg_switch_wal()' >/dev/null; done
wait_all_drained "$catchup_timeout_s"
snapshot final

# Every segment postgres was told is archived (an ack with status 0, or a .done file) must be
# in the bucket, and the bucket's segments of each cluster must have no gap.
/usr/bin/python3 - "$tmp" "$s3_root/$s3_bucket" "$n" >"$tmp/missing" <<'PY'
import os, re, sys
tmp, bucket, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
seg = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.|$)")
whole = re.compile(r"[0-9A-F]{24}(\.(zst|lz4|gz|zstd))?")
def segno(name):
    m = seg.match(name)
    return (m.group(1), int(m.group(2), 16) * 256 + int(m.group(3), 16))
for i in range(1, n + 1):
    stored = set()
    for _, _, files in os.walk(os.path.join(bucket, f"cluster-{i}")):
        # A whole segment: its name, perhaps with a codec's extension (not .partial, .backup).
        stored.update(f[:24] for f in files if whole.fullmatch(f))
    acked = set()
    for line in open(os.path.join(tmp, f"c{i}", "acks")):
        parts = line.split()
        if len(parts) == 4 and parts[2] == "0" and seg.match(parts[3]) and len(parts[3]) == 24:
            acked.add(parts[3])
    status = os.path.join(tmp, f"c{i}", "data", "pg_wal", "archive_status")
    acked.update(f[:24] for f in os.listdir(status) if f.endswith(".done") and len(f) == 29)
    missing = sorted(acked - stored)
    nums = sorted(segno(s) for s in stored)
    gaps = [f"{a[1]:X}..{b[1]:X}" for a, b in zip(nums, nums[1:]) if a[0] == b[0] and b[1] != a[1] + 1]
    print(i, len(acked), len(stored), len(missing), len(gaps),
          ",".join(missing[:3]) or "-", ",".join(gaps[:3]) or "-")
PY

# --- report ----------------------------------------------------------------------------------
# Per cluster: requests/s from the proxy's count of its prefix; from its daemon's own metric.
py_delta() { # expr-of(a, b): proxy counts at the window's start and end
    /usr/bin/python3 - "$tmp/proxy-steady-start.json" "$tmp/proxy-steady-end.json" "$n" "$window_s" <<'PY'
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
n, w = int(sys.argv[3]), float(sys.argv[4])
for i in range(1, n + 1):
    k = f"cluster-{i}"
    print("%.2f" % ((b["by_prefix"].get(k, 0) - a["by_prefix"].get(k, 0)) / w))
PY
}
mapfile -t proxy_rps < <(py_delta)
# Lines "i ticks [requests]" at the start and at the end, side by side.
window_daemons() { paste -d' ' "$tmp/daemons-steady-start" "$tmp/daemons-steady-end"; }
mapfile -t metric_rps < <(window_daemons |
    awk -v w="$window_s" 'NF == 6 { printf "%.2f\n", ($6 - $3) / w }')
mapfile -t cpu_pct < <(window_daemons |
    awk -v w="$window_s" -v hz="$clk_tck" '{ t = (NF == 6) ? $5 - $2 : $4 - $2; printf "%.2f\n", 100 * t / hz / w }')
mapfile -t rss_now < <(awk '{ print $1 }' "$tmp/rss")
mapfile -t rss_peak < <(awk '{ print $2 }' "$tmp/rss")
total_rps=$(awk '{ s += $1 } END { printf "%.1f", s }' < <(printf '%s\n' "${proxy_rps[@]}"))

# Archive acks: the wrapper's lines that ended in the steady window, every cluster pooled.
acks_in() { # from_us to_us: "count p50_ms p99_ms max_ms failures"
    cat "$tmp"/c*/acks | awk -v a="$1" -v b="$2" '$1 >= a && $1 <= b { print $2, $3 }' |
        sort -n | awk '{ d[NR] = $1; if ($2 != 0) f++ }
            END {
                if (NR == 0) { print "0 - - - 0"; exit }
                printf "%d %.1f %.1f %.1f %d\n", NR, d[int(NR * 0.5 + 0.999999)] / 1000,
                    d[int(NR * 0.99 + 0.999999)] / 1000, d[NR] / 1000, f + 0
            }'
}
read -r acks p50 p99 ackmax ackfail < <(acks_in "$t0" "$t1")
read -r sacks _ sp99 sackmax sackfail < <(acks_in "$((t_end - slowdown_s * 1000000))" "$t_caught")
mapfile -t caught < <(printf '%s\n' "${caught_s[@]}")
mapfile -t failed_growth < <(for ((i = 1; i <= n; i++)); do echo $((failed1[i] - failed0[i])); done)
mapfile -t backlog < <(printf '%s\n' "${backlog_at_end[@]}")
missing_total=$(awk '{ s += $4 } END { print s + 0 }' "$tmp/missing")
gap_clusters=$(awk '$5 > 0 { g++ } END { print g + 0 }' "$tmp/missing")
acked_total=$(awk '{ s += $2 } END { print s + 0 }' "$tmp/missing")
slowdowns=$(/usr/bin/python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["slowdown_answered"])' \
    "$tmp/proxy-final.json")

echo
echo "### Fleet: $n clusters, one S3 server behind a ${latency_ms} ms proxy"
echo
echo "pgbench -R $rate per cluster, archive_timeout $archive_timeout, shared_buffers 16MB, max_connections 20;" \
    "steady window ${window_s}s. Per cluster: median (min–max) over the $n clusters."
echo
echo "| measure | value |"
echo "| --- | --- |"
echo "| storage requests/s per cluster (proxy) | $(summary %.2f "${proxy_rps[@]}"); fleet total $total_rps |"
if [[ ${#metric_rps[@]} -gt 0 ]]; then
    echo "| storage requests/s per cluster (pgward_storage_requests_total) | $(summary %.2f "${metric_rps[@]}") |"
else
    echo "| storage requests/s per cluster (pgward_storage_requests_total) | not exported by this build |"
fi
echo "| archive_command acks in the window, all clusters | $acks, $ackfail failed |"
echo "| archive ack p50 / p99 / max ms | $p50 / **$p99** / $ackmax |"
echo "| pgward RSS MB (end of window) | $(summary %.1f "${rss_now[@]}") |"
echo "| pgward peak RSS MB | $(summary %.1f "${rss_peak[@]}") |"
echo "| pgward CPU % of one core (its own process) | $(summary %.2f "${cpu_pct[@]}") |"
echo "| SlowDown window | ${slowdown_s}s, $slowdowns requests answered 503 |"
echo "| .ready segments per cluster at the window's end | $(summary %.0f "${backlog[@]}") |"
echo "| failed_count growth per cluster | $(summary %.0f "${failed_growth[@]}") |"
echo "| archive acks from the window's start to the catch-up | $sacks, $sackfail failed; p99 $sp99 ms, max $sackmax ms |"
echo "| catch-up after the window, s (backlog archived) | $(summary %.1f "${caught[@]}") |"
echo "| WAL missing from the bucket | $missing_total of $acked_total acknowledged segments; $gap_clusters clusters with gaps |"
echo
echo "$(machine_line). postgres $("$pg_bin/postgres" --version | awk '{ print $3 }'); s3s-fs $("$s3_bin" --version | awk '{ print $NF }')."
if ((missing_total > 0 || gap_clusters > 0)); then
    echo "missing WAL (cluster, acked, stored, missing, gaps, first missing, first gaps):"
    awk '$4 > 0 || $5 > 0' "$tmp/missing"
    exit 1
fi
for ((i = 1; i <= n; i++)); do
    if grep -q ' ERROR ' "$(cdir "$i")/pgward.log"; then
        log "cluster $i: pgward logged errors ($(grep -c ' ERROR ' "$(cdir "$i")/pgward.log"), expected during SlowDown)"
        break
    fi
done
