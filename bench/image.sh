#!/usr/bin/env bash
# The container image against its base: image size, time from `docker run` to healthy on a
# first start (initdb included), `docker stop` time, and idle memory, for
#   base:   BASE_IMAGE alone (postgres started by the base's entrypoint)
#   pgward: the pgward image built on BASE_IMAGE by `make image ... PGWARD_BIN=...`
# Runs alternate (base, pgward, base, pgward, ...) so a run's load falls on both. Prints the
# median (min–max) of RUNS runs of each. See bench/README.md.
#
# Environment: BASE_IMAGE (default pgward-test/postgres:15, the stand-in scripts/docker-deps.sh
# builds from Debian's packages), PGWARD_BIN (default target/release/pgward, built when
# missing; its symbols are stripped as the Dockerfile's Rust stage does), RUNS (default 3),
# IDLE_SECS (default 10), HEALTH_INTERVAL (default 100ms: both containers are probed this
# often, the base with pg_isready over TCP, pgward with its own HEALTHCHECK command).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

BASE_IMAGE=${BASE_IMAGE:-pgward-test/postgres:15}
PGWARD_BIN=${PGWARD_BIN:-target/release/pgward}
RUNS=${RUNS:-3}
IDLE_SECS=${IDLE_SECS:-10}
HEALTH_INTERVAL=${HEALTH_INTERVAL:-100ms}
IMAGE=pgward-bench/pgward:latest

[[ $(id -u) -eq 0 ]] || die "run as root: it may start dockerd (scripts/docker-deps.sh)"
if [[ $BASE_IMAGE == pgward-test/postgres:15 ]]; then
    scripts/docker-deps.sh
fi
docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || die "no image $BASE_IMAGE"
if [[ ! -x $PGWARD_BIN ]]; then
    log "building $PGWARD_BIN"
    cargo build --release --locked
fi

tmp=$(mktemp -d)
containers=()
cleanup() {
    local c
    for c in "${containers[@]}"; do docker rm -f -v "$c" >/dev/null 2>&1 || true; done
    remove_tmp "$tmp"
}
trap cleanup EXIT

install -m 0755 "$PGWARD_BIN" "$tmp/pgward"
strip "$tmp/pgward"
log "building $IMAGE on $BASE_IMAGE"
make -s image BASE_IMAGE="$BASE_IMAGE" PGWARD_BIN="$tmp/pgward" IMAGE_NAME="${IMAGE%:*}" \
    IMAGE_TAG="${IMAGE#*:}" >"$tmp/build.log" 2>&1 || { show_log "$tmp/build.log"; exit 1; }

size_mb() { docker image inspect -f '{{.Size}}' "$1" | awk '{ printf "%.1f", $1 / 1e6 }'; }

# Sum of Pss of the container's processes, from the host's /proc, in MB; a health probe that
# happens to run (pg_isready, pgward health) is left out: it is not what idles.
container_pss_mb() { # name
    local pid sum=0 kb
    for pid in $(docker top "$1" -eo pid,args | awk 'NR > 1 && !/pg_isready|pgward health/ { print $1 }'); do
        kb=$(awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)
        sum=$((sum + ${kb:-0}))
    done
    awk -v kb="$sum" 'BEGIN { printf "%.1f", kb / 1024 }'
}

# The engine's memory figure of the container (`docker stats`: the cgroup's usage less its
# page cache), in MB.
container_mem_mb() { # name
    docker stats --no-stream --format '{{.MemUsage}}' "$1" | awk '{
        v = $1; unit = v; sub(/[0-9.]+/, "", unit); sub(/[A-Za-z]+$/, "", v)
        f = unit == "GiB" ? 1073.741824 : unit == "MiB" ? 1.048576 : unit == "KiB" ? 0.001024 : 1e-6
        printf "%.1f", v * f }'
}

