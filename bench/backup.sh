#!/usr/bin/env bash
# Backup and restore benchmark: pg_basebackup, pgBackRest, tar | zstd and pgward, one after the
# other, on the same running cluster (pgbench -i, data checksums on, a warm page cache). One
# run of each; see bench/README.md for the setups and what is measured.
#
# Usage: bench/backup.sh
#   SCALE       pgbench -i -s (default 100, about 1.5 GB of data)
#   PGWARD_BIN  pgward binary (default target/release/pgward, built when missing)
#   KEEP=1      keep the temporary directory (its path is printed)
set -euo pipefail
export LC_ALL=C.UTF-8

cd "$(dirname "$0")/.."
root=$PWD

scale=${SCALE:-100}
pgward_bin=${PGWARD_BIN:-$root/target/release/pgward}
ready_timeout_s=60
drain_timeout_s=600
# shellcheck source=lib.sh
source "$root/bench/lib.sh"

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

declare -A secs rss size note

# Runs one measured command: sets secs[key] (wall time) and rss[key] (peak RSS, MB); its
# output goes to log/<key>.log. A failure is noted and leaves the row empty.
timed() { # key cmd...
    local key=$1 t0 t1 rc=0
    shift
    log "$key: $*"
    t0=$(now_us)
    if [[ -n $gnu_time ]]; then
        "$gnu_time" -f %M -o "$tmp/log/$key.rss" "$@" >"$tmp/log/$key.log" 2>&1 || rc=$?
    else
        "$@" >"$tmp/log/$key.log" 2>&1 || rc=$?
    fi
    t1=$(now_us)
    if [[ $rc -ne 0 ]]; then
        show_log "$tmp/log/$key.log"
        note[$key]="failed with status $rc (log/$key.log)"
        return 1
    fi
    secs[$key]=$(awk -v us=$((t1 - t0)) 'BEGIN { printf "%.1f", us / 1e6 }')
    if [[ -n $gnu_time ]]; then
        # With a non-zero status GNU time writes a line before the figure: take the last.
        rss[$key]=$(tail -n 1 "$tmp/log/$key.rss" | awk '{ printf "%.0f", $1 / 1024 }')
    fi
    log "$key: ${secs[$key]} s"
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

log "pgbench -i -s $scale"
"$pg_bin/pgbench" -i -s "$scale" -q -h "$tmp/run" -p "$port" -U postgres postgres \
    >"$tmp/log/pgbench-init.log" 2>&1 || {
    show_log "$tmp/log/pgbench-init.log"
    die "pgbench -i failed"
}
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
pg_basebackup_row() { # key compress
    before_backup
    timed "$1" "$pg_bin/pg_basebackup" -h "$tmp/run" -p "$port" -U postgres -w \
        -D "$tmp/out/$1" -Ft -X none -c fast --compress="$2" || return 0
    size[$1]=$(bytes "$tmp/out/$1")
}
pg_basebackup_row pgbb-lz4 client-lz4
pg_basebackup_row pgbb-zstd server-zstd

# --- pgBackRest --------------------------------------------------------------------------------
# One repository per compression type. archive-check=n: postgres archives into pgward's
# repository, not pgBackRest's, so pgBackRest must not wait for the WAL in its own.
pgbr_conf() { # key compress-type
    local d=$tmp/out/$1
    mkdir -p "$d/repo" "$d/log" "$d/lock"
    cat >"$d/pgbackrest.conf" <<CONF
[global]
repo1-path=$d/repo
repo1-retention-full=1
compress-type=$2
process-max=2
start-fast=y
archive-check=n
log-path=$d/log
lock-path=$d/lock
log-level-console=warn
log-level-file=info

[bench]
pg1-path=$data
pg1-socket-path=$tmp/run
pg1-port=$port
pg1-user=postgres
CONF
    own "$d"
}
pgbr() { # key args...
    local conf=$tmp/out/$1/pgbackrest.conf
    shift
    "${as_pg[@]}" pgbackrest --config="$conf" --stanza=bench "$@"
}
pgbackrest_row() { # key compress-type
    pgbr_conf "$1" "$2"
    pgbr "$1" stanza-create >"$tmp/log/$1-stanza.log" 2>&1 || {
        show_log "$tmp/log/$1-stanza.log"
        note[$1]="stanza-create failed"
        return 0
    }
    before_backup
    timed "$1" "${as_pg[@]}" pgbackrest --config="$tmp/out/$1/pgbackrest.conf" --stanza=bench \
        --type=full backup || return 0
    size[$1]=$(bytes "$tmp/out/$1/repo")
}
pgbackrest_row pgbr-lz4 lz4
pgbackrest_row pgbr-zst zst

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
before_backup
mkdir "$tmp/out/tar-zstd"
if timed tar-zstd "$tmp/tar-zstd" "$data" "$tmp/out/tar-zstd/data.tar.zst"; then
    size[tar-zstd]=$(bytes "$tmp/out/tar-zstd")
fi

# --- pgward ------------------------------------------------------------------------------------
declare -A pgward_id
pgward_show() { # field
    "$pgward_bin" --config "$tmp/pgward.yaml" show latest --json |
        /usr/bin/python3 -c "import json, sys; print(json.load(sys.stdin)['$1'])"
}
pgward_row() { # key config kind
    before_backup
    timed "$1" "$pgward_bin" --config "$2" backup "$3" || return 0
    pgward_id[$1]=$(pgward_show id)
    size[$1]=$(bytes "$repo/backups/${pgward_id[$1]}")
}
pgward_row pgward-lz4 "$tmp/pgward-lz4.yaml" --full
pgward_row pgward-zstd "$tmp/pgward.yaml" --full

# --- restores ----------------------------------------------------------------------------------
# Into an empty directory, with the backup's files in the page cache; the restored clusters
# are not started (recovery is not measured).
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
    timed "$key" "${as_pg[@]}" pgbackrest --config="$tmp/out/$from/pgbackrest.conf" \
        --stanza=bench "$@" restore
}

