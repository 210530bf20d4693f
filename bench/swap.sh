#!/usr/bin/env bash
# bench/swap.sh — hot swap under load, in one run.
#
# ferry sync streams a pipeline of tables (the seed's `users` through its
# transform-user plugin) from a throwaway source cluster while pgbench writes
# RATE single-row transactions/s (bench/cdc-changes.sql):
#
#   1. switches: at WARMUP s the Python build of the seed is deployed live
#      (`ferry plugin deploy`; compiled off the hot path while the Rust one
#      keeps applying), SWITCH_GAP s later the Rust one again. Reported: each
#      switch's pause (ferry_plugin_switch_pause_seconds, the time the stream
#      spent switching between two target transactions), the lag sampled
#      every 100 ms (ferry_lag_seconds) around each switch against the whole
#      run, and the source's own view of the slot at the end
#      (pg_replication_slots: confirmed_flush_lsn against the WAL written).
#   2. shadow cost: a backlog of N_TX transactions written with ferry
#      stopped is drained by the Rust plugin alone, then another by the Rust
#      plugin with the Python one shadowing it (`deploy --shadow`):
#      changes/s of each.
#
# Usage: bench/swap.sh        (RATE=5000 DURATION=40 WARMUP=10 SWITCH_GAP=15 N_TX=100000)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
OUT_DIR=$BENCH_DIR/out
RATE=${RATE:-5000}
DURATION=${DURATION:-40}
WARMUP=${WARMUP:-10}
SWITCH_GAP=${SWITCH_GAP:-15}
N_TX=${N_TX:-100000}
SEED_ROWS=${SEED_ROWS:-200000}
FERRY_BIN=${FERRY_BIN:-$ROOT/target/release/ferry}
RUST=$ROOT/plugins/target/wasm32-wasip2/release/transform_user.wasm
mkdir -p "$OUT_DIR"
log() { printf '[swap %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }

[[ -x $FERRY_BIN ]] || (cd "$ROOT" && cargo build --release --quiet -p ferry)
(cd "$ROOT/plugins" && cargo build --release --quiet --target wasm32-wasip2 -p transform-user)

FERRY_PID=
bench_cleanup() {
    [[ -n $FERRY_PID ]] && kill "$FERRY_PID" 2>/dev/null || true
    psql -X -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS ferry_bench_swap WITH (FORCE)" >/dev/null 2>&1 || true
}
source "$BENCH_DIR/cluster.sh"

PYTHON=$WORK/python.wasm
log "building the Python seed"
componentize-py -d "$ROOT/wit" -w user-transform-keyed componentize app \
    -p "$ROOT/plugins/python/transform_user" -p "$ROOT/plugins/python" -o "$PYTHON" >/dev/null
log "seeding $SEED_ROWS legacy rows in the source (port $PORT)"
src -v n="$SEED_ROWS" -f "$BENCH_DIR/seed.sql" >/dev/null
psql -X -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS ferry_bench_swap WITH (FORCE)" -c "CREATE DATABASE ferry_bench_swap"
CONFIG=$WORK/ferry.toml
cat >"$CONFIG" <<TOML
name = "swapbench"
[source]
url = "$SRC"
[target]
url = "postgres://postgres@127.0.0.1:5432/ferry_bench_swap"
[[tables]]
name = "users"
plugin = "$RUST"
TOML
export FERRY_CACHE_DIR=$WORK/cache
# (Daemons are started with "$FERRY_BIN" itself, so that $! is ferry's PID.)
ferry() { "$FERRY_BIN" --config "$CONFIG" "$@"; }
# Compile both once, so that the first deployment does not pay it twice.
ferry plugin info "$PYTHON" >/dev/null

log "initial load (creates the slot)"
ferry sync --idle-exit 1 --json >"$WORK/load.json" || [[ $? == 4 ]]

# --- 1. switches under load --------------------------------------------------------
METRICS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$FERRY_BIN" --config "$CONFIG" sync --listen "127.0.0.1:$METRICS_PORT" >"$WORK/steady.json" 2>"$WORK/steady.err" &
FERRY_PID=$!
sleep 2
log "steady load: $RATE tx/s for $DURATION s; deployments at $WARMUP s and $((WARMUP + SWITCH_GAP)) s"
"$BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n -c 2 -j 2 -R "$RATE" -T "$DURATION" -f "$BENCH_DIR/cdc-changes.sql" postgres >"$WORK/pgbench-steady.log" 2>&1 &
PGBENCH_PID=$!
: >"$WORK/lag.txt"
(
    while kill -0 "$PGBENCH_PID" 2>/dev/null; do
        lag=$(curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk '$1 == "ferry_lag_seconds" {print $2 * 1000}')
        echo "$(now) ${lag:-0}" >>"$WORK/lag.txt"
        sleep 0.1
    done
) &
SAMPLER=$!
pauses=()
switch_times=()
deploy() {
    local out
    out=$(ferry plugin deploy "$1" --json)
    [[ $(jq -r .state <<<"$out") == live ]] || { log "deployment not live: $out"; exit 1; }
    switch_times+=("$(now)")
    pauses+=("$(curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk '$1 == "ferry_plugin_switch_pause_seconds" {printf "%.1f", $2 * 1000}')")
}
sleep "$WARMUP"; deploy "$PYTHON"
sleep "$SWITCH_GAP"; deploy "$RUST"
wait "$PGBENCH_PID"; wait "$SAMPLER" || true
sleep 2
tps=$(awk '/^tps/ {printf "%.0f", $3; exit}' "$WORK/pgbench-steady.log")
# Lag: over the whole run, and the worst sample within 2 s after each switch.
quantile() { awk '{print $2}' "$WORK/lag.txt" | sort -n | awk -v q="$1" '{v[NR]=$1} END {i=int(q*NR+0.5); if (i<1) i=1; if (i>NR) i=NR; printf "%.0f", v[i]}'; }
around() { awk -v t="$1" '$1 >= t - 1 && $1 <= t + 2 {if ($2 > m) m = $2} END {printf "%.0f", m}' "$WORK/lag.txt"; }
slot=$(src -At -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) FROM pg_replication_slots")
kill -TERM "$FERRY_PID"; wait "$FERRY_PID" || true; FERRY_PID=

# --- 2. what a shadow costs --------------------------------------------------------
drain() {
    "$BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n -c 2 -j 2 -t $((N_TX / 2)) -f "$BENCH_DIR/cdc-changes.sql" postgres >/dev/null 2>&1
    local t0 t1
    t0=$(now)
    ferry sync --idle-exit 1 --json >"$WORK/drain.json" || [[ $? == 4 ]]
    t1=$(now)
    awk -v n="$(jq '.stream.upserts + .stream.deletes + .stream.dead_lettered' "$WORK/drain.json")" -v s="$(echo "$t1 - $t0 - 1" | bc -l)" 'BEGIN {printf "%.0f", n / s}'
}
log "draining $N_TX changes with the Rust plugin alone"
alone=$(drain)
log "starting a Python shadow"
"$FERRY_BIN" --config "$CONFIG" sync --listen "127.0.0.1:$METRICS_PORT" >/dev/null 2>&1 &
FERRY_PID=$!
sleep 2
[[ $(ferry plugin deploy "$PYTHON" --shadow --json | jq -r .state) == shadow ]] || { log "the shadow did not start"; exit 1; }
kill -TERM "$FERRY_PID"; wait "$FERRY_PID" || true; FERRY_PID=
log "draining $N_TX changes with the Python shadow beside the Rust plugin"
shadowed=$(drain)
compared=$(ferry status --json | jq '[.deployments[] | select(.state == "shadow") | .shadow_report.rows] | max')

jq -n --arg tps "$tps" --arg p50 "$(quantile 0.5)" --arg p99 "$(quantile 0.99)" \
   --arg pauses "${pauses[*]}" --arg s1 "$(around "${switch_times[0]}")" --arg s2 "$(around "${switch_times[1]}")" \
   --arg slot "$slot" --arg alone "$alone" --arg shadowed "$shadowed" --arg compared "$compared" \
   '{tps: $tps, lag_p50_ms: $p50, lag_p99_ms: $p99, switch_pauses_ms: $pauses, worst_lag_around_switches_ms: [$s1, $s2],
     slot_unconfirmed_bytes_at_end: $slot, drain_alone_changes_per_s: $alone, drain_with_shadow_changes_per_s: $shadowed,
     rows_compared_by_shadow: $compared}' >"$OUT_DIR/swap.json"
echo
echo "| measure | value |"
echo "|---|---:|"
printf '| steady load (tx/s, achieved) | %s |\n' "$tps"
printf '| switch pauses, Rust → Python → Rust (ms) | %s |\n' "${pauses[*]}"
printf '| worst lag within 2 s of each switch (ms) | %s / %s |\n' "$(around "${switch_times[0]}")" "$(around "${switch_times[1]}")"
printf '| lag p50 / p99 over the run (ms) | %s / %s |\n' "$(quantile 0.5)" "$(quantile 0.99)"
printf '| slot: WAL not confirmed at the end (bytes) | %s |\n' "$slot"
printf '| backlog drain, Rust alone (changes/s) | %s |\n' "$alone"
printf '| backlog drain, Rust + Python shadow (changes/s) | %s |\n' "$shadowed"
printf '| rows the shadow compared | %s |\n' "$compared"
