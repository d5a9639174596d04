#!/usr/bin/env bash
# Object storage benchmark: pgward's full backup, restore and WAL archiving on a file://
# repository and on S3 (s3s-fs) behind a latency proxy at several round-trip delays, beside
# pgBackRest's full backup and restore (zst, repo1-bundle=y) on the same storage. Two copies
# of one cluster run side by side, one archiving to file://, one to S3 (the proxy's delay is
# switched between measurements), so that every round measures every storage: each row is the
# median of RUNS rounds, the storages and the two tools taking turns (order rotated each
# round), and the S3-to-file:// ratios compare runs of the same rounds. See bench/README.md.
#
# Usage: bench/s3.sh
#   PGWARD_BENCH_SCALE  pgbench -i -s (default 20, about 300 MB of data)
#   RUNS                runs per row (default 5)
#   SEGMENTS            WAL segments switched per WAL run (default 64)
#   LATENCIES           delays in ms added per S3 request (default "0 10 25")
#   PGWARD_BIN          pgward binary (default target/release/pgward, built when missing)
#   KEEP=1              keep the temporary directory (its path is printed)
set -euo pipefail
export LC_ALL=C.UTF-8

cd "$(dirname "$0")/.."
root=$PWD

scale=${PGWARD_BENCH_SCALE:-20}
runs=${RUNS:-5}
segments=${SEGMENTS:-64}
read -r -a latencies <<<"${LATENCIES:-0 10 25}"
pgward_bin=${PGWARD_BIN:-$root/target/release/pgward}
ready_timeout_s=60
drain_timeout_s=600
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
# shellcheck source=bench/runs.sh
source "$root/bench/runs.sh"
# shellcheck source=bench/s3lib.sh
source "$root/bench/s3lib.sh"

# --- prerequisites ---------------------------------------------------------------------------
for t in psql pgbench initdb; do
    [[ -x $pg_bin/$t ]] || die "$pg_bin/$t not found. HINT: run scripts/test-deps.sh"
done
for t in pgbackrest openssl; do
    command -v "$t" >/dev/null 2>&1 || die "$t not found. HINT: run scripts/bench-deps.sh"
done
if [[ ! -x $pgward_bin ]]; then
    log "building $pgward_bin"
    cargo build --release --locked
fi

# --- scratch space and cleanup ---------------------------------------------------------------
tmp=$(mktemp -d /tmp/pgward-s3bench.XXXXXX)
chmod 0755 "$tmp"
mkdir "$tmp/log" "$tmp/restore"
children=()
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_s3
make_tls_cert

# --- the clusters ------------------------------------------------------------------------------
# Two copies of one cluster: `file` archives to (and is backed up into) a file:// repository,
# `s3` to S3 through the proxies. The helpers of lib.sh act on the current one (`data`,
# `port`, sockets in `sock_dir`): use_cluster switches.
declare -A cluster_port
cluster_port[file]=$(free_port)
cluster_port[s3]=$(free_port)
use_cluster() { # file|s3
    cluster=$1
    data=$tmp/$1/data
    port=${cluster_port[$1]}
    sock_dir=$tmp/$1/run
}
delay_file=$tmp/delay_ms
echo 0 >"$delay_file"

# The pgward config of the current cluster: the daemon's (archiving) and the CLI's (backup,
# restore) differ only in the storage endpoint, so each goes through its own proxy and the
# requests of a backup are not mixed with the daemon's.
pgward_conf() { # storage-yaml
    cat <<YAML
postgres:
  data_dir: $data
  port: $port
  socket_dir: $sock_dir
  user: postgres
  bin_dir: $pg_bin
  parameters:
    listen_addresses: ""
    max_wal_size: 4GB
    checkpoint_timeout: 15min
    shared_buffers: 128MB
  stop: { mode: fast }
control:
  socket: $sock_dir/pgward.sock
metrics:
  listen: 127.0.0.1:$(free_port)
$1
wal: { archive: true }
log:
  level: info
YAML
}

# pgBackRest's config for the current cluster (file or s3): a posix repository for file://,
# else the same bucket as pgward through the TLS proxy (its certificate is self-signed for 127.0.0.1, and pgBackRest
# matches only host names, not IP addresses, against a certificate: verify-tls=n). zst at its
# default level, bundles on (small files packed into larger objects); the rest is
# pgbr_write_conf's (bench/lib.sh).
pgbr_conf() {
    local d=$tmp/pgbr/$cluster repo
    if [[ $cluster == file ]]; then
        mkdir -p "$tmp/pgbr-repo"
        repo="repo1-path=$tmp/pgbr-repo"
    else
        repo="repo1-type=s3
repo1-path=/pgbackrest
repo1-s3-bucket=$s3_bucket
repo1-s3-endpoint=127.0.0.1
repo1-storage-port=${proxy_port[pgbr]}
repo1-s3-region=us-east-1
repo1-s3-key=$s3_access_key
repo1-s3-key-secret=$s3_secret_key
repo1-s3-uri-style=path
repo1-storage-verify-tls=n"
    fi
    pgbr_write_conf "$d" "$repo
repo1-bundle=y
compress-type=zst"
    [[ $cluster != file ]] || own "$tmp/pgbr-repo"
    echo "$d/pgbackrest.conf"
}

