#!/usr/bin/env bash
# Backup and restore benchmark: pg_basebackup, pgBackRest, tar | zstd and pgward, one after the
# other, on the same running cluster (pgbench -i, data checksums on, a warm page cache for the
# backups, a dropped one for the restores), beside what bounds a restore on this disk (writing
# and fsyncing as many bytes). RUNS rounds, the rows' order rotated each round; each row is the
# median of its runs; see bench/README.md for the setups and what is measured.
#
# Usage: bench/backup.sh
#   SCALE       pgbench -i -s (default 100, about 1.5 GB of data)
#   RUNS        rounds (default 3)
#   PGWARD_BIN  pgward binary (default target/release/pgward, built when missing)
#   KEEP=1      keep the temporary directory (its path is printed)
set -euo pipefail
export LC_ALL=C.UTF-8

cd "$(dirname "$0")/.."
root=$PWD

scale=${SCALE:-100}
runs=${RUNS:-3}
pgward_bin=${PGWARD_BIN:-$root/target/release/pgward}
ready_timeout_s=60
drain_timeout_s=600
# shellcheck source=lib.sh
source "$root/bench/lib.sh"
# shellcheck source=bench/runs.sh
source "$root/bench/runs.sh"

# --- prerequisites ---------------------------------------------------------------------------
for t in psql pgbench initdb pg_basebackup; do
    [[ -x $pg_bin/$t ]] || die "$pg_bin/$t not found. HINT: run scripts/test-deps.sh"
done
for t in pgbackrest tar zstd; do
    command -v "$t" >/dev/null 2>&1 || die "$t not found. HINT: run scripts/bench-deps.sh"
done
if [[ ! -x $pgward_bin ]]; then
    log "building $pgward_bin"
    cargo build --release --locked
fi
"$pgward_bin" backup --help >/dev/null 2>&1 ||
    die "$pgward_bin has no backup command. HINT: rebuild it (cargo build --release)"
# GNU time reports the peak RSS of the process it runs (the largest of its descendants too,
# not their sum); without it the RSS column shows "-".
gnu_time=
if /usr/bin/time -f %M true >/dev/null 2>&1; then
    gnu_time=/usr/bin/time
else
    log "GNU time (/usr/bin/time) not found: no peak RSS. HINT: run scripts/bench-deps.sh"
fi

# --- scratch space and cleanup ---------------------------------------------------------------
tmp=$(mktemp -d /tmp/pgward-backupbench.XXXXXX)
chmod 0755 "$tmp"
mkdir "$tmp/run" "$tmp/out" "$tmp/log" "$tmp/restore"
children=()

trap stop_children_and_remove_tmp EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- helpers ---------------------------------------------------------------------------------

# Reads every file once so that each measurement starts from a warm page cache, whatever the
# one before it wrote (pg_wal, which no backup here reads, excepted); then flushes dirty
# pages so none are written back during it.
warm() { # paths...
    find "$@" -name pg_wal -prune -o -type f -exec cat {} + >/dev/null 2>&1 || true
    sync
}

bytes() { # path
    du -sb "$1" | cut -f1
}

mb() { # bytes
    awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'
}

# Each row's runs, space-separated: secs (wall time, s), rss (peak RSS, MB), size (bytes
# written). The round being run is `r`.
declare -A secs rss size note
r=0

