#!/usr/bin/env bash
# bench/capture.sh — the DDL capture's cost to a change stream, in one run:
# the backlog drain of bench/cdc.sh (N_TX single-row transactions written
# while ferry is stopped, then `ferry sync` timed until the slot is
# drained) with `[source] capture_ddl` off and on, ROUNDS pairs in
# alternating order, each drain from the same seeded source table, the
# same backlog (pgbench --random-seed) and a fresh target, slot and
# publication.
# The capture's event triggers fire on DDL only; what it may cost is the
# stream's handling of the tables' versions. Prints changes/s per round
# and the on/off ratio of each pair.
#
# Usage: bench/capture.sh            (N_TX=200000 ROUNDS=2 SEED_ROWS=200000)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
OUT_DIR=$BENCH_DIR/out
N_TX=${N_TX:-200000}
ROUNDS=${ROUNDS:-2}
SEED_ROWS=${SEED_ROWS:-200000}
FERRY_BIN=${FERRY_BIN:-$ROOT/target/release/ferry}
PLUGIN=$ROOT/plugins/target/wasm32-wasip2/release/transform_user.wasm
TARGET_DB=ferry_bench_capture
mkdir -p "$OUT_DIR"

log() { printf '[capture %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }

source "$BENCH_DIR/release.sh"
release_build "$FERRY_BIN" transform-user

target() { psql -X -q -h 127.0.0.1 -U postgres -d postgres "$@"; }
bench_cleanup() { target -c "DROP DATABASE IF EXISTS $TARGET_DB WITH (FORCE)" >/dev/null 2>&1 || true; }
source "$BENCH_DIR/cluster.sh"

CONFIG=$WORK/ferry.toml

# One round: a fresh target and stream, the backlog, the timed drain.
drain() {
    local capture=$1
    src -c "DROP TABLE IF EXISTS users" >/dev/null
    src -v n="$SEED_ROWS" -f "$BENCH_DIR/seed.sql" >/dev/null
    target -c "DROP DATABASE IF EXISTS $TARGET_DB WITH (FORCE)" -c "CREATE DATABASE $TARGET_DB"
    psql -X -q -h 127.0.0.1 -U postgres -d "$TARGET_DB" -c "CREATE TABLE users (id text PRIMARY KEY, first_name text NOT NULL, last_name text NOT NULL, email text NOT NULL, created_at timestamptz NOT NULL, settings jsonb NOT NULL)"
    cat >"$CONFIG" <<TOML
name = "capturebench"
[source]
url = "$SRC"
table = "users"
capture_ddl = $capture
[target]
url = "postgres://postgres@127.0.0.1:5432/$TARGET_DB"
table = "users"
[plugin]
path = "$PLUGIN"
TOML
    "$FERRY_BIN" --config "$CONFIG" sync --idle-exit 1 --json >"$WORK/load.json" || [[ $? == 4 ]]
    local installed
    installed=$(src -tAc "SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'ferry_capture%'")
    [[ ($capture == true && $installed == 3) || ($capture == false && $installed == 0) ]] ||
        { log "capture_ddl = $capture but $installed event triggers"; exit 1; }
    "$BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n -c 2 -j 2 --random-seed=7 -t $((N_TX / 2)) -f "$BENCH_DIR/cdc-changes.sql" postgres >"$WORK/pgbench.log" 2>&1
    local t0 t1 seconds changes
    t0=$(now)
    "$FERRY_BIN" --config "$CONFIG" sync --idle-exit 1 --json >"$WORK/drain.json" || [[ $? == 4 ]]
    t1=$(now)
    seconds=$(echo "$t1 - $t0 - 1" | bc -l)
    changes=$(jq '.stream.upserts + .stream.deletes + .stream.dead_lettered' "$WORK/drain.json")
    "$FERRY_BIN" --config "$CONFIG" sync --teardown >/dev/null
    log "capture_ddl = $capture: $changes changes in $(printf %.2f "$seconds") s"
    echo "$changes / $seconds" | bc -l
}

declare -a off on
log "source: $SEED_ROWS seed rows, a backlog of $N_TX transactions, each drain alike (port $PORT)"
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then
        off[r]=$(drain false)
        on[r]=$(drain true)
    else
        on[r]=$(drain true)
        off[r]=$(drain false)
    fi
done

echo
echo "| round | capture off (changes/s) | capture on (changes/s) | on / off |"
echo "|---:|---:|---:|---:|"
json="[]"
for ((r = 1; r <= ROUNDS; r++)); do
    ratio=$(echo "${on[r]} / ${off[r]}" | bc -l)
    printf '| %d | %.0f | %.0f | %.3f |\n' "$r" "${off[r]}" "${on[r]}" "$ratio"
    json=$(jq -c --argjson off "${off[r]}" --argjson on "${on[r]}" --argjson ratio "$ratio" '. + [{off: $off, on: $on, ratio: $ratio}]' <<<"$json")
done
jq -n --argjson rounds "$json" --argjson n "$N_TX" '{n_tx: $n, rounds: $rounds}' >"$OUT_DIR/capture.json"
