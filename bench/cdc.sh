#!/usr/bin/env bash
# bench/cdc.sh — ferry sync (PostgreSQL logical replication → PostgreSQL,
# through the WASM plugin) measured two ways, in one run:
#
#   1. backlog drain: N_TX single-row transactions (inserts, updates,
#      deletes; pgbench with bench/cdc-changes.sql) are written while ferry
#      is stopped; then ferry is started and timed until it has applied
#      everything (the slot is drained): changes/s.
#   2. steady lag: pgbench at RATE transactions/s for DURATION seconds while
#      ferry streams; the source-commit → target-commit lag per applied group
#      is read from ferry's /metrics (p50, p99), and ferry's RSS is sampled
#      at the start and the end of the run (flat = no growth).
#
# The source is a throwaway cluster (initdb, wal_level = logical) on its own
# port, so the machine's server is not reconfigured; the target is the local
# server (127.0.0.1:5432).
#
# Usage: bench/cdc.sh              (N_TX=1000000 RATE=5000 DURATION=30)
#        N_TX=200000 DURATION=600 bench/cdc.sh     (10 minutes of streaming)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
OUT_DIR=$BENCH_DIR/out
N_TX=${N_TX:-1000000}
RATE=${RATE:-5000}
DURATION=${DURATION:-30}
SEED_ROWS=${SEED_ROWS:-200000}
FERRY_BIN=${FERRY_BIN:-$ROOT/target/release/ferry}
PLUGIN=$ROOT/plugins/target/wasm32-wasip2/release/transform_user.wasm
mkdir -p "$OUT_DIR"