# Reads every file of the data directory once (pg_wal excepted), so each backup starts from a
# warm page cache whatever ran before; then flushes dirty pages.
warm_data() {
    find "$data" -name pg_wal -prune -o -type f -exec cat {} + >/dev/null 2>&1 || true
    sync
}

# Where a phase's objects live on disk: the file:// repository, or s3s-fs's bucket.
objects_dir() { # phase tool
    case $1/$2 in
    file/pgward) echo "$tmp/repo-file" ;;
    file/pgbackrest) echo "$tmp/pgbr-repo" ;;
    */pgward) echo "$s3_root/$s3_bucket/pgward" ;;
    */pgbackrest) echo "$s3_root/$s3_bucket/pgbackrest" ;;
    esac
}

# Objects a command created: files in its repository afterwards that were not there before,
# WAL excepted (names starting with a 24-hex-digit segment name: the daemon's archiving).
new_objects() { # before-list after-list
    comm -13 "$1" "$2" | awk -F/ '$NF !~ /^[0-9A-F]{24}/' | wc -l
}

declare -A vals # "phase|tool|metric" -> space-separated values, one per run

add() { # phase tool metric value: also logged to values.txt, kept with KEEP=1
    vals["$1|$2|$3"]="${vals["$1|$2|$3"]:-} $4"
    echo "$1 $2 $3 $4" >>"$tmp/values.txt"
}

# Times one command (wall clock, seconds with 2 decimals) into $tmp/log/<key>.log; prints the
# seconds, or fails with the log shown.
timed() { # key cmd...
    local key=$1 t0 t1 rc=0
    shift
    t0=$(now_us)
    "$@" >"$tmp/log/$key.log" 2>&1 || rc=$?
    t1=$(now_us)
    if [[ $rc -ne 0 ]]; then
        show_log "$tmp/log/$key.log"
        log "$key failed with status $rc"
        return 1
    fi
    awk -v us=$((t1 - t0)) 'BEGIN { printf "%.2f", us / 1e6 }'
}

requests() { # proxy-name: "" on file://
    [[ $phase == file ]] || proxy_count "$1" 'c["requests"]'
}

declare -A last_backup
backup_run() { # tool round
    local tool=$1 r=$2 dir s q0 q1 proxy
    dir=$(objects_dir "$phase" "$tool")
    wait_drained
    warm_data
    list_files "$dir" >"$tmp/before"
    if [[ $tool == pgward ]]; then
        proxy=cli
        q0=$(requests $proxy)
        s=$(timed "$phase-pgward-backup-$r" "$pgward_bin" --config "$tmp/$cluster/cli.yaml" backup --full)
    else
        proxy=pgbr
        q0=$(requests $proxy)
        s=$(timed "$phase-pgbr-backup-$r" "${as_pg[@]}" pgbackrest --config="${pgbr_confs[$cluster]}" \
            --stanza=bench --type=full backup)
    fi
    q1=$(requests $proxy)
    list_files "$dir" >"$tmp/after"
    add "$phase" "$tool" backup "$s"
    add "$phase" "$tool" objects "$(new_objects "$tmp/before" "$tmp/after")"
    [[ -z $q0 ]] || add "$phase" "$tool" backup_req $((q1 - q0))
    if [[ $tool == pgward ]]; then
        last_backup[$phase]=$("$pgward_bin" --config "$tmp/$cluster/cli.yaml" show latest --json |
            /usr/bin/python3 -c "import json, sys; print(json.load(sys.stdin)['id'])")
    fi
    log "$phase $tool backup: $s s"
}

restore_run() { # tool round
    local tool=$1 r=$2 target=$tmp/restore/$1 s q0 q1 proxy
    rm -rf "$target"
    if [[ $tool == pgbackrest ]]; then
        mkdir -m 0700 "$target"
        own "$target"
    fi
    drop_caches
    if [[ $tool == pgward ]]; then
        proxy=cli
        q0=$(requests $proxy)
        s=$(timed "$phase-pgward-restore-$r" "$pgward_bin" --config "$tmp/$cluster/cli.yaml" restore \
            "${last_backup[$phase]}" --data-dir "$target")
    else
        proxy=pgbr
        q0=$(requests $proxy)
        s=$(timed "$phase-pgbr-restore-$r" "${as_pg[@]}" pgbackrest --config="${pgbr_confs[$cluster]}" \
            --stanza=bench --pg1-path="$target" restore)
    fi
    q1=$(requests $proxy)
    rm -rf "$target"
    add "$phase" "$tool" restore "$s"
    [[ -z $q0 ]] || add "$phase" "$tool" restore_req $((q1 - q0))
    log "$phase $tool restore: $s s"
}

