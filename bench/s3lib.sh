# shellcheck shell=bash
# shellcheck disable=SC2154 # tmp and children are set by the sourcing script
# S3 test server and latency proxies for the bench/ scripts (sourced after lib.sh): s3s-fs from
# .tools (installed by scripts/test-deps.sh, as for the integration tests) keeps each object as
# a plain file under its root, so objects can be counted on disk; bench/latency_proxy.py in
# front of it adds a delay per request and counts requests.
#
# The sourcing script sets `tmp` and `children` (its pgward daemons) and uses stop_all as its
# EXIT trap. The servers are kept apart in `servers`: they are stopped last, since a daemon
# still archives while it stops.

servers=()

# The EXIT trap: the children (pgward stops postgres, fast, on SIGTERM) first, then the
# proxies and s3s-fs, then the temporary directory.
stop_all() {
    local pid
    set +e
    trap '' INT TERM
    for pid in "${children[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${children[@]}"; do wait "$pid" 2>/dev/null; done
    for pid in "${servers[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${servers[@]}"; do wait "$pid" 2>/dev/null; done
    remove_tmp "$tmp"
}

s3_bin=${S3S_FS_BIN:-$root/.tools/bin/s3s-fs}
s3_bucket=bench
s3_access_key=bench-ak
s3_secret_key=bench-sk

# Starts s3s-fs on a free port with an empty bucket; sets s3_port, s3_root (its data dir; the
# bucket is $s3_root/$s3_bucket) and s3_pid.
start_s3() {
    [[ -x $s3_bin ]] || die "$s3_bin not found. HINT: run scripts/test-deps.sh (it installs s3s-fs into .tools/)"
    s3_root=$tmp/s3
    # A bucket is a directory under the root: no signed CreateBucket needed.
    mkdir -p "$s3_root/$s3_bucket"
    s3_port=$(free_port)
    RUST_LOG=warn "$s3_bin" --host 127.0.0.1 --port "$s3_port" --access-key "$s3_access_key" \
        --secret-key "$s3_secret_key" "$s3_root" >"$tmp/s3s-fs.log" 2>&1 &
    s3_pid=$!
    servers+=("$s3_pid")
    wait_port "$s3_port" "$s3_pid" || {
        show_log "$tmp/s3s-fs.log"
        die "s3s-fs did not start"
    }
}

wait_port() { # port pid
    local deadline=$(($(now_us) + 30000000))
    until (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
        kill -0 "$2" 2>/dev/null || return 1
        (($(now_us) < deadline)) || return 1
        sleep 0.02
    done
}

# A self-signed certificate for 127.0.0.1, for the proxies that terminate TLS (pgBackRest's S3
# client speaks only HTTPS); sets tls_cert and tls_key.
make_tls_cert() {
    tls_cert=$tmp/tls/cert.pem
    tls_key=$tmp/tls/key.pem
    [[ -f $tls_cert ]] && return 0
    mkdir -p "$tmp/tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -keyout "$tls_key" -out "$tls_cert" \
        -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 >"$tmp/tls/openssl.log" 2>&1 || {
        show_log "$tmp/tls/openssl.log"
        die "openssl could not make a certificate"
    }
    chmod 0644 "$tls_cert" "$tls_key"
}

declare -A proxy_pid proxy_port

# Starts a latency proxy named NAME in front of s3s-fs: proxy_port[NAME], proxy_pid[NAME],
# counts in $tmp/proxy/NAME.json. Options: tls (needs make_tls_cert), slowdown=FILE,
# delayfile=FILE (the delay in ms that FILE holds, read again when it changes).
start_proxy() { # name delay_ms [tls] [slowdown=FILE]
    local name=$1 delay=$2 opt port args=()
    shift 2
    for opt in "$@"; do
        case $opt in
        tls) args+=(--tls-cert "$tls_cert" --tls-key "$tls_key") ;;
        slowdown=*) args+=(--slowdown-file "${opt#slowdown=}") ;;
        delayfile=*) args+=(--delay-file "${opt#delayfile=}") ;;
        *) die "start_proxy: unknown option $opt" ;;
        esac
    done
    mkdir -p "$tmp/proxy"
    port=$(free_port)
    /usr/bin/python3 "$root/bench/latency_proxy.py" --listen-port "$port" \
        --upstream "127.0.0.1:$s3_port" --delay-ms "$delay" --stats "$tmp/proxy/$name.json" \
        --trace "$tmp/proxy/$name.trace" \
        "${args[@]}" >"$tmp/proxy/$name.log" 2>&1 &
    proxy_pid[$name]=$!
    proxy_port[$name]=$port
    servers+=("$!")
    wait_port "$port" "$!" || {
        show_log "$tmp/proxy/$name.log"
        die "latency proxy $name did not start"
    }
}

stop_proxy() { # name
    local pid=${proxy_pid[$1]:-}
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "proxy_pid[$1]"
}

# Prints a field of the proxy's counts (a python expression on the JSON `c`, e.g.
# 'c["requests"]'), after asking for a fresh write: the value includes every request sent
# before this call.
proxy_count() { # name expr
    local f=$tmp/proxy/$1.json seq0
    seq0=$(/usr/bin/python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["seq"])' "$f")
    kill -USR1 "${proxy_pid[$1]}"
    /usr/bin/python3 - "$f" "$seq0" "$2" <<'PY'
import json, sys, time
path, seq0, expr = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for _ in range(500):
    try:
        c = json.load(open(path))
    except (OSError, ValueError):
        c = {"seq": seq0}
    if c["seq"] > seq0:
        print(eval(expr, {"c": c}))
        sys.exit(0)
    time.sleep(0.01)
sys.exit("the latency proxy did not write its counts")
PY
}

# The `storage:` block of a pgward config for s3://bucket/PREFIX through proxy NAME.
pgward_s3_storage() { # name prefix
    cat <<YAML
storage:
  url: s3://$s3_bucket/$2
  s3:
    endpoint: http://127.0.0.1:${proxy_port[$1]}
    region: us-east-1
    access_key_id: $s3_access_key
    secret_access_key: $s3_secret_key
    path_style: true
    allow_http: true
YAML
}

# Files under DIR, one path per line, sorted (objects of s3s-fs or of a file:// repository).
list_files() { # dir
    (cd "$1" 2>/dev/null && find . -type f | sort) || true
}