# Runs one measured command: appends its wall time to secs[key] and its peak RSS (MB) to
# rss[key]; its output goes to log/<key>-<round>.log. A failure is noted and adds no value.
timed() { # key cmd...
    local key=$1 t0 t1 rc=0 lg=$tmp/log/$1-$r s
    shift
    log "$key (round $r): $*"
    t0=$(now_us)
    if [[ -n $gnu_time ]]; then
        "$gnu_time" -f %M -o "$lg.rss" "$@" >"$lg.log" 2>&1 || rc=$?
    else
        "$@" >"$lg.log" 2>&1 || rc=$?
    fi
    t1=$(now_us)
    if [[ $rc -ne 0 ]]; then
        show_log "$lg.log"
        note[$key]="failed with status $rc (log/$key-$r.log)"
        return 1
    fi
    s=$(awk -v us=$((t1 - t0)) 'BEGIN { printf "%.2f", us / 1e6 }')
    secs[$key]+=" $s"
    if [[ -n $gnu_time ]]; then
        # With a non-zero status GNU time writes a line before the figure: take the last.
        rss[$key]+=" $(tail -n 1 "$lg.rss" | awk '{ printf "%.0f", $1 / 1024 }')"
    fi
    log "$key: $s s"
}

# --- the cluster, run by pgward --------------------------------------------------------------
data=$tmp/data
repo=$tmp/out/pgward-repo
port=$(free_port)
mkdir "$data" "$repo"
own "$data" "$repo" "$tmp/run"
log "initdb -k with $pg_bin ($("$pg_bin/postgres" --version))"
"${as_pg[@]}" "$pg_bin/initdb" -D "$data" -U postgres --auth=trust --data-checksums --no-sync \
    >"$tmp/log/initdb.log" 2>&1 || {
    show_log "$tmp/log/initdb.log"
    die "initdb failed"
}

# One config for the daemon and one per compression for `pgward backup`: the same cluster and
# repository, so the backups find their WAL where the daemon archives it.
pgward_conf() { # compression
    local level=
    [[ $1 != zstd ]] || level=$'\n  compression_level: 3'
    cat <<YAML
postgres:
  data_dir: $data
  port: $port
  socket_dir: $tmp/run
  user: postgres
  bin_dir: $pg_bin
  parameters:
    listen_addresses: ""
    max_wal_size: 4GB
    checkpoint_timeout: 15min
    shared_buffers: 256MB
  stop: { mode: fast }
control:
  socket: $tmp/run/pgward.sock
# A free port for /metrics: the default, 9187, may be taken by another run or an exporter.
metrics:
  listen: 127.0.0.1:$(free_port)
storage:
  url: file://$repo
  compression: $1$level
wal: { archive: true }
backup: { concurrency: 2 }
log:
  level: info
YAML
}
pgward_conf zstd >"$tmp/pgward.yaml"
pgward_conf lz4 >"$tmp/pgward-lz4.yaml"

"$pgward_bin" run --config "$tmp/pgward.yaml" 2>"$tmp/log/pgward-run.log" &
pgward_pid=$!
children+=("$pgward_pid")
wait_ready "$pgward_pid" || {
    show_log "$tmp/log/pgward-run.log"
    die "pgward did not bring postgres up"
}

pgbench_init "$scale"
psql_q 'checkpoint' >/dev/null
log "waiting for pgbench -i's WAL to be archived ($(ready_count) segments)"
wait_drained
# What every tool copies: the data directory without pg_wal (no backup here includes WAL).
data_bytes=$(($(bytes "$data") - $(bytes "$data/pg_wal")))
log "data directory: $(mb "$data_bytes") MB without pg_wal"

# Before each backup: the archive drained (each backup's own checkpoint and WAL switch leave
# a segment or two) and the data directory in the page cache.
before_backup() {
    wait_drained
    warm "$data"
}

# --- pg_basebackup -----------------------------------------------------------------------------
# Tar format, no WAL (-X none: like the others, it relies on the archive), a fast checkpoint
# as the others take, its default backup manifest (CRC32C of each file) and its default page
# checksum verification. With -X none the server waits for the stop segment to be archived.
# Each run writes a new directory, deleted once measured (kept with KEEP=1).
declare -A compress_of=([pgbb-lz4]=client-lz4 [pgbb-zstd]=server-zstd)
pgbb_row() { # key
    local out=$tmp/out/$1-$r
    before_backup
    timed "$1" "$pg_bin/pg_basebackup" -h "$tmp/run" -p "$port" -U postgres -w \
        -D "$out" -Ft -X none -c fast --compress="${compress_of[$1]}" || return 0
    size[$1]+=" $(bytes "$out")"
    done_with "$out"
}