# SEGMENTS WAL switches as fast as postgres makes them (a row, then pg_switch_wal(), in one
# DO block), timed until postgres has every one acknowledged by its archive_command (the
# archiver's archived_count, and no .ready file left).
wal_run() { # round
    local r=$1 a0 a1 t0 t1 q0 q1 deadline
    wait_drained
    a0=$(psql_q 'select archived_count from pg_stat_archiver')
    q0=$(requests daemon)
    t0=$(now_us)
    psql_q "DO \$\$ BEGIN FOR i IN 1..$segments LOOP
              INSERT INTO bench_wal VALUES (i); PERFORM pg_switch_wal();
            END LOOP; END \$\$" >/dev/null
    deadline=$((t0 + drain_timeout_s * 1000000))
    while :; do
        a1=$(psql_q 'select archived_count from pg_stat_archiver')
        ((a1 - a0 >= segments)) && [[ $(ready_count) -eq 0 ]] && break
        (($(now_us) < deadline)) || die "$phase: WAL not archived within ${drain_timeout_s}s"
        sleep 0.01
    done
    t1=$(now_us)
    q1=$(requests daemon)
    add "$phase" pgward wal "$(awk -v us=$((t1 - t0)) 'BEGIN { printf "%.2f", us / 1e6 }')"
    [[ -z $q0 ]] || add "$phase" pgward wal_req "$(awk -v q=$((q1 - q0)) -v n="$segments" \
        'BEGIN { printf "%.2f", q / n }')"
    log "$phase WAL: $((a1 - a0)) segments archived"
}

declare -A daemon_pid
start_daemon() { # of the current cluster
    "$pgward_bin" run --config "$tmp/$cluster/daemon.yaml" \
        2>>"$tmp/log/pgward-run-$cluster.log" &
    daemon_pid[$cluster]=$!
    children+=("$!")
    wait_ready "$!" || {
        show_log "$tmp/log/pgward-run-$cluster.log"
        die "pgward did not bring postgres up"
    }
}

stop_daemon() { # of the current cluster
    kill -TERM "${daemon_pid[$cluster]}"
    wait "${daemon_pid[$cluster]}" || die "pgward exited with status $? after SIGTERM"
}

# --- setup: one cluster, copied --------------------------------------------------------------
# The proxies' delay is the phase's, switched by set_phase; the daemon of the s3 cluster
# archives through one of them.
start_proxy daemon 0 "delayfile=$delay_file"
start_proxy cli 0 "delayfile=$delay_file"
start_proxy pgbr 0 tls "delayfile=$delay_file"
write_configs() { # of the current cluster
    if [[ $cluster == file ]]; then
        pgward_conf "storage: { url: file://$tmp/repo-file }" >"$tmp/file/daemon.yaml"
        cp "$tmp/file/daemon.yaml" "$tmp/file/cli.yaml"
    else
        pgward_conf "$(pgward_s3_storage daemon pgward)" >"$tmp/s3/daemon.yaml"
        pgward_conf "$(pgward_s3_storage cli pgward)" >"$tmp/s3/cli.yaml"
    fi
}
use_cluster file
mkdir -p "$data" "$sock_dir"
own "$data" "$sock_dir"
log "initdb -k with $pg_bin ($("$pg_bin/postgres" --version))"
"${as_pg[@]}" "$pg_bin/initdb" -D "$data" -U postgres --auth=trust --data-checksums --no-sync \
    >"$tmp/log/initdb.log" 2>&1 || {
    show_log "$tmp/log/initdb.log"
    die "initdb failed"
}
write_configs
start_daemon
pgbench_init "$scale"
psql_q 'CREATE TABLE bench_wal (i int); CHECKPOINT' >/dev/null
data_files=$(find "$data" -path "$data/pg_wal" -prune -o -type f -print | wc -l)
data_mb=$(($(du -sb --exclude=pg_wal "$data" | cut -f1) / 1048576))
stop_daemon
log "copying the cluster for S3"
mkdir -p "$tmp/s3/run"
cp -a "$data" "$tmp/s3/data"
own "$tmp/s3"
declare -A pgbr_confs
for c in file s3; do
    use_cluster "$c"
    write_configs
    start_daemon
    pgbr_confs[$c]=$(pgbr_conf)
    "${as_pg[@]}" pgbackrest --config="${pgbr_confs[$c]}" --stanza=bench stanza-create \
        >"$tmp/log/$c-stanza.log" 2>&1 || {
        show_log "$tmp/log/$c-stanza.log"
        die "pgbackrest stanza-create failed"
    }
