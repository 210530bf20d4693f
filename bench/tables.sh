#!/usr/bin/env bash
# bench/tables.sh — copying a whole database with no plugin: ferry migrate
# against pgcopydb clone and pg_dump -Fd | pg_restore, side by side, in one run.
#
# Usage:  bench/tables.sh [SCALE]      (default 1: ~2.2M shop rows + pgbench -s 20)
#
#   1. ferry_tbench_src   a generated shop (schema `shop`: 5 tables with foreign
#                         keys, a composite key, numeric, uuid, jsonb, arrays,
#                         timestamptz, bytea, text; secondary indexes) and
#                         `pgbench -i -s 20` (schema public)
#   2. ferry migrate      source.include = ["shop.*", "public.*"] (pgbench_history
#                         has no key and is empty: keyless = "ctid") into a fresh
#                         database, workers = 2, the schema copied (the default)
#   3. pgcopydb clone     --table-jobs 2 --index-jobs 2 into a fresh database
#   4. pg_dump -Fd -j 2 | pg_restore -j 2 into a fresh database
#   5. content check      every table's rows (md5 of their text, in key order)
#                         equal to the source's, and `pg_dump --schema-only`
#                         equal to the source's, for each of the three targets
# then prints one markdown table. The PostgreSQL server is the local one,
# durable (fsync on, synchronous_commit on): check `SHOW fsync` yourself.
#
# Environment: FERRY_BIN (default target/release/ferry, built if missing),
# PGHOST/PGPORT/PGUSER (default 127.0.0.1/5432/postgres), KEEP=1 keeps the
# databases.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
SCALE=${1:-1}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres} PGTZ=UTC
FERRY_BIN=${FERRY_BIN:-$ROOT/target/release/ferry}
KEEP=${KEEP:-0}
SRC=ferry_tbench_src
BASE="postgres://$PGUSER@$PGHOST:$PGPORT"
TABLES="shop.customers shop.products shop.orders shop.order_items shop.events public.pgbench_accounts public.pgbench_branches public.pgbench_tellers"

command -v pgcopydb >/dev/null || { echo "pgcopydb is not installed (apt-get install pgcopydb)" >&2; exit 1; }
[ -x "$FERRY_BIN" ] || (cd "$ROOT" && cargo build --release -p ferry)