# --- pgBackRest --------------------------------------------------------------------------------
# One repository per compression type. archive-check=n: postgres archives into pgward's
# repository, not pgBackRest's, so pgBackRest must not wait for the WAL in its own. A high
# retention: no expiry inside a timed backup (there was none when it ran once).
declare -A pgbr_type=([pgbr-lz4]=lz4 [pgbr-zst]=zst)
pgbr_conf() { # key compress-type
    mkdir -p "$tmp/out/$1/repo"
    pgbr_write_conf "$tmp/out/$1" "repo1-path=$tmp/out/$1/repo
compress-type=$2"
}
pgbr() { # key args...
    local conf=$tmp/out/$1/pgbackrest.conf
    shift
    "${as_pg[@]}" pgbackrest --config="$conf" --stanza=bench "$@"
}
declare -A pgbr_ready
for k in pgbr-lz4 pgbr-zst; do
    pgbr_conf "$k" "${pgbr_type[$k]}"
    if pgbr "$k" stanza-create >"$tmp/log/$k-stanza.log" 2>&1; then
        pgbr_ready[$k]=1
    else
        show_log "$tmp/log/$k-stanza.log"
        note[$k]="stanza-create failed"
    fi
done
# The size of the backup just taken: its directory (label ...F) in the repository, plus the
# manifest copies and backup.info around it that every backup rewrites.
newest_dir() { # dir
    find "$1" -mindepth 1 -maxdepth 1 -type d -name '*F' | sort | tail -n 1
}
pgbr_row() { # key
    local repo=$tmp/out/$1/repo
    [[ -n ${pgbr_ready[$1]:-} ]] || return 0
    before_backup
    timed "$1" "${as_pg[@]}" pgbackrest --config="$tmp/out/$1/pgbackrest.conf" --stanza=bench \
        --type=full backup || return 0
    size[$1]+=" $(($(bytes "$(newest_dir "$repo/backup/bench")") + $(bytes "$repo/backup/bench/backup.info")))"
}

# --- tar | zstd --------------------------------------------------------------------------------
# The bound: one sequential read of the files into a fast compressor, no checkpoint, no
# checksums, no consistency (GNU tar's exit status 1, "file changed as we read it", is
# accepted). pg_wal's contents are left out like everywhere else.
cat >"$tmp/tar-zstd" <<'SH'
#!/usr/bin/env bash
tar -C "$1" --exclude='./pg_wal/*' --warning=no-file-changed -cf - . | zstd -q -T2 -1 >"$2"
st=("${PIPESTATUS[@]}")
[[ ${st[0]} -le 1 && ${st[1]} -eq 0 ]]
SH
chmod 0755 "$tmp/tar-zstd"
tar_row() { # key
    local out=$tmp/out/tar-zstd-$r
    before_backup
    mkdir "$out"
    if timed "$1" "$tmp/tar-zstd" "$data" "$out/data.tar.zst"; then
        size[$1]+=" $(bytes "$out")"
    fi
    done_with "$out"
}

# --- pgward ------------------------------------------------------------------------------------
declare -A pgward_id pgward_config=([pgward-lz4]=$tmp/pgward-lz4.yaml [pgward-zstd]=$tmp/pgward.yaml)
pgward_show() { # field
    "$pgward_bin" --config "$tmp/pgward.yaml" show latest --json |
        /usr/bin/python3 -c "import json, sys; print(json.load(sys.stdin)['$1'])"
}
pgward_row() { # key config kind: pgward_id[key] is this round's backup
    unset "pgward_id[$1]"
    before_backup
    timed "$1" "$pgward_bin" --config "$2" backup "$3" || return 0
    pgward_id[$1]=$(pgward_show id)
    size[$1]+=" $(bytes "$repo/backups/${pgward_id[$1]}")"
}
pgward_full_row() { # key
    pgward_row "$1" "${pgward_config[$1]}" --full
}

