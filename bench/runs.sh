# shellcheck shell=bash
# Helpers for repeated, interleaved measurements (sourced after lib.sh): the order of each
# round, the summary of a row's runs, the page cache dropped before a timed read, and the
# machine line every report ends with.

# The peers of a row in the order of round R (1-based): rotated by one place each round, so
# with two peers the rounds go A B, B A, A B (ABAB), and no peer always runs first, after the
# same other one, or on a cache the same one just warmed.
round_order() { # round peers...
    local r=$1 n i
    shift
    n=$#
    local peers=("$@")
    for ((i = 0; i < n; i++)); do
        printf '%s\n' "${peers[$(((i + r - 1) % n))]}"
    done
}

# "median (min–max)" of numbers, with the given printf format; "-" when there are none, the
# value alone when there is one. An even count takes the lower middle value (a value that
# was measured, not an average of two).
summary() { # format values...
    local fmt=$1
    shift
    [[ $# -gt 0 ]] || {
        echo "-"
        return
    }
    printf '%s\n' "$@" | sort -g | awk -v fmt="$fmt" '
        { v[NR] = $1 }
        END {
            med = v[int((NR + 1) / 2)]
            if (NR == 1) { printf fmt "\n", med; exit }
            printf fmt " (" fmt "–" fmt ")\n", med, v[1], v[NR]
        }'
}

# The median alone (same rule as summary), for ratios and targets.
median() { # values...
    [[ $# -gt 0 ]] || {
        echo ""
        return
    }
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# Flushes dirty pages and empties the page cache, so that a timed restore reads its backup
# from disk (or the S3 server reads its files from disk), not from memory. Needs root; without
# it, says so once and only syncs.
drop_caches() {
    sync
    if [[ -w /proc/sys/vm/drop_caches ]]; then
        echo 3 >/proc/sys/vm/drop_caches
    elif [[ -z ${_drop_caches_warned:-} ]]; then
        _drop_caches_warned=1
        log "cannot write /proc/sys/vm/drop_caches (not root?): restores start from a warm cache"
    fi
}

# "2026-12-07 14:30 UTC; 2 CPUs (AMD EPYC); disk vda (rotational: 1), 23 GB RAM; kernel ..."
machine_line() {
    local cpu disk dev rota mem
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    # The block device under the temporary directory, and whether the kernel thinks it spins.
    dev=$(df --output=source /tmp 2>/dev/null | tail -n 1)
    disk=${dev##*/}
    rota=$(cat "/sys/block/${disk%%[0-9]*}/queue/rotational" 2>/dev/null ||
        cat "/sys/block/$disk/queue/rotational" 2>/dev/null || echo "?")
    mem=$(awk '/^MemTotal:/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs (${cpu:-unknown model});" \
        "/tmp on $dev (rotational: $rota); $mem GB RAM; kernel $(uname -r)"
}