fresh() { psql -q -d postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

echo "==> generating $SRC (scale $SCALE)" >&2
fresh $SRC
psql -q -d $SRC -v scale="$SCALE" <<'SQL'
CREATE SCHEMA shop;
CREATE TABLE shop.customers (id bigint PRIMARY KEY, email text NOT NULL, name text, joined timestamptz NOT NULL,
    tags text[]);
CREATE TABLE shop.products (sku text PRIMARY KEY, price numeric(10, 2) NOT NULL, doc jsonb, image bytea);
CREATE TABLE shop.orders (id uuid PRIMARY KEY, customer_id bigint NOT NULL REFERENCES shop.customers,
    placed date NOT NULL, total numeric(12, 2) NOT NULL, note text);
CREATE TABLE shop.order_items (order_id uuid NOT NULL REFERENCES shop.orders, line int NOT NULL,
    sku text NOT NULL REFERENCES shop.products, qty int NOT NULL, PRIMARY KEY (order_id, line));
CREATE TABLE shop.events (id bigint PRIMARY KEY, at timestamptz NOT NULL, payload jsonb NOT NULL);
INSERT INTO shop.customers SELECT g, 'user' || g || '@example.com', 'Name ' || g,
    '2015-01-01'::timestamptz + g * interval '7 minutes 1.000001 seconds', ARRAY['t' || g % 7, 'vip']
    FROM generate_series(1, 200000 * :scale) g;
INSERT INTO shop.products SELECT 'SKU-' || g, (g % 9999) / 7.0 + 0.01, jsonb_build_object('n', g, 'w', g % 13),
    decode(md5(g::text), 'hex') FROM generate_series(1, 10000) g;
INSERT INTO shop.orders SELECT md5('o' || g)::uuid, 1 + g % (200000 * :scale), '2020-01-01'::date + g % 1500,
    (g % 100000) / 100.0, CASE WHEN g % 5 = 0 THEN 'gift wrap' END FROM generate_series(1, 600000 * :scale) g;
INSERT INTO shop.order_items SELECT md5('o' || g)::uuid, l, 'SKU-' || (1 + (g * l) % 10000), 1 + l
    FROM generate_series(1, 600000 * :scale) g, generate_series(1, 2) l;
INSERT INTO shop.events SELECT g, '2024-01-01'::timestamptz + g * interval '1 second',
    jsonb_build_object('kind', 'click', 'n', g, 'path', '/p/' || g % 1000) FROM generate_series(1, 200000 * :scale) g;
CREATE INDEX customers_email ON shop.customers (email);
CREATE INDEX orders_customer ON shop.orders (customer_id);
CREATE INDEX order_items_sku ON shop.order_items (sku);
CREATE INDEX events_at ON shop.events (at);
VACUUM ANALYZE;
SQL
pgbench -q -i -s 20 $SRC >/dev/null 2>&1
psql -q -d $SRC -c "VACUUM ANALYZE"
rows=$(psql -At -d $SRC -c "SELECT sum(n_live_tup)::bigint FROM pg_stat_user_tables WHERE relname <> 'pgbench_history'")
echo "    $rows rows in $(echo "$TABLES" | wc -w) tables" >&2

# --- ferry -------------------------------------------------------------------
fresh ferry_tbench_ferry
dir=$(mktemp -d)
cat > "$dir/ferry.toml" <<EOF
name = "tbench"
[source]
url = "$BASE/$SRC"
include = ["shop.*", "public.*"]
keyless = "ctid"
[target]
url = "$BASE/ferry_tbench_ferry"
[migrate]
workers = 2
EOF
# Each tool starts after a checkpoint: none pays for the WAL another (or
# the generation) left behind.
psql -q -d postgres -c CHECKPOINT
echo "==> ferry migrate" >&2
t0=$(now)
/usr/bin/time -v "$FERRY_BIN" --config "$dir/ferry.toml" migrate --no-progress >"$dir/ferry.out" 2>"$dir/ferry.time"
t1=$(now)
ferry_s=$(elapsed "$t0" "$t1")
ferry_rss=$(awk '/Maximum resident/ { printf "%.0f", $6 / 1024 }' "$dir/ferry.time")

# --- pgcopydb ------------------------------------------------------------------
fresh ferry_tbench_pgcopydb
echo "==> pgcopydb clone" >&2
rm -rf "$dir/pgcopydb"
psql -q -d postgres -c CHECKPOINT
t0=$(now)
pgcopydb clone --source "$BASE/$SRC" --target "$BASE/ferry_tbench_pgcopydb" --table-jobs 2 --index-jobs 2 \
    --dir "$dir/pgcopydb" --no-owner --no-acl >"$dir/pgcopydb.log" 2>&1
t1=$(now)
pgcopydb_s=$(elapsed "$t0" "$t1")

# --- pg_dump | pg_restore --------------------------------------------------------
fresh ferry_tbench_dump
echo "==> pg_dump -Fd -j 2 | pg_restore -j 2" >&2
rm -rf "$dir/dump"
psql -q -d postgres -c CHECKPOINT
t0=$(now)
pg_dump -Fd -j 2 -f "$dir/dump" $SRC
pg_restore -j 2 --no-owner -d ferry_tbench_dump "$dir/dump"
t1=$(now)
dump_s=$(elapsed "$t0" "$t1")

# --- content -------------------------------------------------------------------
echo "==> content check" >&2
digest() {
    local db=$1 out=""
    for t in $TABLES; do
        key=$(psql -At -d $SRC -c "SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.ord) FROM pg_index i \
            CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(n, ord) JOIN pg_attribute a ON a.attrelid = i.indrelid \
            AND a.attnum = k.n WHERE i.indrelid = '$t'::regclass AND i.indisprimary")
        out="$out $(psql -At -d "$db" -c "SELECT md5(string_agg(md5(r::text), '' ORDER BY $key)) FROM $t r")"
    done
    echo "$out"
}
want=$(digest $SRC)
schema() { pg_dump -s --exclude-schema=ferry "$1" | grep -v '^\\\(un\)\?restrict'; }
want_schema=$(schema $SRC)
same() {
    local rows schema
    rows=$([ "$(digest "$1")" = "$want" ] && echo "rows equal" || echo "rows DIFFERENT")
    schema=$([ "$(schema "$1")" = "$want_schema" ] && echo "schema equal" || echo "schema DIFFERENT")
    echo "$rows, $schema"
}
ferry_ok=$(same ferry_tbench_ferry); pgcopydb_ok=$(same ferry_tbench_pgcopydb); dump_ok=$(same ferry_tbench_dump)

rate() { awk -v r="$rows" -v s="$1" 'BEGIN { printf "%.0f", r / s }'; }
echo
echo "| $rows rows, $(echo "$TABLES" | wc -w) tables (shop ×$SCALE + pgbench -s 20) | wall s | rows/s | peak RSS | content |"
echo "|---|---:|---:|---:|---|"
echo "| ferry migrate (workers = 2) | $ferry_s | $(rate "$ferry_s") | $ferry_rss MB | $ferry_ok |"
echo "| pgcopydb clone (2 table jobs, 2 index jobs) | $pgcopydb_s | $(rate "$pgcopydb_s") | — | $pgcopydb_ok |"
echo "| pg_dump -Fd -j 2 + pg_restore -j 2 | $dump_s | $(rate "$dump_s") | — | $dump_ok |"

if [ "$KEEP" != 1 ]; then
    for db in $SRC ferry_tbench_ferry ferry_tbench_pgcopydb ferry_tbench_dump; do
        psql -q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
    done
    rm -rf "$dir"
fi
