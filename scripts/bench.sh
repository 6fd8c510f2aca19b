#!/usr/bin/env bash
# One command for a benchmark of OCM on this machine:
#   builds ocm-server and bench-client in release mode, starts ocm-server on free loopback
#   ports, runs bench-client against it, stops the server, and prints the server's CPU time.
#
# Usage: scripts/bench.sh [--history N] [bench-client args]
#        (default: --users 500 --rooms 20 --rate 20000 --duration 10)
# --history N goes to the server (events kept per room for NACKs; the server's default
# when absent); everything else goes to bench-client. The bench speaks protocol v1.1 (SEND,
# SYNC, NACK recovery) unless given --v1.
# Extra server flags: OCM_SERVER_ARGS="--batch-max 1" scripts/bench.sh --rate 50000
# Another server binary: OCM_SERVER_BIN=/path/to/ocm-server scripts/bench.sh
#
# The server runs with --msg-rate 0 (no per-member flood control, or the bench would
# measure the rate limit), --max-rooms-per-ip 0 (every bench room comes from 127.0.0.1),
# --max-connections-per-ip 0 (so do the web users' sessions of --web N) and
# --max-capacity 65535 and --max-members-per-ip 0 (room shapes up to one room of 2 000 and
# more, every member from 127.0.0.1).
#
# Pinning: with at least two cores (and taskset), ocm-server runs on CPU 0 alone and
# bench-client on the others, so that the two do not compete for one core and the
# server's figures are its own. OCM_PIN=0 turns that off. Both processes' CPU is printed.
set -euo pipefail

cd "$(dirname "$0")/.."

# --history N (or --history=N) is the server's; the rest is the bench's.
history=""
bench_args=()
while [ "$#" -gt 0 ]; do
    case "$1" in
    --history)
        if [ "$#" -lt 2 ]; then
            echo "bench.sh: --history needs a number" >&2
            exit 2
        fi
        history="$2"
        shift 2
        ;;
    --history=*)
        history="${1#--history=}"
        shift
        ;;
    *)
        bench_args+=("$1")
        shift
        ;;
    esac
done
if [ -n "$history" ] && ! [[ "$history" =~ ^[0-9]+$ ]]; then
    echo "bench.sh: --history must be a number of events, not '$history'" >&2
    exit 2
fi
if [ "${#bench_args[@]}" -eq 0 ]; then
    bench_args=(--users 500 --rooms 20 --rate 20000 --duration 10)
fi
path="v1.1 (SEND with ClientSeq, SYNC heartbeats, gaps recovered with NACK)"
for a in "${bench_args[@]}"; do
    if [ "$a" = "--v1" ]; then
        path="v1 (chat datagrams, empty heartbeats, no recovery)"
    fi
done

echo "bench.sh: building (cargo build --release -p ocm -p bench-client)" >&2
cargo build --release --quiet -p ocm -p bench-client

target_dir="${CARGO_TARGET_DIR:-target}"
# OCM_SERVER_BIN: another server build to measure (e.g. a branch's), instead of this tree's.
server_bin="${OCM_SERVER_BIN:-$target_dir/release/ocm-server}"
bench_bin="$target_dir/release/bench-client"

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

server_args=(--port 0 --msg-rate 0 --max-rooms-per-ip 0 --max-connections-per-ip 0 --max-capacity 65535
    --max-members-per-ip 0 --metrics 127.0.0.1:0)
if [ -n "$history" ]; then
    server_args+=(--history "$history")
fi
# shellcheck disable=SC2206 # word splitting of the extra flags is wanted
server_args+=(${OCM_SERVER_ARGS:-})
# Pinning (see the top of this file).
server_pin=()
bench_pin=()
cores="$(nproc 2>/dev/null || echo 1)"
if [ "${OCM_PIN:-1}" != "0" ] && [ "$cores" -ge 2 ] && command -v taskset >/dev/null; then
    first="$(taskset -pc $$ | sed 's/.*: //' | cut -d, -f1 | cut -d- -f1)"
    server_pin=(taskset -c "$first")
    bench_pin=(taskset -c "$(taskset -pc $$ | sed 's/.*: //' | tr ',' '\n' |
        awk -F- -v f="$first" '{ lo = $1; hi = ($2 == "" ? $1 : $2);
            for (c = lo; c <= hi; c++) if (c != f) printf "%s%d", (n++ ? "," : ""), c }')")
    echo "bench.sh: pinned: ocm-server on CPU $first, bench-client on CPUs ${bench_pin[2]}"
