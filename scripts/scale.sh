#!/usr/bin/env bash
# Scale in members: what many members cost one ocm-server (issue 14).
#   builds ocm-server and bench-client in release mode, starts ocm-server on free loopback
#   ports with the limits a run of this size needs, runs `bench-client scale` against it
#   (which reads the server's memory and CPU from /proc and its history gauge from the
#   metrics endpoint), stops the server, and prints the figures.
#
# Usage: scripts/scale.sh [--history-memory BYTES] [bench-client scale args]
#        (default: --members 100000 --rooms 10000; see bench-client scale --help)
# --history-memory goes to the server and to the bench (which checks the history gauge
# against it); default 4 MiB, small enough that the light traffic of the run fills it, so
# that the run shows the rings held at the budget whatever the number of rooms.
# Extra server flags: OCM_SERVER_ARGS="--idle-timeout 20" scripts/scale.sh
# Another server binary: OCM_SERVER_BIN=/path/to/ocm-server scripts/scale.sh
#
# The server runs with --msg-rate 0 (no flood control), --max-rooms-per-ip 0 and
# --max-members-per-ip 0 (every member's token goes to a few loopback IPs),
# --max-connections-per-ip 0, and --max-rooms/--max-members set to the run's size. With at
# least two cores, the server is pinned to core 0 and the bench to the others (taskset),
# so the server's CPU figures are its own.
#
# Each member has its own UDP socket, so the bench needs one descriptor per member: it
# raises its open-file limit itself, past the hard limit when run as root.
set -euo pipefail

cd "$(dirname "$0")/.."

history_memory=$((4 * 1024 * 1024))
bench_args=()
while [ "$#" -gt 0 ]; do
    case "$1" in
    --history-memory)
        if [ "$#" -lt 2 ]; then
            echo "scale.sh: --history-memory needs a number of bytes" >&2
            exit 2
        fi
        history_memory="$2"
        shift 2
        ;;
    --history-memory=*)
        history_memory="${1#--history-memory=}"
        shift
        ;;
    *)
        bench_args+=("$1")
        shift
        ;;
    esac
done
if ! [[ "$history_memory" =~ ^[0-9]+$ ]]; then
    echo "scale.sh: --history-memory must be a number of bytes, not '$history_memory'" >&2
    exit 2
fi

# The run's size, for the server's limits (the bench's own defaults when not given).
members=100000
rooms=10000
for ((i = 0; i < ${#bench_args[@]}; i++)); do
    case "${bench_args[$i]}" in
    --members) members="${bench_args[$((i + 1))]:-}" ;;
    --members=*) members="${bench_args[$i]#--members=}" ;;
    --rooms) rooms="${bench_args[$((i + 1))]:-}" ;;
    --rooms=*) rooms="${bench_args[$i]#--rooms=}" ;;
    esac
done
if ! [[ "$members" =~ ^[0-9]+$ && "$rooms" =~ ^[0-9]+$ ]]; then
    echo "scale.sh: --members and --rooms must be numbers" >&2
    exit 2
fi

echo "scale.sh: building (cargo build --release -p ocm -p bench-client)" >&2
cargo build --release --quiet -p ocm -p bench-client

target_dir="${CARGO_TARGET_DIR:-target}"
server_bin="${OCM_SERVER_BIN:-$target_dir/release/ocm-server}"
bench_bin="$target_dir/release/bench-client"

# Pinning: the server alone on core 0, the bench on the others.
server_pin=()
bench_pin=()
cores="$(nproc)"
if [ "$cores" -ge 2 ] && command -v taskset >/dev/null; then
    server_pin=(taskset -c 0)
    bench_pin=(taskset -c "1-$((cores - 1))")
    echo "scale.sh: server pinned to core 0, bench-client to cores 1-$((cores - 1))" >&2
else
    echo "scale.sh: not pinned ($cores core(s) or no taskset): server and bench share the CPU" >&2
fi

tmp="$(mktemp -d)"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

server_args=(--port 0 --msg-rate 0 --max-rooms-per-ip 0 --max-members-per-ip 0
    --max-connections-per-ip 0 --max-rooms "$rooms" --max-members "$members"
    --history-memory "$history_memory" --metrics 127.0.0.1:0 --web off)
# shellcheck disable=SC2206 # word splitting of the extra flags is wanted
server_args+=(${OCM_SERVER_ARGS:-})
echo "scale.sh: starting $server_bin ${server_args[*]}" >&2
"${server_pin[@]}" "$server_bin" "${server_args[@]}" >"$tmp/server.out" 2>"$tmp/server.err" &
server_pid=$!

listening=""
metrics=""
for _ in $(seq 100); do
    listening="$(grep -m1 '^listening ' "$tmp/server.out" || true)"
    metrics="$(sed -n 's#^metrics http://\([^/]*\)/metrics.*#\1#p' "$tmp/server.out")"
    [ -n "$listening" ] && [ -n "$metrics" ] && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "scale.sh: ocm-server exited before listening:" >&2
        cat "$tmp/server.err" >&2
        exit 1
    fi
    sleep 0.1
done
if [ -z "$listening" ] || [ -z "$metrics" ]; then
    echo "scale.sh: ocm-server printed no 'listening' and 'metrics' lines within 10 s" >&2
    exit 1
fi
tcp="$(sed -n 's/^listening tcp=\([^ ]*\) .*/\1/p' <<<"$listening")"
echo "scale.sh: server $listening, metrics $metrics (pid $server_pid, --history-memory $history_memory)" >&2

set +e
"${bench_pin[@]}" "$bench_bin" scale --server "$tcp" --server-pid "$server_pid" \
    --metrics "$metrics" --history-memory "$history_memory" "${bench_args[@]}"
bench_rc=$?
set -e

if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "scale.sh: ocm-server died during the run:" >&2
    cat "$tmp/server.err" >&2
    exit 1
fi
rss_kib="$(awk '/^VmRSS:/ {print $2}' "/proc/$server_pid/status")"
hwm_kib="$(awk '/^VmHWM:/ {print $2}' "/proc/$server_pid/status")"
echo "Server at the end: RSS ${rss_kib} KiB (peak ${hwm_kib} KiB), rooms closed"
exit "$bench_rc"