# --- restores ----------------------------------------------------------------------------------
# Into an empty directory, from this round's backups, after `sync` and with the page cache
# dropped (drop_caches), so every restore reads its backup from disk; the restored clusters
# are not started (recovery is not measured). The --delta rows restore again onto the
# directory just restored, the cache dropped again.
restore_dir() { # key
    local d=$tmp/restore/$1
    mkdir -m 0700 "$d"
    own "$d"
    echo "$d"
}
done_with() { # dir: free the disk, unless KEEP=1
    [[ ${KEEP:-0} == 1 ]] || rm -rf "$1"
}
pgbr_restore() { # key backup-key [args...]
    local key=$1 from=$2
    shift 2
    drop_caches
    timed "$key" "${as_pg[@]}" pgbackrest --config="$tmp/out/$from/pgbackrest.conf" \
        --stanza=bench "$@" restore
}
restore_pgbr_lz4() {
    local d
    [[ -n ${pgbr_ready[pgbr-lz4]:-} ]] || return 0
    d=$(restore_dir "pgbr-restore-lz4-$r")
    pgbr_restore pgbr-restore-lz4 pgbr-lz4 --pg1-path="$d" || true
    done_with "$d"
}
restore_pgbr_zst() {
    local d
    [[ -n ${pgbr_ready[pgbr-zst]:-} ]] || return 0
    d=$(restore_dir "pgbr-restore-zst-$r")
    if pgbr_restore pgbr-restore-zst pgbr-zst --pg1-path="$d"; then
        # Again onto what it just restored: --delta compares each file's checksum with the
        # backup's and rewrites only what differs (here the recovery settings).
        pgbr_restore pgbr-delta pgbr-zst --pg1-path="$d" --delta || true
    fi
    done_with "$d"
}
pgward_restore() { # key backup-key [args...]
    local key=$1 from=$2
    shift 2
    drop_caches
    timed "$key" "$pgward_bin" --config "$tmp/pgward.yaml" restore "${pgward_id[$from]}" "$@"
}
restore_pgward_lz4() {
    local d=$tmp/restore/pgward-restore-lz4-$r
    [[ -n ${pgward_id[pgward-lz4]:-} ]] || return 0
    pgward_restore pgward-restore-lz4 pgward-lz4 --data-dir "$d" || true
    done_with "$d"
}
restore_pgward_zstd() {
    local d=$tmp/restore/pgward-restore-zstd-$r
    [[ -n ${pgward_id[pgward-zstd]:-} ]] || return 0
    if pgward_restore pgward-restore-zstd pgward-zstd --data-dir "$d"; then
        # Again onto what it just restored: --delta keeps each file whose checksum matches.
        pgward_restore pgward-delta pgward-zstd --data-dir "$d" --delta || true
    fi
    done_with "$d"
}

# What bounds a restore from below on this disk: writing as many bytes as the data directory
# holds, in one sequential file, and fsyncing it (a restore writes ~1,000 files and fsyncs each,
# and reads its backup besides).
restore_disk_bound() {
    local f=$tmp/restore/disk-bound-$r
    drop_caches
    timed disk-bound dd if=/dev/zero of="$f" bs=8M count=$((data_bytes / 8388608)) conv=fsync || true
    rm -f "$f"
}

