#!/usr/bin/env bash
# Scale benchmark: memory and time of a full backup, an incremental backup over a long WAL
# range, and a restore, on a cluster with many files. What docs/backup-restore.md ("Small
# paths and bounded memory") quotes. Not part of the test suite: it takes minutes and
# gigabytes.
#
# The cluster: FILES relation files (tables of one row, each with its primary key index: two
# files per table) beside a pgbench table of SCALE; then a WAL range of SEGMENTS segments
# between the full backup and the incremental one, written by updates spread over the
# pgbench table (so the map of changed blocks has many blocks to hold).
#
# Usage: bench/scale.sh
#   FILES            relation files to create (default 100000)
#   SEGMENTS         WAL segments between the full and the incremental backup (default 1000)
#   WAL_SEGSIZE_MB   initdb --wal-segsize (default 1; 16 is PostgreSQL's default, 16x the WAL)
#   SCALE            pgbench -i -s (default 20, about 300 MB)
#   INCREMENTAL_MEMORY  backup.incremental_memory (default 128MiB, pgward's default)
#   PGWARD_BIN       pgward binary (default target/release/pgward, built when missing)
#   KEEP=1           keep the temporary directory (its path is printed)
#
# Prints one line per step: wall time and the peak RSS of the pgward process doing it (GNU
# time's maximum resident set size), plus the size of the map of changed blocks the
# incremental reports.
set -euo pipefail
export LC_ALL=C.UTF-8

cd "$(dirname "$0")/.."
root=$PWD

files=${FILES:-100000}
segments=${SEGMENTS:-1000}
segsize_mb=${WAL_SEGSIZE_MB:-1}
scale=${SCALE:-20}
incremental_memory=${INCREMENTAL_MEMORY:-128MiB}
pgward_bin=${PGWARD_BIN:-$root/target/release/pgward}
ready_timeout_s=120
drain_timeout_s=1800
# shellcheck source=lib.sh
source "$root/bench/lib.sh"

# --- prerequisites ---------------------------------------------------------------------------
for t in psql pgbench initdb; do
    [[ -x $pg_bin/$t ]] || die "$pg_bin/$t not found. HINT: run scripts/test-deps.sh"
done
/usr/bin/time -f %M true >/dev/null 2>&1 ||
    die "GNU time (/usr/bin/time) not found: it measures peak RSS. HINT: run scripts/bench-deps.sh"
if [[ ! -x $pgward_bin ]]; then
    log "building $pgward_bin"
    cargo build --release --locked
fi

# --- scratch space and cleanup ---------------------------------------------------------------
tmp=$(mktemp -d /tmp/pgward-scalebench.XXXXXX)
chmod 0755 "$tmp"
mkdir "$tmp/run" "$tmp/log"
children=()
trap stop_children_and_remove_tmp EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The segment number of the WAL insert position (segments count from the start of the WAL).
segno() {
    psql_q "SELECT (pg_current_wal_insert_lsn() - '0/0') / ($segsize_mb * 1048576)" |
        cut -d. -f1
}

