#!/usr/bin/env bash
# OCM next to Redis on this machine: the same workload, measured the same way, in one table.
#
#   builds ocm-server and bench-client (release), then for ocm-server and, if redis-server is
#   on PATH, for Redis pub/sub (started here on a free loopback port with --save '' and
#   --appendonly no): starts the server pinned to core 0 (taskset -c 0) with bench-client on
#   the other cores (unpinned on a 1-core machine, and it says so), runs bench-client against
#   it, and stops it. One table on stdout (Markdown), one row per system:
#
#   * sustained deliveries/s: a sweep (doubling from 200 k deliveries/s, then bisecting to
#     within 5%): the highest rate with loss < 0.1%, p50 < 10 ms, at least 95% of the asked
#     rate sent and no connection dropped. One bench-client run per rate, so that what an
#     overloaded step left queued (Redis keeps up to 32 MB per subscriber) cannot spill into
#     the next one, and so that each rate has its own server CPU figure.
#   * server CPU ns per delivery at saturation: at the sweep step that delivered the most,
#     the server's CPU time (utime + stime from /proc/PID/stat around that bench-client
#     run, setup included, as scripts/bench.sh does) over the deliveries it made (warmup
#     included), with how busy its core was ("not saturated" below 90%: then something
#     else, the bench or other load on the machine, set the limit).
#   * bench-client busy: its CPU over its cores at that step; above 80% the figures are
#     bench-limited, and the table says so. Next to each process's own share, how busy its
#     cores were in all (/proc/stat, every process): on a machine shared with other work a
#     process may wait for its core rather than use it, and the table says so ("starved").
#   * p50 / p99 at 200 k and 1 M deliveries/s: a run at each (marked when not sustained).
#
#   bench-client runs one worker thread per core it has (--threads), so that no two of its
#   threads take turns on one core.
#   Rates: bench-client --rate is messages/s; deliveries = messages x members (500 users in
#   20 rooms: 25 members, so 200 k deliveries/s = 8 000 messages/s).
#
# Usage: scripts/compare.sh
# Environment: USERS (500), ROOMS (20), SIZE (64 bytes), STEP_S (2 s per sweep step),
# LATENCY_S (5 s per latency run), SWEEP_STEPS (10).
# Time: at most about 90 s per system after the build with the defaults (at most
# SWEEP_STEPS sweep runs of about STEP_S + 4 s each: setup, 1 s warmup, at most 1 s drain,
# 1 s pause; and two runs of about LATENCY_S + 4 s), so at most about 3 minutes for both;
# 2 to 2.5 minutes in the runs made on the project's 2-core VM.
set -euo pipefail
cd "$(dirname "$0")/.."