# --- pgward incremental ------------------------------------------------------------------------
# Two incremental backups on top of the round's newest full one: after updating 1% of
# pgbench_accounts' rows in one range (recent rows, the usual hot set), then 1% spread over the
# whole table (one row in 100, so about half of the table's pages hold a changed row).
incr_report() { # key: "read X MB, stored Y MB (Z% / W% of the full backup)"
    local incr_json full_json
    incr_json=$("$pgward_bin" --config "$tmp/pgward.yaml" show "${pgward_id[$1]}" --json)
    full_json=$("$pgward_bin" --config "$tmp/pgward.yaml" show "${pgward_id[pgward-zstd]}" --json)
    /usr/bin/python3 -c '
import json, sys
i, f = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print("read %.0f MB (%.1f%% of the full backup), stored %.1f MB (%.1f%%), %d of %d files touched" % (
    i["read_size"] / 1048576, 100.0 * i["read_size"] / f["read_size"],
    i["stored_size"] / 1048576, 100.0 * i["stored_size"] / f["stored_size"],
    i["files_copied"], i["file_count"]))
' "$incr_json" "$full_json"
}
declare -A incr_line=()
incrementals() {
    [[ -n ${pgward_id[pgward-zstd]:-} ]] || return 0
    log "updating 1% of pgbench_accounts (aid <= scale * 1000)"
    psql_q "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= $scale * 1000" >/dev/null
    pgward_row pgward-incr-hot "$tmp/pgward.yaml" --incremental
    [[ -z ${pgward_id[pgward-incr-hot]:-} ]] ||
        incr_line[pgward-incr-hot]+="round $r: $(incr_report pgward-incr-hot)"$'\n'
    log "updating 1% of pgbench_accounts (aid % 100 = 0)"
    psql_q 'UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 100 = 0' >/dev/null
    pgward_row pgward-incr-spread "$tmp/pgward.yaml" --incremental
    [[ -z ${pgward_id[pgward-incr-spread]:-} ]] ||
        incr_line[pgward-incr-spread]+="round $r: $(incr_report pgward-incr-spread)"$'\n'
}

# --- the rounds --------------------------------------------------------------------------------
# Each round takes every full backup, in an order rotated by one row per round (no tool always
# runs first or after the same other one), restores each in the same rotated order, then
# takes the incrementals (which change the table, so they come last).
full_rows=(pgbb-lz4 pgbb-zstd pgbr-lz4 pgbr-zst tar-zstd pgward-lz4 pgward-zstd)
declare -A row_fn=([pgbb-lz4]=pgbb_row [pgbb-zstd]=pgbb_row [pgbr-lz4]=pgbr_row
    [pgbr-zst]=pgbr_row [tar-zstd]=tar_row [pgward-lz4]=pgward_full_row
    [pgward-zstd]=pgward_full_row)
restore_fns=(restore_pgbr_lz4 restore_pgbr_zst restore_pgward_lz4 restore_pgward_zstd
    restore_disk_bound)
for ((r = 1; r <= runs; r++)); do
    log "round $r of $runs"
    # Read into arrays first: a measured command must not read the loop's input.
    mapfile -t order < <(round_order "$r" "${full_rows[@]}")
    for k in "${order[@]}"; do "${row_fn[$k]}" "$k"; done
    mapfile -t order < <(round_order "$r" "${restore_fns[@]}")
    for f in "${order[@]}"; do "$f"; done
    incrementals
done
grep -q ' ERROR ' "$tmp/log/pgward-run.log" && note[pgward-run]="pgward run logged errors"

