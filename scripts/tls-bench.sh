#!/usr/bin/env bash
# What TLS costs the control plane, measured in one run on this machine:
#   builds ocm-server and the tls-bench and dev-cert examples in release mode, makes a
#   private CA and certificate in a temporary directory, starts a plain and a TLS
#   ocm-server on free loopback ports, and runs tls-bench against both (see
#   examples/tls-bench.rs): microseconds per connection (connect, handshake, one LIST)
#   on the client and in the server's CPU, and LIST requests per second on one connection.
#
#   scripts/tls-bench.sh [CONNECTIONS [REQUESTS]]    (defaults: 2000 20000)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "tls-bench.sh: building (release)" >&2
cargo build --release --quiet -p ocm --bin ocm-server --example tls-bench --example dev-cert

tmp="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

target/release/examples/dev-cert "$tmp/cert" >/dev/null

# Starts ocm-server with the given flags; sets started_pid and started_addr.
start() {
    local name=$1
    shift
    target/release/ocm-server --port 0 --web off --max-connections-per-ip 0 "$@" \
        >"$tmp/$name.out" 2>/dev/null &
    local pid=$!
    pids+=("$pid")
    for _ in $(seq 100); do
        local line
        line="$(grep -m1 '^listening ' "$tmp/$name.out" || true)"
        if [ -n "$line" ]; then
            local addr=${line#*tcp=}
            started_pid=$pid
            started_addr=${addr%% *}
            return
        fi
        sleep 0.1
    done
    echo "tls-bench.sh: ocm-server ($name) printed no listening line" >&2
    exit 1
}

start plain
plain_pid=$started_pid plain_addr=$started_addr
start tls --tls-cert "$tmp/cert/cert.pem" --tls-key "$tmp/cert/key.pem"
tls_pid=$started_pid tls_addr=$started_addr
target/release/examples/tls-bench "$plain_addr" "$plain_pid" "$tls_addr" "$tls_pid" \
    "$tmp/cert/ca.pem" "${1:-2000}" "${2:-20000}"