USERS="${USERS:-500}"
ROOMS="${ROOMS:-20}"
SIZE="${SIZE:-64}"
STEP_S="${STEP_S:-2}"
LATENCY_S="${LATENCY_S:-5}"
SWEEP_STEPS="${SWEEP_STEPS:-10}"
for v in USERS ROOMS SIZE STEP_S LATENCY_S SWEEP_STEPS; do
    if ! [[ "${!v}" =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then
        echo "compare.sh: $v must be a positive whole number, not '${!v}'" >&2
        exit 2
    fi
done
# Deliveries/s of the sweep's first step and of the two latency points.
START_DPS=200000
LOW_DPS=200000
HIGH_DPS=1000000
# Pass criteria of a sweep step (issue 14's "sustained").
MAX_LOSS_PCT=0.1
MAX_P50_US=10000
# Above this share of its cores, bench-client may be what limits the figures.
BENCH_BUSY_LIMIT=80

echo "compare.sh: building (cargo build --release -p ocm -p bench-client)" >&2
cargo build --release --quiet -p ocm -p bench-client
target_dir="${CARGO_TARGET_DIR:-target}"
server_bin="$target_dir/release/ocm-server"
bench_bin="$target_dir/release/bench-client"

cores="$(nproc)"
if [ "$cores" -ge 2 ] && command -v taskset >/dev/null 2>&1; then
    server_pin=(taskset -c 0)
    bench_pin=(taskset -c "1-$((cores - 1))")
    bench_cores=$((cores - 1))
    server_cpus=(0 0)
    bench_cpus=(1 $((cores - 1)))
    pinning="server pinned to core 0 (taskset -c 0), bench-client to cores 1-$((cores - 1)) (taskset -c 1-$((cores - 1)))"
else
    server_pin=()
    bench_pin=()
    bench_cores="$cores"
    server_cpus=(0 $((cores - 1)))
    bench_cpus=(0 $((cores - 1)))
    if [ "$cores" -lt 2 ]; then
        pinning="1 core: server and bench-client run unpinned, sharing it"
    else
        pinning="taskset is missing: server and bench-client run unpinned"
    fi
fi

tmp="$(mktemp -d)"
server_pid=""
bench_pid=""
# Stops a process: TERM, up to 5 s, then KILL.
stop() {
    local pid="$1"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    stop "$bench_pid"
    stop "$server_pid"
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat, counted
# after the command name, which is in parentheses and may hold spaces).
cpu_ticks() {
    sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
hz="$(getconf CLK_TCK)"

# Busy and total time of each CPU so far, one "cpuN busy total" line each (fields user to
# steal of /proc/stat; busy is all but idle and iowait, so it counts every process, ours or
# not, and the time the hypervisor took).
cpu_jiffies() {
    awk '/^cpu[0-9]/ { t = 0; for (i = 2; i <= 9; i++) t += $i; print $1, t - $5 - $6, t }' /proc/stat
}

# How busy (%) CPUs FIRST to LAST were between two cpu_jiffies snapshots, whoever used them.
busy_pct() {
    awk -v a="$3" -v b="$4" 'FNR == NR { b0[$1] = $2; t0[$1] = $3; next }
        { n = substr($1, 4) + 0; if (n >= a && n <= b) { busy += $2 - b0[$1]; tot += $3 - t0[$1] } }
        END { printf "%.0f", (tot > 0 ? busy * 100 / tot : 0) }' "$1" "$2"
}

# "core N" or "cores N-M".
cpu_names() {
    if [ "$1" = "$2" ]; then echo "core $1"; else echo "cores $1-$2"; fi
}

# A field of bench-client's flat --json output ("" when absent).
jfield() {
    sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" "$1"
}

# Deliveries per message: each message reaches every member of its sender's room, and the
# users send in turn, so it is the sum of room sizes squared over the users.
fanout="$(awk -v u="$USERS" -v r="$ROOMS" 'BEGIN {
    b = int(u / r); x = u - b * r;
    printf "%.6f", (x * (b + 1) * (b + 1) + (r - x) * b * b) / u }')"

# One bench-client run at RATE messages/s for SECONDS against the running server; writes
# NAME.json, NAME.log and NAME.cpu (server CPU seconds, bench-client wall seconds). A run
# that fails before measuring (no JSON: e.g. no free port for a socket while other work
# holds them) is tried again, up to 3 times in all, so a step is not failed for it.
run_bench() {
    local attempt
    for attempt in 1 2 3; do
        run_once "$@"
        if [ -s "$tmp/$1.json" ] || [ "$attempt" -eq 3 ]; then
            return 0
        fi
        echo "compare.sh: trying that run again" >&2
    done
}

run_once() {
    local name="$1" rate="$2" seconds="$3"
    shift 3
    local t0 t1 w0 w1 rc=0
    cpu_jiffies >"$tmp/$name.stat0"
    t0="$(cpu_ticks "$server_pid")"
    w0="$(date +%s%N)"
    "${bench_pin[@]}" "$bench_bin" "$@" --users "$USERS" --rooms "$ROOMS" --size "$SIZE" \
        --threads "$bench_cores" --rate "$rate" --duration "$seconds" --warmup 1 --quiet --json "$tmp/$name.json" \
        >"$tmp/$name.log" 2>&1 &
    bench_pid=$!
    wait "$bench_pid" || rc=$?
    bench_pid=""
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "compare.sh: the server died during a run; bench-client said:" >&2
        cat "$tmp/$name.log" >&2
        exit 1
    fi
    t1="$(cpu_ticks "$server_pid")"
    w1="$(date +%s%N)"
    cpu_jiffies >"$tmp/$name.stat1"
    awk -v t="$((t1 - t0))" -v hz="$hz" -v w="$(((w1 - w0) / 1000000))" \
        'BEGIN { printf "%.3f %.3f\n", t / hz, w / 1000 }' >"$tmp/$name.cpu"
    if [ "$rc" -ne 0 ] || [ ! -s "$tmp/$name.json" ]; then
        echo "compare.sh: bench-client failed (exit $rc):" >&2
        cat "$tmp/$name.log" >&2
        rm -f "$tmp/$name.json"
    fi
    # A moment for the server to finish with the closed connections before the next run.
    sleep 1
}

# "ok", or why the run NAME at RATE messages/s is not sustained.
verdict() {
    local f="$tmp/$1.json" rate="$2"
    [ -s "$f" ] || {
        echo "bench-client failed"
        return
    }
    awk -v loss="$(jfield "$f" loss_pct)" -v p50="$(jfield "$f" latency_p50_us)" \
        -v got="$(jfield "$f" rate_achieved)" -v asked="$rate" \
        -v dropped="$(jfield "$f" timed_out)" -v ml="$MAX_LOSS_PCT" -v mp="$MAX_P50_US" 'BEGIN {
        if (loss + 0 >= ml) printf "loss %.3f%%\n", loss;
        else if (p50 + 0 >= mp) printf "p50 %.1f ms\n", p50 / 1000;
        else if (got + 0 < asked * 0.95) printf "bench sent %.0f of %.0f msg/s\n", got, asked;
        else if (dropped + 0 > 0) printf "%d connections dropped\n", dropped;
        else print "ok" }'
}

# Numbers as the table shows them.
fmt_rate() { awk -v d="$1" 'BEGIN { if (d >= 1e6) printf "%.2f M", d / 1e6; else printf "%.0f k", d / 1e3 }'; }
fmt_us() {
    awk -v u="$1" 'BEGIN {
        if (u == "") print "-"; else if (u < 1000) printf "%.0f µs", u;
        else if (u < 1e6) printf "%.2f ms", u / 1000; else printf "%.2f s", u / 1e6 }'
}

# Measures the running server as system SLUG (a file name) shown as NAME, bench-client's
# arguments after them; appends its row to $tmp/rows.
measure() {
    local slug="$1" sys="$2"
    shift 2
    local rate pass="" fail="" step=0 best_name="" best_dps=-1 name v dps broken=""
    rate="$(awk -v d="$START_DPS" -v f="$fanout" 'BEGIN { printf "%.0f", d / f }')"
    echo "== $sys: sweep, $STEP_S s per step (pass: loss < $MAX_LOSS_PCT%, p50 < 10 ms)" >&2
    while [ "$step" -lt "$SWEEP_STEPS" ]; do
        step=$((step + 1))
        name="$slug-sweep-$step"
        run_bench "$name" "$rate" "$STEP_S" "$@"
        v="$(verdict "$name" "$rate")"
        if [ "$v" = "bench-client failed" ]; then
            # Not a verdict on the server: the sweep stops, and the row says why.
            broken="$(grep -m1 '^bench-client: ' "$tmp/$name.log" || echo "bench-client failed")"
            echo "   $rate msg/s: $broken; the sweep stops here" >&2
            break
        fi
        dps="$(jfield "$tmp/$name.json" deliveries_per_s 2>/dev/null || true)"
        dps="${dps:-0}"
        printf '   %8s msg/s = %10s deliveries/s asked: %10s delivered, p50 %s, p99 %s, server CPU %s s: %s\n' \
            "$rate" "$(fmt_rate "$(awk -v r="$rate" -v f="$fanout" 'BEGIN { print r * f }')")" \
            "$(fmt_rate "$dps")" "$(fmt_us "$(jfield "$tmp/$name.json" latency_p50_us 2>/dev/null)")" \
            "$(fmt_us "$(jfield "$tmp/$name.json" latency_p99_us 2>/dev/null)")" \
            "$(cut -d' ' -f1 "$tmp/$name.cpu")" "$v" >&2
        if awk -v a="$dps" -v b="$best_dps" 'BEGIN { exit !(a > b) }'; then
            best_dps="$dps"
            best_name="$name"
        fi
        if [ "$v" = "ok" ]; then
            pass="$(awk -v a="$pass" -v r="$rate" 'BEGIN { print (a == "" || r > a) ? r : a }')"
        else
            fail="$(awk -v a="$fail" -v r="$rate" 'BEGIN { print (a == "" || r < a) ? r : a }')"
        fi
        # Double while passing, halve while failing, then bisect to within 5%.
        rate="$(awk -v p="$pass" -v f="$fail" 'BEGIN {
            if (f == "") printf "%.0f", p * 2;
            else if (p == "") printf "%.0f", f / 2;
            else if ((f - p) / p <= 0.05) print "done";
            else printf "%.0f", (p + f) / 2 }')"
        [ "$rate" = "done" ] && break
        [ "$rate" -ge 1 ] || break
    done
    local sustained="-"
    if [ -n "$broken" ]; then
        sustained="- (${broken#bench-client: })"
    elif [ -n "$pass" ]; then
        sustained="$(fmt_rate "$(awk -v r="$pass" -v f="$fanout" 'BEGIN { print r * f }')")"
    fi

    # Saturation: the step that delivered the most.
    local ns="-" busy="-" sat_note=""
    if [ -n "$best_name" ] && [ -s "$tmp/$best_name.json" ]; then
        read -r cpu_s wall_s <"$tmp/$best_name.cpu"
        local events bench_pct
        events="$(jfield "$tmp/$best_name.json" events)"
        bench_pct="$(jfield "$tmp/$best_name.json" cpu_pct_one_core)"
        local server_all bench_all stats=("$tmp/$best_name.stat0" "$tmp/$best_name.stat1")
        server_all="$(busy_pct "${stats[@]}" "${server_cpus[@]}")"
        bench_all="$(busy_pct "${stats[@]}" "${bench_cpus[@]}")"
        # Below 90% of a core the server was not the limit: either its core had room left
        # (not saturated), or other work held the core (starved).
        ns="$(awk -v c="$cpu_s" -v e="$events" -v w="$wall_s" -v d="$best_dps" \
            -v all="$server_all" -v cores="$(cpu_names "${server_cpus[@]}")" 'BEGIN {
            own = c * 100 / w;
            note = (own >= 90 ? "" : (all >= 90 ? ": starved by other load" : ": not saturated"));
            if (e > 0) printf "%.0f (server %.0f%% of a core, %s %.0f%% busy in all%s; at %s)",
                c * 1e9 / e, own, cores, all, note,
                (d >= 1e6 ? sprintf("%.2f M/s", d / 1e6) : sprintf("%.0f k/s", d / 1e3));
            else print "-" }')"
        busy="$(awk -v p="$bench_pct" -v n="$bench_cores" 'BEGIN { printf "%.0f", p / n }')"
        if [ "$busy" -gt "$BENCH_BUSY_LIMIT" ]; then
            sat_note=": **bench-limited**"
        elif [ "$bench_all" -ge 90 ]; then
            sat_note=": **starved by other load**"
        fi
        busy="$busy% of $bench_cores core(s), $(cpu_names "${bench_cpus[@]}") $bench_all% busy in all$sat_note"
    fi

    local point dps_at r lat=()
    for point in "$LOW_DPS" "$HIGH_DPS"; do
        r="$(awk -v d="$point" -v f="$fanout" 'BEGIN { printf "%.0f", d / f }')"
        name="$slug-at-$point"
        echo "== $sys: $LATENCY_S s at $(fmt_rate "$point") deliveries/s ($r msg/s)" >&2
        run_bench "$name" "$r" "$LATENCY_S" "$@"
        if [ -s "$tmp/$name.json" ]; then
            v="$(verdict "$name" "$r")"
            dps_at="$(fmt_us "$(jfield "$tmp/$name.json" latency_p50_us)") / $(fmt_us "$(jfield "$tmp/$name.json" latency_p99_us)")"
            [ "$v" = "ok" ] || dps_at="$dps_at (not sustained: $v)"
        else
            dps_at="- ($(grep -m1 '^bench-client: ' "$tmp/$name.log" | sed 's/^bench-client: //' || true))"
        fi
        lat+=("$dps_at")
    done
    echo "| $sys | $sustained | $ns | $busy | ${lat[0]} | ${lat[1]} |" >>"$tmp/rows"
}