# --- report ----------------------------------------------------------------------------------
declare -A label=(
    [pgbb-lz4]="pg_basebackup -Ft client-lz4"
    [pgbb-zstd]="pg_basebackup -Ft server-zstd"
    [pgbr-lz4]="pgBackRest full lz4"
    [pgbr-zst]="pgBackRest full zst"
    [tar-zstd]="tar | zstd -T2 -1 (bound)"
    [pgward-lz4]="pgward full lz4"
    [pgward-zstd]="pgward full zstd"
    [pgward-incr-hot]="pgward incr zstd (1% rows, range)"
    [pgward-incr-spread]="pgward incr zstd (1% rows, spread)"
    [pgbr-restore-lz4]="pgBackRest restore lz4"
    [pgbr-restore-zst]="pgBackRest restore zst"
    [pgbr-delta]="pgBackRest restore --delta zst"
    [pgward-restore-lz4]="pgward restore lz4"
    [pgward-restore-zstd]="pgward restore zstd"
    [pgward-delta]="pgward restore --delta zstd"
    [disk-bound]="write+fsync as many bytes (dd, bound)"
)
# shellcheck disable=SC2086 # the runs' values are space-separated numbers
med() { median ${secs[$1]:-}; }
ratio() { # key reference-key: of the medians
    local a b
    a=$(med "$1")
    b=$(med "$2")
    if [[ -n $a && -n $b ]]; then
        awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'
    else
        echo "-"
    fi
}
mbps() { # key: of the median time
    local s
    s=$(med "$1")
    if [[ -n $s ]]; then
        awk -v b="$data_bytes" -v s="$s" 'BEGIN { if (s > 0) printf "%.0f", b / 1048576 / s; else print "-" }'
    else
        echo "-"
    fi
}
# shellcheck disable=SC2086
repo_mb() { # key: median size
    local b
    b=$(median ${size[$1]:-})
    [[ -z $b ]] || mb "$b"
}
# shellcheck disable=SC2086
row_of() { # key: the "time s" cell
    summary %.1f ${secs[$1]:-}
}
# shellcheck disable=SC2086
rss_of() { summary %.0f ${rss[$1]:-}; }
row() {
    printf '%-35s | %17s | %6s | %8s | %13s | %10s | %10s\n' "$@"
}
sep() {
    row "-----------------------------------" "-----------------" "------" "--------" \
        "-------------" "----------" "----------"
}
backups=(pgbb-lz4 pgbb-zstd pgbr-lz4 pgbr-zst tar-zstd pgward-lz4 pgward-zstd pgward-incr-hot pgward-incr-spread)
restores=(pgbr-restore-lz4 pgbr-restore-zst pgbr-delta pgward-restore-lz4 pgward-restore-zstd
    pgward-delta disk-bound)

echo
echo "pgbench -i -s $scale, data checksums on; data directory $(mb "$data_bytes") MB without pg_wal;" \
    "warm page cache for backups, dropped before each restore; median (min–max) of $runs runs"
row "backup" "time s" "MB/s" "repo MB" "RSS MB" "x pgbb lz4" "x pgbr zst"
sep
for k in "${backups[@]}"; do
    row "${label[$k]}" "$(row_of "$k")" "$(mbps "$k")" "$(repo_mb "$k")" "$(rss_of "$k")" \
        "$(ratio "$k" pgbb-lz4)" "$(ratio "$k" pgbr-zst)"
done
for key in pgward-incr-hot pgward-incr-spread; do
    [[ -z ${incr_line[$key]:-} ]] || printf '%s:\n%s' "${label[$key]}" "${incr_line[$key]}"
done
echo
row "restore (into an empty dir)" "time s" "MB/s" "" "RSS MB" "" "x pgbr zst"
sep
for k in "${restores[@]}"; do
    row "${label[$k]}" "$(row_of "$k")" "$(mbps "$k")" "" "$(rss_of "$k")" "" \
        "$(ratio "$k" pgbr-restore-zst)"
done
echo "--delta restores onto the unchanged directory the row above restored; MB/s, repo MB and ratios of the medians"
failed=0
for k in "${backups[@]}" "${restores[@]}" pgward-run; do
    [[ -n ${note[$k]:-} ]] || continue
    echo "note ${label[$k]:-$k}: ${note[$k]}"
    failed=1
done
echo
echo "postgres: $("$pg_bin/postgres" --version); $(pgbackrest version); zstd $(zstd -V | grep -o 'v[0-9.]*' | head -n 1)."
echo "$(machine_line); $runs rounds, the rows' order rotated each round"

[[ $failed -eq 0 ]]