if [[ -n ${secs[pgbr-lz4]:-} ]]; then
    d=$(restore_dir pgbr-restore-lz4)
    warm "$tmp/out/pgbr-lz4/repo"
    pgbr_restore pgbr-restore-lz4 pgbr-lz4 --pg1-path="$d" || true
    done_with "$d"
fi
if [[ -n ${secs[pgbr-zst]:-} ]]; then
    d=$(restore_dir pgbr-restore-zst)
    warm "$tmp/out/pgbr-zst/repo"
    if pgbr_restore pgbr-restore-zst pgbr-zst --pg1-path="$d"; then
        # Again onto what it just restored: --delta compares each file's checksum with the
        # backup's and rewrites only what differs (here the recovery settings).
        warm "$tmp/out/pgbr-zst/repo" "$d"
        pgbr_restore pgbr-delta pgbr-zst --pg1-path="$d" --delta || true
    fi
    done_with "$d"
fi
if [[ -n ${pgward_id[pgward-lz4]:-} ]]; then
    d=$tmp/restore/pgward-restore-lz4
    warm "$repo/backups/${pgward_id[pgward-lz4]}"
    timed pgward-restore-lz4 "$pgward_bin" --config "$tmp/pgward.yaml" restore \
        "${pgward_id[pgward-lz4]}" --data-dir "$d" || true
    done_with "$d"
fi
if [[ -n ${pgward_id[pgward-zstd]:-} ]]; then
    d=$tmp/restore/pgward-restore-zstd
    warm "$repo/backups/${pgward_id[pgward-zstd]}"
    if timed pgward-restore-zstd "$pgward_bin" --config "$tmp/pgward.yaml" restore \
        "${pgward_id[pgward-zstd]}" --data-dir "$d"; then
        # Again onto what it just restored: --delta keeps each file whose checksum matches.
        warm "$repo/backups/${pgward_id[pgward-zstd]}" "$d"
        timed pgward-delta "$pgward_bin" --config "$tmp/pgward.yaml" restore \
            "${pgward_id[pgward-zstd]}" --data-dir "$d" --delta || true
    fi
    done_with "$d"