: >"$tmp/rows"
echo "compare.sh: $pinning" >&2

# ocm-server, as scripts/bench.sh runs it (no flood control, no per-address limits).
"${server_pin[@]}" "$server_bin" --port 0 --msg-rate 0 --max-rooms-per-ip 0 \
    --max-connections-per-ip 0 >"$tmp/ocm.out" 2>"$tmp/ocm.err" &
server_pid=$!
listening=""
for _ in $(seq 100); do
    listening="$(grep -m1 '^listening ' "$tmp/ocm.out" || true)"
    [ -n "$listening" ] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$listening" ]; then
    echo "compare.sh: ocm-server did not start:" >&2
    cat "$tmp/ocm.err" >&2
    exit 1
fi
tcp="$(sed -n 's/^listening tcp=\([^ ]*\) .*/\1/p' <<<"$listening")"
measure ocm "ocm-server" --server "$tcp"
stop "$server_pid"
server_pid=""

redis_note=""
if command -v redis-server >/dev/null 2>&1; then
    redis_version="$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')"
    # A free loopback port: one nothing answers on (retried if Redis loses a race for it).
    for _ in $(seq 5); do
        port=$((20000 + RANDOM % 40000))
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            continue
        fi
        "${server_pin[@]}" redis-server --port "$port" --bind 127.0.0.1 --save '' \
            --appendonly no --loglevel warning >"$tmp/redis.log" 2>&1 &
        server_pid=$!
        for _ in $(seq 50); do
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$server_pid" 2>/dev/null && break
        server_pid=""
    done
    if [ -z "$server_pid" ]; then
        echo "compare.sh: redis-server did not start:" >&2
        cat "$tmp/redis.log" >&2
        exit 1
    fi
    measure redis "Redis $redis_version pub/sub" --target "redis://127.0.0.1:$port"
    stop "$server_pid"
    server_pid=""
else
    redis_note="redis-server is not on PATH: Redis was not measured (apt-get install redis-server)."
fi

members="$(awk -v f="$fanout" 'BEGIN { printf "%g", f }')"
echo
echo "OCM next to Redis: $USERS users in $ROOMS rooms ($members deliveries per message), $SIZE-byte messages, loopback"
echo "Machine: $cores cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)); $pinning"
echo "Sustained: highest rate of the sweep with loss < $MAX_LOSS_PCT% and p50 < 10 ms ($STEP_S s steps); latency: $LATENCY_S s runs"
echo
echo "| system | sustained deliveries/s | server CPU ns per delivery at saturation | bench-client busy at saturation | p50 / p99 at 200 k/s | p50 / p99 at 1 M/s |"
echo "|---|---|---|---|---|---|"
cat "$tmp/rows"
[ -z "$redis_note" ] || echo "$redis_note"