# One first start, idle and stop of a setup; appends "run_ms stop_ms mem_mb pss_mb" to
# $tmp/res-<setup>.
one_run() { # setup
    local setup=$1 name start status healthy_ms stop_ms code
    local args=(-d --network none --health-interval "$HEALTH_INTERVAL" --health-start-period 120s
        -e POSTGRES_PASSWORD=bench)
    name=pgward-bench-$setup-$$-$RANDOM
    containers+=("$name")
    if [[ $setup == base ]]; then
        # Over TCP: the entrypoint's temporary server (initdb.d scripts) listens on the socket
        # only, so this turns healthy on the real server, as pgward's /readyz does.
        # The server's own pg_isready, not Debian's wrapper in /usr/bin (a perl start each time).
        args+=(--health-cmd '"/usr/lib/postgresql/$PG_MAJOR/bin/pg_isready" -q -h 127.0.0.1 -U postgres'
            "$BASE_IMAGE")
    else
        args+=("$IMAGE")
    fi
    start=$(now_us)
    docker run --name "$name" "${args[@]}" >/dev/null
    while :; do
        status=$(docker inspect -f '{{.State.Status}} {{.State.Health.Status}}' "$name")
        [[ $status == "running healthy" ]] && break
        [[ $status == "running starting" ]] || {
            docker logs "$name" >&2
            die "$setup: container is $status"
        }
        (($(now_us) - start < 120000000)) || die "$setup: not healthy within 120s"
        sleep 0.02
    done
    healthy_ms=$((($(now_us) - start) / 1000))
    sleep "$IDLE_SECS"
    local mem pss
    mem=$(container_mem_mb "$name")
    pss=$(container_pss_mb "$name")
    start=$(now_us)
    docker stop -t 90 "$name" >/dev/null
    stop_ms=$((($(now_us) - start) / 1000))
    code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
    [[ $code == 0 ]] || log "$setup: exit code $code after docker stop"
    docker rm -v "$name" >/dev/null
    printf '%s %s %s %s\n' "$healthy_ms" "$stop_ms" "$mem" "$pss" >>"$tmp/res-$setup"
    log "$setup: healthy ${healthy_ms} ms, stop ${stop_ms} ms, mem ${mem} MB, PSS ${pss} MB"
}

for run in $(seq "$RUNS"); do
    log "run $run of $RUNS"
    one_run base
    one_run pgward
done

# median (min–max) of column $2 of file $1
stat() {
    sort -n -k "$2,$2" "$1" | awk -v c="$2" '{ v[NR] = $c }
        END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
              printf "%s (%s–%s)", m, v[1], v[NR] }'
}

base_size=$(size_mb "$BASE_IMAGE")
pgward_size=$(size_mb "$IMAGE")
printf '\n%s, %s runs each, interleaved; health probed every %s; idle %ss\n' \
    "$(date -u +%F)" "$RUNS" "$HEALTH_INTERVAL" "$IDLE_SECS"
printf '| image | size MB | docker run→healthy ms | docker stop ms | idle memory MB (docker stats) | idle PSS MB |\n'
printf '| --- | ---: | ---: | ---: | ---: | ---: |\n'
printf '| %s (base alone) | %s | %s | %s | %s | %s |\n' "$BASE_IMAGE" "$base_size" \
    "$(stat "$tmp/res-base" 1)" "$(stat "$tmp/res-base" 2)" "$(stat "$tmp/res-base" 3)" \
    "$(stat "$tmp/res-base" 4)"
printf '| pgward on it | %s (+%s) | %s | %s | %s | %s |\n' "$pgward_size" \
    "$(awk -v a="$pgward_size" -v b="$base_size" 'BEGIN { printf "%.1f", a - b }')" \
    "$(stat "$tmp/res-pgward" 1)" "$(stat "$tmp/res-pgward" 2)" "$(stat "$tmp/res-pgward" 3)" \
    "$(stat "$tmp/res-pgward" 4)"
