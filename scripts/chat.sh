#!/usr/bin/env bash
# One command to chat: builds OCM, starts ocm-server on 127.0.0.1:9001 unless one already
# answers there, and runs the full-screen client; the server it started stops when the
# client exits. Client flags pass through, e.g.
#   scripts/chat.sh --name alice --create lobby
# A friend on the same machine then runs: scripts/chat.sh --name bob --join lobby
set -euo pipefail
cd "$(dirname "$0")/.."
# Not --quiet: a first build takes minutes, and cargo's own progress says what is going on
# (a quiet build looked like a hung, empty screen).
echo "building OCM with cargo (the first build takes a few minutes; later ones are quick)..." >&2
cargo build --release --bin ocm-server --bin ocm-client
server_pid=""
if ! target/release/ocm-client --list >/dev/null 2>&1; then
    log="${TMPDIR:-/tmp}/ocm-server.$$.log"
    target/release/ocm-server >"$log" 2>&1 &
    server_pid=$!
    trap 'kill "$server_pid" 2>/dev/null || true' EXIT
    for _ in $(seq 50); do
        grep -q '^listening' "$log" 2>/dev/null && break
        sleep 0.1
    done
    grep -q '^listening' "$log" || { cat "$log" >&2; exit 1; }
    echo "started ocm-server on 127.0.0.1:9001 (log: $log); it stops when you leave" >&2
fi
status=0
target/release/ocm-client "$@" || status=$?
exit "$status"
