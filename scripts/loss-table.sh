#!/usr/bin/env bash
# What v1.1 recovery costs and gives under loss: runs scripts/bench.sh (a fresh server each
# time) with bench-client --loss 0, 0.01, 0.05 and 0.20 and prints one table:
#
#   loss  delivered%  duplicates  p50  p99  recovery p99  repair/lost bytes  server CPU
#
# The loss is the bench's own: each datagram its sockets receive is dropped with that
# probability before it is read (seeded), and the v1.1 path NACKs the gaps.
#
# Usage: scripts/loss-table.sh [extra bench-client args]
# Environment: USERS (500), ROOMS (20), RATE (5000 msg/s), DURATION (3 s), WARMUP (1 s),
#              GRACE (5 s), LOSSES ("0 0.01 0.05 0.20"), HISTORY (server default when unset).
# GRACE bounds the wait for the last repairs: at 20% a repair is itself lost four times in
# a row for 1 gap in 600, and NACK backoff (50, 100, 200, 400 ms, ...) then needs over a
# second. A run ends as soon as everything arrived, so a long grace costs nothing.
set -euo pipefail

cd "$(dirname "$0")/.."

users="${USERS:-500}"
rooms="${ROOMS:-20}"
rate="${RATE:-5000}"
duration="${DURATION:-3}"
warmup="${WARMUP:-1}"
grace="${GRACE:-5}"
losses="${LOSSES:-0 0.01 0.05 0.20}"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT INT TERM

history_args=()
if [ -n "${HISTORY:-}" ]; then
    history_args=(--history "$HISTORY")
fi

# A number from bench-client's flat JSON object (null when absent or not a number).
field() {
    local v
    v="$(sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" "$1")"
    echo "${v:-null}"
}

rows=()
for loss in $losses; do
    echo "loss-table.sh: --loss $loss ($users users, $rooms rooms, $rate msg/s, ${duration} s)" >&2
    json="$tmp/loss-$loss.json"
    out="$tmp/loss-$loss.out"
    if ! scripts/bench.sh "${history_args[@]}" --users "$users" --rooms "$rooms" \
        --rate "$rate" --duration "$duration" --warmup "$warmup" --grace "$grace" --loss "$loss" \
        --quiet --json "$json" "$@" >"$out"; then
        echo "loss-table.sh: the run at loss $loss failed:" >&2
        cat "$out" >&2
        exit 1
    fi
    cpu="$(sed -n 's/^Server CPU .* = \([0-9]*\)% of one core.*/\1%/p' "$out")"
    protocol="$(field "$json" protocol | tr -d '"')"
    rows+=("$loss $(field "$json" delivered_pct) $(field "$json" duplicates) $(field "$json" latency_p50_us) $(field "$json" latency_p99_us) $(field "$json" recovery_p99_us) $(field "$json" repair_to_lost_bytes) $(field "$json" unrecovered) ${cpu:-?}")
done

echo
echo "protocol ${protocol:-?} under receive loss: $users users, $rooms rooms, $rate msg/s, ${duration} s measured, server --history ${HISTORY:-default}"
printf '%s\n' "${rows[@]}" | awk '
    function ms(us) { return us == "null" ? "-" : sprintf("%.2fms", us / 1000) }
    function num(v, f) { return v == "null" ? "-" : sprintf(f, v) }
    BEGIN {
        printf "%6s %11s %11s %10s %10s %13s %18s %12s %11s\n", "loss", "delivered%", "duplicates",
            "p50", "p99", "recovery p99", "repair/lost bytes", "unrecovered", "server CPU"
    }
    {
        printf "%5.0f%% %11s %11s %10s %10s %13s %18s %12s %11s\n", $1 * 100, num($2, "%.3f"), $3,
            ms($4), ms($5), ($6 == 0 ? "-" : ms($6)), num($7, "%.2fx"), $8, $9
    }'
