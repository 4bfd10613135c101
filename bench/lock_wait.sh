#!/usr/bin/env bash
# bench/lock_wait.sh: how long purchases wait for the store's lock while other nodes read
# large answers. Three nodes share one store of TICKETS tickets with PRESOLD purchases;
# READERS loops fetch GET /purchases (the whole list) from n1 and n2 while the generator
# buys through n3 at RATE/s for DURATION. Prints n3's lock waits per group commit (from
# tickets_store_lock_wait_seconds) and the purchases' latency (from the generator).
#
# usage: bench/lock_wait.sh [BIN_DIR]   (default target/release; build node, generator
#        and store-writer there first). Environment: TICKETS (40000), PRESOLD (10000),
#        READERS (2 per reading node), RATE (200), DURATION (8s).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(cd "${1:-$REPO/target/release}" && pwd)
TICKETS=${TICKETS:-40000}
PRESOLD=${PRESOLD:-10000}
READERS=${READERS:-2}
RATE=${RATE:-200}
DURATION=${DURATION:-8s}
for program in node generator store-writer; do
    [[ -x $BIN/$program ]] || { echo "missing $BIN/$program" >&2; exit 2; }
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/lock-wait.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

"$BIN/generator" seed --data "$TMP/data" --events 6 --tickets "$TICKETS" --seed 1 >/dev/null
# Sold one per commit, a quarter from each original event.
for event in concert sports-game theater-show movie-premiere; do
    "$BIN/store-writer" --data "$TMP/data" --event "$event" --quantity 1 --purchases $((PRESOLD / 4))
done | grep -c '^committed' | sed 's/^/presold: /'

# Started here, not in a command substitution, so cleanup knows every node's pid.
start_node() {
    RUST_LOG=warn "$BIN/node" --id "$1" --listen 127.0.0.1:0 --data "$TMP/data" >"$TMP/$1.out" 2>"$TMP/$1.err" &
    PIDS+=($!)
}
address_of() {
    for _ in $(seq 100); do
        if grep -q '^listening on ' "$TMP/$1.out"; then
            sed -n 's/^listening on //p' "$TMP/$1.out"
            return
        fi
        sleep 0.1
    done
    echo "node $1 did not start" >&2
    exit 1
}
start_node n1
start_node n2
start_node n3
N1=$(address_of n1)
N2=$(address_of n2)
N3=$(address_of n3)
size=$(curl -s "http://$N1/purchases" | wc -c)
echo "GET /purchases answer: $size bytes"

for node in "$N1" "$N2"; do
    for _ in $(seq "$READERS"); do
        (while :; do curl -s -o /dev/null "http://$node/purchases"; done) &
        PIDS+=($!)
    done
done
"$BIN/generator" load --target "http://$N3" --rate "$RATE" --duration "$DURATION" \
    --max-quantity 1 --no-progress --report "$TMP/load.json" >/dev/null

curl -s "http://$N3/metrics" >"$TMP/metrics.txt"
python3 - "$TMP/metrics.txt" "$TMP/load.json" <<'EOF'
import json, re, sys
metrics, load = open(sys.argv[1]).read(), json.load(open(sys.argv[2]))
def series(name):
    return {m.group(1) or "": float(m.group(2)) for m in
            re.finditer(r'^' + name + r'(?:\{[^}]*le="([^"]+)"[^}]*\}|\{[^}]*\})? (\S+)$', metrics, re.M)}
count = sum(series("tickets_store_lock_wait_seconds_count").values())
total = sum(series("tickets_store_lock_wait_seconds_sum").values())
buckets = series("tickets_store_lock_wait_seconds_bucket")
def above(limit):
    within = max((v for le, v in buckets.items() if le != "+Inf" and float(le) <= limit), default=0)
    return count - within
print(f"n3 group commits: {count:.0f}, lock wait mean {1000 * total / max(count, 1):.2f} ms, "
      f"over 10 ms: {above(0.01):.0f}, over 100 ms: {above(0.1):.0f}, over 1 s: {above(1):.0f}")
print(f"purchases: sent {load['sent']}, bought {load['purchases']}, errors {load['errors_total']}, "
      "latency ms " + ", ".join(f"{k} {v}" for k, v in load["latency_ms"].items()))
EOF