done

# A phase is a storage: `file`, or `s3-<ms>` (the s3 cluster, the proxies at that delay).
set_phase() { # phase
    phase=$1
    if [[ $phase == file ]]; then
        use_cluster file
    else
        use_cluster s3
        echo "${phase#s3-}" >"$delay_file"
    fi
}

# --- rounds: every phase in each, the phases' and the tools' order rotated --------------------
phases=(file)
for l in "${latencies[@]}"; do phases+=("s3-$l"); done
for ((r = 1; r <= runs; r++)); do
    mapfile -t round < <(round_order "$r" "${phases[@]}")
    log "round $r: ${round[*]}"
    for p in "${round[@]}"; do
        set_phase "$p"
        mapfile -t order < <(round_order "$r" pgward pgbackrest)
        for t in "${order[@]}"; do backup_run "$t" "$r"; done
        for t in "${order[@]}"; do restore_run "$t" "$r"; done
        wal_run "$r"
    done
done
for c in file s3; do
    use_cluster "$c"
    stop_daemon
    if grep -q ' ERROR ' "$tmp/log/pgward-run-$c.log"; then
        log "pgward run logged errors (log/pgward-run-$c.log)"
    fi
done
for p in daemon cli pgbr; do stop_proxy "$p"; done

# --- report ----------------------------------------------------------------------------------
# shellcheck disable=SC2086 # the values are space-separated numbers
cell() { # phase tool metric format
    summary "$4" ${vals["$1|$2|$3"]:-}
}
# shellcheck disable=SC2086
med() { median ${vals["$1|$2|$3"]:-}; }
label() { # phase
    case $1 in
    file) echo 'file://' ;;
    *) echo "S3, ${1#s3-} ms" ;;
    esac
}

echo
echo "### Object storage: pgbench -s $scale, $data_mb MB and $data_files files without pg_wal"
echo
echo "| storage | tool | full backup s | restore s | objects / backup | requests / backup | requests / restore | WAL $segments segments s | requests / segment |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for phase in "${phases[@]}"; do
    for t in pgward pgbackrest; do
        if [[ $t == pgward ]]; then
            w=$(cell "$phase" $t wal %.2f)
            wr=$(cell "$phase" $t wal_req %.2f)
            name=pgward
        else
            w=n/a wr=n/a name="pgBackRest"
        fi
        echo "| $(label "$phase") | $name | $(cell "$phase" $t backup %.2f) | $(cell "$phase" $t restore %.2f) |" \
            "$(cell "$phase" $t objects %.0f) | $(cell "$phase" $t backup_req %.0f) |" \
            "$(cell "$phase" $t restore_req %.0f) | $w | $wr |"
    done
done

# Targets: at 10 ms, S3 within 1.5x of file:// for backup and restore; objects per backup at
# most a tenth of the files; at most 2 requests per WAL segment.
verdict() { awk -v ok="$1" 'BEGIN { print (ok ? "pass" : "**fail**") }'; }
ratio_row() { # what metric
    local f s
    f=$(med file pgward "$2")
    s=$(med s3-10 pgward "$2")
    if [[ -z $f || -z $s ]]; then
        echo "| $1 | not measured | |"
        return
    fi
    echo "| $1 | $s s / $f s = $(awk -v a="$s" -v b="$f" 'BEGIN { printf "%.2f", a / b }')× |" \
        "$(verdict "$(awk -v a="$s" -v b="$f" 'BEGIN { print (a <= 1.5 * b) }')") |"
}
if [[ " ${latencies[*]} " == *" 10 "* ]]; then
    echo
    echo "| target (pgward) | measured (medians) | |"
    echo "| --- | --- | --- |"
    ratio_row "S3 at 10 ms: full backup ≤ 1.5× file://" backup
    ratio_row "S3 at 10 ms: restore ≤ 1.5× file://" restore
    o=$(med s3-10 pgward objects)
    echo "| objects per backup ≤ files / 10 ($data_files / 10) | $o |" \
        "$(verdict "$(awk -v o="$o" -v f="$data_files" 'BEGIN { print (o <= f / 10) }')") |"
    q=$(med s3-10 pgward wal_req)
    echo "| WAL push ≤ 2 requests per segment (S3, 10 ms) | $q |" \
        "$(verdict "$(awk -v q="$q" 'BEGIN { print (q <= 2) }')") |"
fi
echo
echo "Median (min–max) of $runs rounds; in each, every storage and both tools, in an order rotated each round."
echo "Page cache dropped before each restore. $(machine_line)."
echo "postgres: $("$pg_bin/postgres" --version); $(pgbackrest version); s3s-fs $("$s3_bin" --version | awk '{ print $NF }')."