else
    echo "bench.sh: not pinned ($cores core(s) available${OCM_PIN:+, OCM_PIN=$OCM_PIN}): server and bench share the cores"
fi

echo "bench.sh: starting ${server_pin[*]} $server_bin ${server_args[*]}" >&2
"${server_pin[@]}" "$server_bin" "${server_args[@]}" >"$tmp/server.out" 2>"$tmp/server.err" &
server_pid=$!

listening=""
for _ in $(seq 100); do
    listening="$(grep -m1 '^listening ' "$tmp/server.out" || true)"
    [ -n "$listening" ] && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "bench.sh: ocm-server exited before listening:" >&2
        cat "$tmp/server.err" >&2
        exit 1
    fi
    sleep 0.1
done
if [ -z "$listening" ]; then
    echo "bench.sh: ocm-server printed no 'listening' line within 10 s" >&2
    exit 1
fi
tcp="$(sed -n 's/^listening tcp=\([^ ]*\) .*/\1/p' <<<"$listening")"
# The web listener, for bench-client --web N (unless given --web-server).
web="$(sed -n 's/^listening .* web=\([^ ]*\).*/\1/p' <<<"$listening")"
web_args=()
if [ -n "$web" ] && [[ " ${bench_args[*]} " != *" --web-server "* ]]; then
    web_args=(--web-server "$web")
fi
echo "bench.sh: server $listening (pid $server_pid, --msg-rate 0, --max-rooms-per-ip 0, --max-connections-per-ip 0, --max-capacity 65535, --max-members-per-ip 0, --history ${history:-default})" >&2
echo "bench.sh: protocol path $path; server --history ${history:-default}"

# utime and stime of a process, in clock ticks: fields 14 and 15 of /proc/PID/stat,
# counted after the command name (which is in parentheses and may hold spaces).
cpu_ticks() {
    sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12, $13}'
}
# The server's own counts (its metrics endpoint), before and after: datagrams sent and
# deliveries give the events per datagram, the figure coalescing is about.
metrics_url="$(sed -n 's/^metrics \(http:[^ ]*\)$/\1/p' "$tmp/server.out" | head -1)"
scrape() {
    if [ -n "$metrics_url" ] && command -v curl >/dev/null; then
        curl -s --max-time 2 "$metrics_url" || true
    fi
}
metric() {
    awk -v n="ocm_$1" '$1 == n { print $2 }' <<<"$2"
}
m0="$(scrape)"
read -r utime0 stime0 < <(cpu_ticks "$server_pid")
start_ns="$(date +%s%N)"

set +e
"${bench_pin[@]}" "$bench_bin" --server "$tcp" "${web_args[@]}" "${bench_args[@]}"
bench_rc=$?
set -e

if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "bench.sh: ocm-server died during the run:" >&2
    cat "$tmp/server.err" >&2
    exit 1
fi
read -r utime1 stime1 < <(cpu_ticks "$server_pid")
end_ns="$(date +%s%N)"
m1="$(scrape)"
hz="$(getconf CLK_TCK)"
awk -v u="$((utime1 - utime0))" -v s="$((stime1 - stime0))" -v hz="$hz" \
    -v wall="$(((end_ns - start_ns) / 1000000))" 'BEGIN {
        us = u / hz; ss = s / hz; w = wall / 1000;
        printf "  Server CPU    user %.2f s, sys %.2f s = %.0f%% of one core over %.1f s (bench-client run, setup included)\n",
            us, ss, (w > 0 ? (us + ss) * 100 / w : 0), w
    }'
if [ -n "$m1" ]; then
    awk -v d0="$(metric deliveries_total "$m0")" -v d1="$(metric deliveries_total "$m1")" \
        -v g0="$(metric datagrams_sent_total "$m0")" -v g1="$(metric datagrams_sent_total "$m1")" \
        -v e0="$(metric events_total "$m0")" -v e1="$(metric events_total "$m1")" \
        -v u="$((utime1 - utime0 + stime1 - stime0))" -v hz="$hz" \
        -v share="$(metric loop_busy_share "$m1")" -v hold="$(metric coalesce_hold_seconds "$m1")" 'BEGIN {
        d = d1 - d0; g = g1 - g0; e = e1 - e0;
        printf "  Server sends  %d events, %d datagrams, %d deliveries: %.1f events per datagram; %.0f ns of server CPU per delivery\n",
            e, g, d, (g > 0 ? d / g : 0), (d > 0 ? u / hz * 1e9 / d : 0)
        printf "  Coalescing    busy share %.2f, hold %.0f us at the end of the run\n", share, hold * 1e6
    }'
fi
exit "$bench_rc"