declare -a rows=()
# Runs one measured pgward command: a row with wall time and peak RSS.
measured() { # label cmd...
    local label=$1 t0 t1 rc=0 key
    shift
    key=${label// /-}
    log "$label: $*"
    t0=$(now_us)
    /usr/bin/time -f %M -o "$tmp/log/$key.rss" "$@" >"$tmp/log/$key.log" 2>&1 || rc=$?
    t1=$(now_us)
    if [[ $rc -ne 0 ]]; then
        show_log "$tmp/log/$key.log"
        die "$label failed with status $rc"
    fi
    rows+=("$(printf '%-34s %9.1f s %9.0f MB' "$label" \
        "$(awk -v us=$((t1 - t0)) 'BEGIN { print us / 1e6 }')" \
        "$(tail -n 1 "$tmp/log/$key.rss" | awk '{ print $1 / 1024 }')")")
    log "${rows[-1]}"
}

# --- the cluster, run by pgward --------------------------------------------------------------
data=$tmp/data
repo=$tmp/repo
port=$(free_port)
mkdir "$data" "$repo"
own "$data" "$repo" "$tmp/run"
log "initdb --wal-segsize=$segsize_mb with $pg_bin ($("$pg_bin/postgres" --version))"
"${as_pg[@]}" "$pg_bin/initdb" -D "$data" -U postgres --auth=trust --data-checksums --no-sync \
    --wal-segsize="$segsize_mb" >"$tmp/log/initdb.log" 2>&1 || {
    show_log "$tmp/log/initdb.log"
    die "initdb failed"
}
cat >"$tmp/pgward.yaml" <<YAML
postgres:
  data_dir: $data
  port: $port
  socket_dir: $tmp/run
  user: postgres
  bin_dir: $pg_bin
  parameters:
    listen_addresses: ""
    max_wal_size: 4GB
    checkpoint_timeout: 30min
    max_locks_per_transaction: 1024
  stop: { mode: fast }
control:
  socket: $tmp/run/pgward.sock
# A free port for /metrics: the default, 9187, may be taken by another run or an exporter.
metrics:
  listen: 127.0.0.1:$(free_port)
storage:
  url: file://$repo
wal: { archive: true, push_concurrency: 4 }
backup: { concurrency: 2, incremental_memory: $incremental_memory }
log:
  level: info
YAML
"$pgward_bin" run --config "$tmp/pgward.yaml" 2>"$tmp/log/pgward-run.log" &
children+=("$!")
wait_ready "${children[0]}" || {
    show_log "$tmp/log/pgward-run.log"
    die "pgward did not bring postgres up"
}

log "pgbench -i -s $scale"
"$pg_bin/pgbench" -i -s "$scale" -q -h "$tmp/run" -p "$port" -U postgres postgres \
    >"$tmp/log/pgbench-init.log" 2>&1 || {
    show_log "$tmp/log/pgbench-init.log"
    die "pgbench -i failed"
}
tables=$((files / 2))
log "creating $tables tables of one row with a primary key ($files files)"
for ((from = 1; from <= tables; from += 1000)); do
    to=$((from + 999 < tables ? from + 999 : tables))
    psql_q "DO \$\$ BEGIN FOR i IN $from..$to LOOP
        EXECUTE format('CREATE TABLE f_%s (id int PRIMARY KEY); INSERT INTO f_%s VALUES (1)', i, i);
        END LOOP; END \$\$" >/dev/null
done
psql_q 'checkpoint' >/dev/null
log "waiting for the WAL so far to be archived ($(ready_count) segments)"
wait_drained
file_count=$(find "$data" -path "$data/pg_wal" -prune -o -type f -print | wc -l)
log "data directory: $file_count files"

measured "full backup" "$pgward_bin" --config "$tmp/pgward.yaml" backup --full

start=$(segno)
log "writing $segments segments of WAL (updates spread over pgbench_accounts)"
k=0
while (($(segno) - start < segments)); do
    psql_q "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 97 = $((k % 97))" \
        >/dev/null
    k=$((k + 1))
done
log "$((k)) updates; waiting for $(ready_count) segments to be archived"
psql_q 'SELECT pg_switch_wal()' >/dev/null
wait_drained

measured "incremental backup" "$pgward_bin" --config "$tmp/pgward.yaml" backup --incremental
scan=$(grep -h 'read block by block\|copied whole' "$tmp/log/incremental-backup.log" | tail -n 2 || true)

measured "restore (the incremental)" "$pgward_bin" --config "$tmp/pgward.yaml" restore latest \
    --data-dir "$tmp/restored"
grep -q ' ERROR ' "$tmp/log/pgward-run.log" && log "WARNING: pgward run logged errors"

# --- report ----------------------------------------------------------------------------------
printf '\npgward scale benchmark, %s\n' "$(date -u +%Y-%m-%d)"
printf '%s files in the data directory, %s WAL segments of %s MiB between the backups, %s\n' \
    "$file_count" "$segments" "$segsize_mb" "$("$pgward_bin" --version 2>/dev/null || echo pgward)"
printf '%-34s %11s %12s\n' step time "peak RSS"
printf '%s\n' "${rows[@]}"
[[ -z $scan ]] || printf '\nincremental: %s\n' "$scan"
