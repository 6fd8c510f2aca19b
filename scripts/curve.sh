#!/usr/bin/env bash
# The load curve of ocm-server, before and after adaptive coalescing, for several room
# shapes: for each shape and each target load (deliveries per second), one bench.sh run
# with --max-hold-us 0 (every outbox leaves at the end of its wake-up: the old behaviour)
# and one with the default hold, and one table of what each gave.
#
# Usage: scripts/curve.sh [--quick]
#   OCM_SHAPES="25x20 2x250" OCM_LOADS="200000 1000000" OCM_SECONDS=4 scripts/curve.sh
#   OCM_HOLDS="0 500 2000" scripts/curve.sh     (--max-hold-us values; "default": no flag)
# Shapes are SIZExROOMS (rooms of SIZE members, ROOMS of them); loads are deliveries/s
# (bench-client is asked for loads / SIZE messages per second). --quick: one shape (25x20),
# three loads, 2 s each. Pinning as bench.sh does it (server on one CPU, bench on the rest).
# Bounded: shapes x loads x 2 runs of OCM_SECONDS (+ about 3 s of set-up each).
#
# Columns: hold (0 = off, else the --max-hold-us), the load asked and received
# (deliveries/s), loss, latency p50/p99 (from the intended send time), server CPU (% of
# its core) and ns of server CPU per delivery, events per server datagram, and the bench's
# own CPU (% of one core: near 100% x its cores, the bench is the limit, not the server).
set -euo pipefail
cd "$(dirname "$0")/.."

shapes="${OCM_SHAPES:-2x250 10x50 25x20 250x2 2000x1}"
loads="${OCM_LOADS:-200000 1000000 2000000 4000000 8000000}"
seconds="${OCM_SECONDS:-4}"
if [ "${1:-}" = "--quick" ]; then
    shapes="25x20"
    loads="200000 1000000 4000000"
    seconds=2
fi
holds="${OCM_HOLDS:-0 default}"

cargo build --release --quiet -p ocm -p bench-client
out="$(mktemp)"
trap 'rm -f "$out"' EXIT

printf '%-8s %-6s %10s %10s %7s %9s %9s %6s %7s %6s %6s\n' \
    shape hold asked got loss% p50 p99 srv% ns/dlv ev/dg bench%
for shape in $shapes; do
    size="${shape%x*}"
    rooms="${shape#*x}"
    users=$((size * rooms))
    for load in $loads; do
        rate=$((load / size))
        # Past a load at which every run of the shape lost more than half, higher loads
        # only measure the overload again: the shape's curve ends there.
        overloaded=1
        for hold in $holds; do
            server_args=""
            [ "$hold" != "default" ] && server_args="--max-hold-us $hold"
            if ! OCM_SERVER_ARGS="$server_args" scripts/bench.sh --users "$users" --rooms "$rooms" \
                --rate "$rate" --duration "$seconds" --warmup 1 --quiet >"$out" 2>&1; then
                printf '%-8s %-6s %10s  (run failed: %s)\n' "$shape" "$hold" "$load" \
                    "$(grep -m1 -iE 'error|died|cannot|refused' "$out" || tail -1 "$out")"
                continue
            fi
            lost="$(awk '/^  Deliveries/ { v = $8; gsub(/[(%),]/, "", v); print v }' "$out")"
            awk -v l="${lost:-100}" 'BEGIN { exit !(l <= 50) }' && overloaded=0
            awk -v shape="$shape" -v hold="$hold" -v load="$load" '
                /^  Throughput/ { got = $2 }
                /^  Deliveries/ { loss = $8; gsub(/[(%),]/, "", loss) }
                /^ +50\.000%/ { p50 = $2 }
                /^ +99\.000%/ { p99 = $2 }
                /^  Server CPU/ { split($0, a, "= "); split(a[2], b, "%"); srv = b[1] }
                /^  Server sends/ { for (i = 1; i <= NF; i++) {
                        if ($i == "events" && $(i+1) == "per") ev = $(i-1);
                        if ($i == "ns") ns = $(i-1) } }
                /^  Bench CPU/ { split($0, a, "= "); split(a[2], b, "%"); bench = b[1] }
                END { printf "%-8s %-6s %10s %10s %7s %9s %9s %6s %7s %6s %6s\n",
                    shape, hold, load, got, loss, p50, p99, srv, ns, ev, bench }' "$out"
        done
        [ "$overloaded" = 1 ] && break
    done
done
