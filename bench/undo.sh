#!/usr/bin/env bash
# bench/undo.sh — what the undo journal costs a migration: the same copy
# with [target] undo_journal on and off, side by side, in one run, plus the
# time of the rollback itself.
#
# Usage:  bench/undo.sh [ROWS]      (default 1000000)
#
#   source   ferry_ubench_src: `events` (ROWS rows: bigint key, timestamptz,
#            jsonb, text) and `customers` (ROWS / 5 rows: bigint key, text,
#            timestamptz, text[]), copied as they are (no plugin: the
#            journal's cost is not hidden behind a transform)
#   fresh    ferry migrate into an empty database, journal off, then on:
#            the journal of tables empty at the start is one row per batch
#   existing ferry migrate with on_conflict = "overwrite" into a database
#            already holding every row (a copy of the loaded one), journal
#            off, then on: first-touch before-images of every row
#   rollback ferry rollback of each journaled run (rows deleted; rows
#            written back from their before-images), then a content check:
#            every table's md5 of its rows in key order equals the state
#            before the run
# Each measurement is repeated ROUNDS times (default 2), off and on
# alternating, and every run is printed. The PostgreSQL server is the local
# one, durable (fsync on, synchronous_commit on): check `SHOW fsync`.
#
# Environment: FERRY_BIN (default target/release/ferry, built if missing),
# ROUNDS, PGHOST/PGPORT/PGUSER (default 127.0.0.1/5432/postgres), KEEP=1.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
ROWS=${1:-1000000}
ROUNDS=${ROUNDS:-2}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres} PGTZ=UTC
FERRY_BIN=${FERRY_BIN:-$ROOT/target/release/ferry}
KEEP=${KEEP:-0}
BASE="postgres://$PGUSER@$PGHOST:$PGPORT"
SRC=ferry_ubench_src
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

[ -x "$FERRY_BIN" ] || (cd "$ROOT" && cargo build --release -p ferry)
pg() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }
fresh() { pg -d postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1 ${2:+TEMPLATE $2}"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n / s }'; }
digest() {
    pg -At -d "$1" -c "SELECT md5(string_agg(md5(e::text), '' ORDER BY id)) FROM events e" \
        -c "SELECT md5(string_agg(md5(c::text), '' ORDER BY id)) FROM customers c" | tr '\n' ' '
}

echo "==> generating $SRC ($ROWS events, $((ROWS / 5)) customers)" >&2
fresh $SRC
pg -d $SRC -v rows="$ROWS" <<'SQL'
CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz NOT NULL, payload jsonb NOT NULL, note text);
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, joined timestamptz NOT NULL, tags text[]);
INSERT INTO events SELECT g, '2020-01-01'::timestamptz + g * interval '1.000001 seconds',
    jsonb_build_object('n', g, 'kind', 'k' || g % 17, 'ok', g % 3 = 0), md5(g::text)
    FROM generate_series(1, :rows) g;
INSERT INTO customers SELECT g, 'Name ' || g, '2015-01-01'::timestamptz + g * interval '7 minutes',
    ARRAY['t' || g % 7, 'vip'] FROM generate_series(1, :rows / 5) g;
-- The runs into existing tables overwrite every row with a changed value.
UPDATE events SET note = note || '!' WHERE id % 2 = 0;
VACUUM ANALYZE;
SQL
TOTAL=$((ROWS + ROWS / 5))

# migrate NAME TARGET_DB JOURNAL(true|false) ON_CONFLICT: prints seconds; run id in $WORK/NAME.run
migrate() {
    local dir=$WORK/$1
    mkdir -p "$dir"
    cat > "$dir/ferry.toml" <<TOML
name = "$1"
[source]
url = "$BASE/$SRC"
include = ["public.events", "public.customers"]
[target]
url = "$BASE/$2"
undo_journal = $3
on_conflict = "$4"
TOML
    local t0 t1
    t0=$(now)
    "$FERRY_BIN" --config "$dir/ferry.toml" migrate --json > "$dir/out.json" 2> "$dir/err" || {
        cat "$dir/err" >&2; exit 1; }
    t1=$(now)
    python3 -c "import json,sys; print(json.load(open('$dir/out.json'))['run_id'])" > "$dir/run"
    elapsed "$t0" "$t1"
}
rollback() {
    local dir=$WORK/$1 t0 t1 code=0
    t0=$(now)
    "$FERRY_BIN" --config "$dir/ferry.toml" rollback "$(cat "$dir/run")" --json > "$dir/rb.json" 2> "$dir/rb.err" || code=$?
    t1=$(now)
    [ "$code" = 0 ] || { echo "rollback of $1 exited $code" >&2; cat "$dir/rb.json" "$dir/rb.err" >&2; exit 1; }
    elapsed "$t0" "$t1"
}

# A loaded copy to start the runs into existing tables from.
fresh ferry_ubench_loaded
migrate loaded ferry_ubench_loaded false error > /dev/null
pg -d ferry_ubench_loaded -c "DROP SCHEMA ferry CASCADE" -c "UPDATE events SET note = 'before ' || id WHERE id % 2 = 0" \
   -c "VACUUM ANALYZE"
LOADED_DIGEST=$(digest ferry_ubench_loaded)

echo "| round | run | journal | seconds | rows/s | vs off | rollback s | after rollback |"
echo "|---:|---|---|---:|---:|---:|---:|---|"
for round in $(seq 1 "$ROUNDS"); do
    for kind in fresh existing; do
        off_s=
        for journal in false true; do
            db=ferry_ubench_${kind}_$journal
            name=${kind}_${journal}_$round
            if [ "$kind" = fresh ]; then
                fresh "$db"; policy=error; before="(empty)"
            else
                fresh "$db" ferry_ubench_loaded; policy=overwrite; before=$LOADED_DIGEST
            fi
            s=$(migrate "$name" "$db" $journal $policy)
            [ "$journal" = false ] && off_s=$s
            ratio=$(awk -v a="$s" -v b="$off_s" 'BEGIN { printf "%.2f×", a / b }')
            rb=—; check=—
            if [ "$journal" = true ]; then
                rb=$(rollback "$name")
                if [ "$kind" = fresh ]; then
                    n=$(pg -At -d "$db" -c "SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM customers)")
                    [ "$n" = 0 ] && check="empty, as before" || check="$n ROWS LEFT"
                else
                    [ "$(digest "$db")" = "$before" ] && check="identical (md5)" || check="DIFFERS"
                fi
            fi
            echo "| $round | $kind | $journal | $s | $(rate $TOTAL "$s") | $ratio | $rb | $check |"
            [ "$KEEP" = 1 ] || pg -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
        done
    done
done
[ "$KEEP" = 1 ] || pg -d postgres -c "DROP DATABASE IF EXISTS ferry_ubench_loaded WITH (FORCE)" -c "DROP DATABASE IF EXISTS $SRC WITH (FORCE)"
