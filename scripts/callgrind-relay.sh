#!/usr/bin/env bash
# Instructions per message on the sans-IO relay path, counted by callgrind: repeatable
# whatever else the machine is doing. Runs the relay micro-benchmark at two message
# counts and divides the difference, so set-up cost cancels out.
#   scripts/callgrind-relay.sh [members] [batch_max] [history]
# Without `history`, it reports both `--history 1024` (the default: the v1.1 ring keeps
# every event) and `--history 0` (no ring), so the ring's cost is the difference.
set -euo pipefail
cd "$(dirname "$0")/.."
members=${1:-25}
batch=${2:-64}
histories=${3:-"1024 0"}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
cargo bench --bench relay_path --no-run >/dev/null 2>&1
bin=$(ls -t target/release/deps/relay_path-* | grep -v '\.d$' | head -1)
count() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$members" "$batch" "$2" 2>&1 \
        | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
small=20000
large=220000
for history in $histories; do
    a=$(count $small "$history")
    b=$(count $large "$history")
    echo "relay path under callgrind ($members members, batch-max $batch, history $history):"
    echo "  $(( (b - a) / (large - small) )) instructions per message (parse, token check, outbox append, history, flush)"
done