log() { printf '[cdc %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }

source "$BENCH_DIR/release.sh"
release_build "$FERRY_BIN" transform-user

# --- a throwaway source cluster with logical WAL --------------------------------
FERRY_PID=
bench_cleanup() {
    [[ -n $FERRY_PID ]] && kill "$FERRY_PID" 2>/dev/null || true
    psql -X -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS ferry_bench_cdc WITH (FORCE)" >/dev/null 2>&1 || true
}
source "$BENCH_DIR/cluster.sh"

log "seeding $SEED_ROWS legacy rows in the source (port $PORT)"
src -v n="$SEED_ROWS" -f "$BENCH_DIR/seed.sql" >/dev/null
psql -X -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS ferry_bench_cdc WITH (FORCE)" -c "CREATE DATABASE ferry_bench_cdc"
psql -X -q -h 127.0.0.1 -U postgres -d ferry_bench_cdc -c "CREATE TABLE users (id text PRIMARY KEY, first_name text NOT NULL, last_name text NOT NULL, email text NOT NULL, created_at timestamptz NOT NULL, settings jsonb NOT NULL)"
CONFIG=$WORK/ferry.toml
cat >"$CONFIG" <<TOML
name = "cdcbench"
[source]
url = "$SRC"
table = "users"
[target]
url = "postgres://postgres@127.0.0.1:5432/ferry_bench_cdc"
table = "users"
[plugin]
path = "$PLUGIN"
TOML

log "initial load (creates the slot)"
"$FERRY_BIN" --config "$CONFIG" sync --idle-exit 1 --json >"$WORK/load.json" || [[ $? == 4 ]]

# --- 1. backlog drain ------------------------------------------------------------
log "writing $N_TX single-row transactions with ferry stopped"
t0=$(now)
PGPASSWORD= "$BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n -c 2 -j 2 -t $((N_TX / 2)) -f "$BENCH_DIR/cdc-changes.sql" postgres >"$WORK/pgbench-backlog.log" 2>&1
log "backlog written in $(echo "$(now) - $t0" | bc) s; draining"
IDLE=1
t0=$(now)
/usr/bin/time -v "$FERRY_BIN" --config "$CONFIG" sync --idle-exit "$IDLE" --json >"$WORK/drain.json" 2>"$WORK/drain.time" || [[ $? == 4 ]]
t1=$(now)
drain_s=$(echo "$t1 - $t0 - $IDLE" | bc -l)
changes=$(jq '.stream.upserts + .stream.deletes + .stream.dead_lettered' "$WORK/drain.json")
drain_rate=$(echo "$changes / $drain_s" | bc -l)
drain_rss=$(awk -F': ' '/Maximum resident/ {printf "%.1f", $2/1024}' "$WORK/drain.time")
log "drained $changes changes in $(printf %.2f "$drain_s") s"

# --- 2. steady lag ---------------------------------------------------------------
METRICS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$FERRY_BIN" --config "$CONFIG" sync --listen "127.0.0.1:$METRICS_PORT" >"$WORK/steady.json" 2>"$WORK/steady.err" &
FERRY_PID=$!
sleep 2
rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$FERRY_PID/status"; }
rss_start=$(rss)
log "steady load: $RATE tx/s for $DURATION s (ferry RSS $rss_start MB)"
"$BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n -c 2 -j 2 -R "$RATE" -T "$DURATION" -f "$BENCH_DIR/cdc-changes.sql" postgres >"$WORK/pgbench-steady.log" 2>&1 &
PGBENCH_PID=$!
# Sample ferry's lag gauge (source commit → target commit of the latest
# applied group) every 100 ms while the load runs.
: >"$WORK/lag-samples.txt"
: >"$WORK/rss-samples.txt"
sleep 1
ticks=0
while kill -0 "$PGBENCH_PID" 2>/dev/null; do
    curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk '$1 == "ferry_lag_seconds" {print $2 * 1000}' >>"$WORK/lag-samples.txt"
    # ferry's RSS every 10 s: memory over the whole run, not two points.
    (( ticks++ % 100 == 0 )) && echo "$(date +%s) $(rss)" >>"$WORK/rss-samples.txt"
    sleep 0.1
done
wait "$PGBENCH_PID"
sleep 2
rss_end=$(rss)
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" >"$WORK/metrics.txt"
kill -TERM "$FERRY_PID"; wait "$FERRY_PID" || true; FERRY_PID=
quantile() { sort -n "$WORK/lag-samples.txt" | awk -v q="$1" '{v[NR]=$1} END {if (NR) {i=int(q*NR+0.5); if (i<1) i=1; if (i>NR) i=NR; printf "%.0f", v[i]}}'; }
p50=$(quantile 0.5); p99=$(quantile 0.99)
samples=$(wc -l <"$WORK/lag-samples.txt")
cp "$WORK/lag-samples.txt" "$OUT_DIR/cdc-lag-samples-ms.txt"
cp "$WORK/rss-samples.txt" "$OUT_DIR/cdc-rss-samples.txt"
# RSS over the second half of the run: flat memory means this range is narrow.
rss_second_half=$(awk '{v[NR]=$2} END {lo=1e9; hi=0; for (i=int(NR/2)+1; i<=NR; i++) {if (v[i]<lo) lo=v[i]; if (v[i]>hi) hi=v[i]}; if (NR) printf "%.1f–%.1f", lo, hi}' "$WORK/rss-samples.txt")
tps=$(awk '/^tps/ {printf "%.0f", $3; exit}' "$WORK/pgbench-steady.log")

cp "$WORK/metrics.txt" "$OUT_DIR/cdc-metrics.txt"
jq -n --argjson changes "$changes" --argjson seconds "$drain_s" --argjson rate "$drain_rate" --arg rss "$drain_rss" \
   --argjson p50 "${p50:-null}" --argjson p99 "${p99:-null}" --arg rss0 "$rss_start" --arg rss1 "$rss_end" --arg tps "$tps" \
   '{drain: {changes: $changes, seconds: $seconds, changes_per_s: $rate, peak_rss_mb: $rss},
     steady: {target_tps: '"$RATE"', achieved_tps: $tps, lag_p50_ms: $p50, lag_p99_ms: $p99, rss_start_mb: $rss0, rss_end_mb: $rss1}}' \
   >"$OUT_DIR/cdc.json"

echo
echo "| measure | value |"
echo "|---|---:|"
printf '| backlog drained (changes) | %s |\n' "$changes"
printf '| drain time (s) | %.2f |\n' "$drain_s"
printf '| **apply rate (changes/s)** | **%.0f** |\n' "$drain_rate"
printf '| peak RSS while draining (MB) | %s |\n' "$drain_rss"
printf '| steady load (tx/s, achieved) | %s |\n' "$tps"
printf '| **lag p50 / p99 (ms, %s samples)** | **%s / %s** |\n' "$samples" "${p50:-n/a}" "${p99:-n/a}"
printf '| RSS start → end of %s s streaming (MB) | %s → %s |\n' "$DURATION" "$rss_start" "$rss_end"
printf '| RSS range over the second half (MB, every 10 s) | %s |\n' "$rss_second_half"
