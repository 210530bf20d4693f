#!/usr/bin/env bash
# bench/plugins.sh — the seed's transform as a plugin in Rust, Python and
# JavaScript, inside ferry, beside the same rules compiled natively, on the
# same N seed rows.
#
# Usage:  bench/plugins.sh [N]          (default 1000000)
#
#   1. ferry_bench_plugins   N seed-shaped `users` rows (bench/seed.sql)
#   2. native                bench/native-rules (the `user-rules` crate, native,
#                            LTO) on the same rows exported as JSON lines
#   3. plugins               the Rust component (plugins/), and the Python and
#                            JavaScript ones built here from plugins/python and
#                            plugins/js
#   4. ferry plugin bench    for each, twice with a fresh compiled-code cache:
#                            the first start compiles, the second comes from the
#                            cache; rows/s of the transform inside ferry
#                            (sandbox + contract adapter), best of 3 passes
#                            (JavaScript on the first JS_ROWS rows, default 100000)
# Prints a markdown table; writes bench/out/plugins-<N>.json (JSON lines).
# Needs what scripts/test.sh installs (componentize-py, npm ci in plugins/js).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
OUT=$BENCH_DIR/out
N=${1:-1000000}
JS_ROWS=${JS_ROWS:-100000}
DB=ferry_bench_plugins
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres} PGTZ=UTC
FERRY_BIN=${FERRY_BIN:-$ROOT/target/release/ferry}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"; psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
log() { printf '[plugins %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
pg() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }

mkdir -p "$OUT"
[[ -x $FERRY_BIN ]] || (cd "$ROOT" && cargo build --release -q)
(cd "$ROOT/plugins" && cargo build --release --target wasm32-wasip2 -q)
log "building the Python and JavaScript components"
componentize-py -d "$ROOT/wit" -w user-transform-keyed componentize app \
    -p "$ROOT/plugins/python/transform_user" -p "$ROOT/plugins/python" -o "$TMP/python.wasm" >/dev/null
node "$ROOT/plugins/js/build.mjs" "$ROOT/plugins/js/transform_user/app.js" "$ROOT/wit" user-transform-keyed "$TMP/js.wasm"
cp "$ROOT/plugins/target/wasm32-wasip2/release/transform_user.wasm" "$TMP/rust.wasm"

log "seeding $N rows"
pg -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB TEMPLATE template0 ENCODING 'UTF8'"
pg -d "$DB" -v n="$N" -f "$BENCH_DIR/seed.sql"
psql -X -At -v ON_ERROR_STOP=1 -d "$DB" -c "SELECT json_build_array(id, name, email,
        (extract(epoch FROM created_at) * 1000000)::int8, metadata) FROM users ORDER BY id" >"$TMP/rows.jsonl"

log "native rules"
native=$(cargo run -q --release --manifest-path "$BENCH_DIR/native-rules/Cargo.toml" <"$TMP/rows.jsonl")
native_rate=$(jq -r .rows_per_second <<<"$native")

cat >"$TMP/ferry.toml" <<TOML
name = "plugin-bench"
[migrate]
batch_size = 5000
[source]
url = "postgres://$PGUSER@$PGHOST:$PGPORT/$DB"
[target]
url = "postgres://$PGUSER@$PGHOST:$PGPORT/$DB"
[[tables]]
name = "users"
plugin = "$TMP/rust.wasm"
TOML

results=$OUT/plugins-$N.json
jq -c --arg lang native '. + {lang: $lang}' <<<"$native" >"$results"
printf '| plugin | size MB | first start s (compile) | cached start s | rows/s in ferry | × native |\n|---|---:|---:|---:|---:|---:|\n'
printf '| native rules (no WASM) | | | | %s | 1.00 |\n' "$native_rate"
for lang in rust python js; do
    cache=$TMP/cache-$lang
    rows=$N
    # StarlingMonkey interprets JavaScript (no JIT inside WebAssembly): its
    # rate is measured on the first JS_ROWS rows.
    [[ $lang == js ]] && rows=$(( N < JS_ROWS ? N : JS_ROWS ))
    run() { FERRY_CACHE_DIR=$cache "$FERRY_BIN" --config "$TMP/ferry.toml" plugin bench "$TMP/$lang.wasm" --json "$@"; }
    log "$lang: first start"
    cold=$(run --rows 1000 --repeat 1)
    log "$lang: cached start, $rows rows"
    warm=$(run --rows "$rows")
    size=$(awk -v b="$(stat -c %s "$TMP/$lang.wasm")" 'BEGIN { printf "%.1f", b / 1048576 }')
    rate=$(jq -r .rows_per_second <<<"$warm")
    jq -c --arg lang "$lang" --argjson cold "$(jq .load_seconds <<<"$cold")" '. + {lang: $lang, cold_load_seconds: $cold}' \
        <<<"$warm" >>"$results"
    printf '| %s | %s | %.2f | %.2f | %.0f | %.3f |\n' "$lang" "$size" \
        "$(jq .load_seconds <<<"$cold")" "$(jq '.load_seconds + .instantiate_seconds' <<<"$warm")" "$rate" \
        "$(awk -v a="$rate" -v b="$native_rate" 'BEGIN { print a / b }')"
done
log "results in $results"