fi

# --- pgward incremental ------------------------------------------------------------------------
# Two incremental backups on top of the zstd full one: after updating 1% of pgbench_accounts'
# rows in one range (recent rows, the usual hot set), then 1% spread over the whole table (one
# row in 100, so about half of the table's pages hold a changed row).
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
if [[ -n ${pgward_id[pgward-zstd]:-} ]]; then
    log "updating 1% of pgbench_accounts (aid <= scale * 1000)"
    psql_q "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= $scale * 1000" >/dev/null
    pgward_row pgward-incr-hot "$tmp/pgward.yaml" --incremental
    [[ -n ${pgward_id[pgward-incr-hot]:-} ]] && incr_line[pgward-incr-hot]=$(incr_report pgward-incr-hot)
    log "updating 1% of pgbench_accounts (aid % 100 = 0)"
    psql_q 'UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 100 = 0' >/dev/null
    pgward_row pgward-incr-spread "$tmp/pgward.yaml" --incremental
    [[ -n ${pgward_id[pgward-incr-spread]:-} ]] && incr_line[pgward-incr-spread]=$(incr_report pgward-incr-spread)
fi
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
)
ratio() { # key reference-key
    if [[ -n ${secs[$1]:-} && -n ${secs[$2]:-} ]]; then
        awk -v a="${secs[$1]}" -v b="${secs[$2]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'
    else
        echo "-"
    fi
}
mbps() { # key
    if [[ -n ${secs[$1]:-} ]]; then
        awk -v b="$data_bytes" -v s="${secs[$1]}" 'BEGIN { if (s > 0) printf "%.0f", b / 1048576 / s; else print "-" }'
    else
        echo "-"
    fi
}
row() {
    printf '%-31s | %7s | %6s | %8s | %7s | %10s | %10s\n' "$@"
}
sep() {
    row "-------------------------------" "-------" "------" "--------" "-------" "----------" \
        "----------"
}
backups=(pgbb-lz4 pgbb-zstd pgbr-lz4 pgbr-zst tar-zstd pgward-lz4 pgward-zstd pgward-incr-hot pgward-incr-spread)
restores=(pgbr-restore-lz4 pgbr-restore-zst pgbr-delta pgward-restore-lz4 pgward-restore-zstd
    pgward-delta)

echo
echo "pgbench -i -s $scale, data checksums on; data directory $(mb "$data_bytes") MB without pg_wal;" \
    "warm page cache"
row "backup" "time s" "MB/s" "repo MB" "RSS MB" "x pgbb lz4" "x pgbr zst"
sep
for k in "${backups[@]}"; do
    s=${size[$k]:-}
    row "${label[$k]}" "${secs[$k]:--}" "$(mbps "$k")" "${s:+$(mb "$s")}" "${rss[$k]:--}" \
        "$(ratio "$k" pgbb-lz4)" "$(ratio "$k" pgbr-zst)"
done
for key in pgward-incr-hot pgward-incr-spread; do
    [[ -z ${incr_line[$key]:-} ]] || echo "${label[$key]}: ${incr_line[$key]}"
done
echo
row "restore (into an empty dir)" "time s" "MB/s" "" "RSS MB" "" "x pgbr zst"
sep
for k in "${restores[@]}"; do
    row "${label[$k]}" "${secs[$k]:--}" "$(mbps "$k")" "" "${rss[$k]:--}" "" \
        "$(ratio "$k" pgbr-restore-zst)"
done
echo "--delta restores onto the unchanged directory the row above restored"
failed=0
for k in "${backups[@]}" "${restores[@]}" pgward-run; do
    [[ -n ${note[$k]:-} ]] || continue
    echo "note ${label[$k]:-$k}: ${note[$k]}"
    failed=1
done
echo
echo "postgres: $("$pg_bin/postgres" --version); $(pgbackrest version); zstd $(zstd -V | grep -o 'v[0-9.]*' | head -n 1);" \
    "$(nproc) CPUs; one run per row"

[[ $failed -eq 0 ]]
