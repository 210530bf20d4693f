#!/usr/bin/env bash
# bench/run.sh — ferry against the SQL-in-COPY baseline, side by side, in one run.
#
# Usage:  bench/run.sh [N ...]           (default: 100000 1000000; 100k and 1M work too)
#
# For every N:
#   1. ferry_bench_src   fresh legacy `users` table with N seed-shaped rows
#                        (bench/seed.sql: set-based, deterministic)
#   2. SQL baseline      psql \copy (SELECT <transform in SQL>) | psql \copy users
#                        into a fresh ferry_bench_sql (bench/baseline.sql)
#   3. ferry migrate     into a fresh ferry_bench_ferry, under /usr/bin/time -v
#                        (`[source] table` + `[plugin]`: one [[tables]] entry)
#   4. ferry validate    against the same databases, under /usr/bin/time -v
#   5. cross-check       the two target tables must hold the same rows
# then prints one markdown table and writes bench/out/results-<N>.json (JSON lines).
#
# Environment:
#   FERRY_BIN     ferry binary (default target/release/ferry; built if missing)
#   FERRY_PLUGIN  transform plugin (default plugins/target/wasm32-wasip2/release/transform_user.wasm;
#                 built when missing, and rebuilt whenever FERRY_BIN is built)
#   BATCH_SIZE    [migrate] batch_size in the generated ferry.toml (default 5000, ferry's own)
#   SKIP_FERRY=1  run only the data generation and the SQL baseline
#   KEEP=1        keep the bench databases at the end (default: dropped)
#   PGHOST / PGPORT / PGUSER   default 127.0.0.1 / 5432 / postgres (trust auth)
#
# rows/s is always SOURCE rows (N) / wall-clock seconds, for every pipeline:
# the baseline skips the rows it cannot transform and ferry dead-letters them,
# so both are credited with reading all N. Wall time is `date +%s.%N` around
# the whole pipeline (process start-up included).
#
# Peak RSS: ferry's is its own process (/usr/bin/time -v "Maximum resident set
# size"). The baseline's is the larger of its two psql clients; neither figure
# includes the PostgreSQL server backends, which do most of the baseline's work.
#
# Exit status: 0 when every step ran (a validate mismatch or a cross-check
# difference is reported, not fatal); non-zero, with a message, when a step
# failed.

set -euo pipefail

# --- settings ------------------------------------------------------------------

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
OUT_DIR=$BENCH_DIR/out

export PGHOST=${PGHOST:-127.0.0.1}
export PGPORT=${PGPORT:-5432}
export PGUSER=${PGUSER:-postgres}
# Every session in UTC: the legacy `timestamp` values are UTC, and loading them
# into `timestamptz` must not shift them by a local offset.
export PGTZ=UTC

FERRY_BIN=${FERRY_BIN:-target/release/ferry}
case $FERRY_BIN in /*) ;; *) FERRY_BIN=$ROOT/$FERRY_BIN ;; esac
FERRY_PLUGIN=${FERRY_PLUGIN:-$ROOT/plugins/target/wasm32-wasip2/release/transform_user.wasm}
case $FERRY_PLUGIN in /*) ;; *) FERRY_PLUGIN=$ROOT/$FERRY_PLUGIN ;; esac
BATCH_SIZE=${BATCH_SIZE:-5000}  # ferry's default (settings::DEFAULT_BATCH_SIZE)
SKIP_FERRY=${SKIP_FERRY:-0}
KEEP=${KEEP:-0}

DB_SRC=ferry_bench_src
DB_SQL=ferry_bench_sql
DB_FERRY=ferry_bench_ferry

# --- helpers -------------------------------------------------------------------

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[bench %s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

# psql without ~/.psqlrc, quiet, stopping at the first error.
pg() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }

now() { date +%s.%N; }
seconds_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print "0" }'; }
kb_to_mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# "100k" → 100000, "1M" → 1000000, "250000" → 250000.
parse_n() {
    local raw=$1 num mult=1
    case $raw in
        *[kK]) num=${raw%[kK]}; mult=1000 ;;
        *[mM]) num=${raw%[mM]}; mult=1000000 ;;
        *) num=$raw ;;
    esac
    [[ $num =~ ^[0-9]+$ ]] && (( num > 0 )) || die "not a row count: '$raw' (expected e.g. 100000, 100k or 1M)"
    echo $(( num * mult ))
}

# Peak RSS in KB from a /usr/bin/time -v report.
rss_kb_from_time_v() { awk -F': *' '/Maximum resident set size/ { print $2 }' "$1"; }

# A database that exists, is empty, and that nobody is connected to.
recreate_db() {
    pg -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" \
        || die "cannot drop database $1"
    pg -d postgres -c "CREATE DATABASE $1 TEMPLATE template0 ENCODING 'UTF8'" \
        || die "cannot create database $1"
}

# A fresh target database with the new `users` table.
recreate_target() {
    recreate_db "$1"
    pg -d "$1" -c "CREATE TABLE users (
            id         text PRIMARY KEY,
            first_name text NOT NULL,
            last_name  text NOT NULL,
            email      text NOT NULL,
            created_at timestamptz NOT NULL,
            settings   jsonb NOT NULL
        )" || die "cannot create the users table in $1"
}

# Flush dirty buffers left by the previous step, so that a pipeline does not
# pay for the checkpoint of the one before it.
checkpoint() { pg -d postgres -c CHECKPOINT || die "CHECKPOINT failed"; }

# Order-independent fingerprint of a target table: "<rows> <sum of row hashes>".
fingerprint() {
    psql -X -At -v ON_ERROR_STOP=1 -d "$1" -c "
        SELECT count(*) || ' ' || coalesce(sum(hashtextextended(concat_ws(E'\x1f',
                   id, first_name, last_name, email, created_at::text, settings::text), 0)::numeric), 0)
        FROM users"
}

# ferry's --json output as a JSON value to embed in our results: the document
# itself, an array when it printed several JSON lines, a string otherwise.
embed_output() {
    local file=$1
    if [[ ! -s $file ]]; then
        echo null
    elif jq -e -s 'length == 1' "$file" >/dev/null 2>&1; then
        jq -c '.' "$file"
    elif jq -s '.' "$file" >/dev/null 2>&1; then
        jq -c -s '.' "$file"
    else
        tail -c 4000 "$file" | jq -R -s '.'
    fi
}

# One result: a JSON line in bench/out/results-<N>.json and a table row.
TABLE_ROWS=()
record() {
    # record N pipeline seconds peak_rss_kb("" if unknown) rows_out status exit_code note output_json
    local n=$1 pipeline=$2 secs=$3 rss_kb=$4 rows_out=$5 status=$6 code=$7 note=$8 output=${9:-null}
    local rps rss_mb rss_json
    rps=$(rate "$n" "$secs")
    if [[ -n $rss_kb ]]; then rss_mb=$(kb_to_mb "$rss_kb"); rss_json=$rss_mb; else rss_mb=n/a; rss_json=null; fi
    jq -c -n \
        --argjson n "$n" --arg pipeline "$pipeline" --argjson seconds "$secs" \
        --argjson rows_per_s "$rps" --argjson peak_rss_mb "$rss_json" \
        --argjson rows_out "${rows_out:-null}" --arg status "$status" --argjson exit_code "$code" \
        --arg note "$note" --argjson batch_size "$BATCH_SIZE" --arg commit "$GIT_COMMIT" \
        --arg started_at "$STARTED_AT" --argjson output "$output" \
        '{n: $n, pipeline: $pipeline, seconds: $seconds, rows_per_s: $rows_per_s,
          peak_rss_mb: $peak_rss_mb, rows_out: $rows_out, status: $status, exit_code: $exit_code,
          note: $note, batch_size: $batch_size, commit: $commit, started_at: $started_at,
          output: $output}' >>"$OUT_DIR/results-$n.json"
    TABLE_ROWS+=("| $n | $pipeline | $secs | $rps | $rss_mb | ${rows_out:--} | $status |")
}

# ferry migrate with CONFIG into a fresh DB (the new `users` table made
# beforehand, as for the baseline), timed and recorded as PIPELINE.
run_migrate() {
    local n=$1 pipeline=$2 config=$3 db=$4 logname=$5 secs_sql=$6 rc=0 t0 t1 secs status rows
    log "N=$n: $pipeline"
    recreate_target "$db"
    checkpoint
    t0=$(now)
    # Run from the temporary directory so any local state ferry keeps does not
    # leak into the repository or into the next N.
    (cd "$TMP" && /usr/bin/time -v -o "$TMP/$logname.time" \
        "$FERRY_BIN" migrate --config "$config" --json >"$LOGS/$logname.out" 2>"$LOGS/$logname.err") || rc=$?
    t1=$(now)
    secs=$(seconds_between "$t0" "$t1")
    cp "$TMP/$logname.time" "$LOGS/$logname.time" 2>/dev/null || true
    case $rc in
        0) status=ok ;;
        4) status="ok (dead-lettered rows)" ;;
        *) tail -n 30 "$LOGS/$logname.err" >&2
           die "N=$n: $pipeline exited with $rc (stderr above; logs in $LOGS)" ;;
    esac
    rows=$(psql -X -At -v ON_ERROR_STOP=1 -d "$db" -c 'SELECT count(*) FROM users') \
        || die "cannot count $db.users"
    record "$n" "$pipeline" "$secs" "$(rss_kb_from_time_v "$TMP/$logname.time")" "$rows" \
        "$status" "$rc" "dead-lettered or rejected: $((n - rows))" "$(embed_output "$LOGS/$logname.out")"
    log "N=$n: $pipeline $secs s, $(rate "$n" "$secs") rows/s, $rows rows written (exit $rc)"
    SUMMARY+=("N=$n: $pipeline took $(awk -v f="$secs" -v b="$secs_sql" 'BEGIN { printf "%.2f", f / b }')× the SQL baseline's time ($secs s vs $secs_sql s)")
}

# --- clean-up ------------------------------------------------------------------

CONNECTED=0
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench.XXXXXX")
cleanup() {
    local rc=$?
    if [[ $CONNECTED != 1 ]]; then
        :   # never reached the server: nothing to drop
    elif [[ $KEEP == 1 ]]; then
        log "KEEP=1: leaving databases $DB_SRC, $DB_SQL, $DB_FERRY"
    else
        for db in "$DB_SRC" "$DB_SQL" "$DB_FERRY"; do
            psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 \
                || log "warning: could not drop $db"
        done
    fi
    rm -rf "$TMP"
    if (( rc != 0 )); then log "FAILED (exit $rc)"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- pre-flight ----------------------------------------------------------------

SIZES=()
if (( $# == 0 )); then set -- 100000 1000000; fi
for raw in "$@"; do SIZES+=("$(parse_n "$raw")"); done

for tool in psql jq awk; do
    command -v "$tool" >/dev/null || die "'$tool' is required and not on PATH"
done
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) is required for peak RSS"
pg -d postgres -c 'SELECT 1' >/dev/null \
    || die "cannot connect to PostgreSQL at $PGHOST:$PGPORT as $PGUSER"
CONNECTED=1
[[ $(psql -X -At -d postgres -c "SELECT count(*) FROM pg_collation WHERE collname = 'und-x-icu'") == 1 ]] \
    || die "the server has no ICU collation \"und-x-icu\" (needed for the baseline's Unicode lower())"

GIT_COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none)
STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
mkdir -p "$OUT_DIR"
# Results of this run only (an N given twice appends two lines to its file).
for N in "${SIZES[@]}"; do rm -f "$OUT_DIR/results-$N.json"; done

if [[ $SKIP_FERRY != 1 ]]; then
    if [[ ! -e $FERRY_BIN ]]; then
        command -v cargo >/dev/null || die "$FERRY_BIN does not exist and cargo is not on PATH"
        log "building ferry (cargo build --release -p ferry)"
        (cd "$ROOT" && cargo build --release -p ferry) || die "building ferry failed"
        BUILD_PLUGIN=1
    fi
    if [[ ${BUILD_PLUGIN:-0} == 1 || ! -e $FERRY_PLUGIN ]]; then
        command -v cargo >/dev/null || die "$FERRY_PLUGIN does not exist and cargo is not on PATH"
        log "building the transform-user plugin (wasm32-wasip2)"
        (cd "$ROOT/plugins" && cargo build --release --target wasm32-wasip2 -p transform-user) \
            || die "building the transform-user plugin failed"
    fi
    [[ -x $FERRY_BIN ]] || die "no ferry binary at $FERRY_BIN (set FERRY_BIN, or check CARGO_TARGET_DIR)"
    [[ -f $FERRY_PLUGIN ]] || die "no plugin at $FERRY_PLUGIN (build it: cd plugins && cargo build --release --target wasm32-wasip2 -p transform-user)"
    FERRY_PLUGIN=$(cd "$(dirname "$FERRY_PLUGIN")" && pwd)/$(basename "$FERRY_PLUGIN")
fi

log "PostgreSQL: $(psql -X -At -d postgres -c 'SHOW server_version') at $PGHOST:$PGPORT; $(nproc) CPUs; commit $GIT_COMMIT"
log "sizes: ${SIZES[*]}; ferry: $([[ $SKIP_FERRY == 1 ]] && echo skipped || echo "$FERRY_BIN")"

# --- the runs ------------------------------------------------------------------

SUMMARY=()
for N in "${SIZES[@]}"; do
    LOGS=$OUT_DIR/$N
    rm -rf "$LOGS"
    mkdir -p "$LOGS"

    # 1. Source ------------------------------------------------------------------
    log "N=$N: generating $DB_SRC"
    recreate_db "$DB_SRC"
    t0=$(now)
    pg -d "$DB_SRC" -v n="$N" -f "$BENCH_DIR/seed.sql" || die "seeding $DB_SRC failed"
    log "N=$N: seeded $N rows in $(seconds_between "$t0" "$(now)") s"
    # Defines try_jsonb() and the view bench_users_transformed; not timed.
    pg -d "$DB_SRC" -f "$BENCH_DIR/baseline.sql" || die "loading bench/baseline.sql failed"

    # 2. SQL baseline -------------------------------------------------------------
    # Two psql clients joined by a pipe; the transform runs in the source
    # backend, jsonb/timestamptz parsing and the PK in the target backend.
    # Its rows/s = N source rows / wall time, although it writes only the rows
    # it can transform (the others are silently skipped: it cannot dead-letter).
    log "N=$N: SQL baseline (psql \\copy | psql \\copy)"
    recreate_target "$DB_SQL"
    checkpoint
    t0=$(now)
    if ! /usr/bin/time -f '%M' -o "$TMP/sql-out.rss" \
            psql -X -v ON_ERROR_STOP=1 -d "$DB_SRC" \
                 -c '\copy (SELECT * FROM bench_users_transformed) TO pstdout' \
         | /usr/bin/time -f '%M' -o "$TMP/sql-in.rss" \
            psql -X -v ON_ERROR_STOP=1 -d "$DB_SQL" \
                 -c '\copy users FROM pstdin' >"$LOGS/baseline.out" 2>"$LOGS/baseline.err"
    then
        cat "$LOGS/baseline.err" >&2
        die "N=$N: the SQL baseline pipeline failed"
    fi
    t1=$(now)
    secs=$(seconds_between "$t0" "$t1")
    rows_sql=$(awk '/^COPY [0-9]+/ { print $2 }' "$LOGS/baseline.out")
    [[ -n $rows_sql ]] || die "N=$N: the baseline did not report a COPY row count"
    rss_sql=$(tail -n1 "$TMP/sql-out.rss"; tail -n1 "$TMP/sql-in.rss")
    rss_sql=$(sort -n <<<"$rss_sql" | tail -n1)
    record "$N" sql-baseline "$secs" "$rss_sql" "$rows_sql" ok 0 \
        "skipped $((N - rows_sql)) rows it cannot transform; RSS = larger psql client"
    log "N=$N: baseline $secs s, $(rate "$N" "$secs") rows/s, $rows_sql rows written"
    secs_sql=$secs

    if [[ $SKIP_FERRY == 1 ]]; then
        log "N=$N: SKIP_FERRY=1, skipping ferry"
        continue
    fi

    # 3. ferry migrate ------------------------------------------------------------
    CONFIG=$TMP/ferry.toml
    cat >"$CONFIG" <<EOF
name = "bench"

[source]
url = "postgres://$PGUSER@$PGHOST:$PGPORT/$DB_SRC"
table = "users"

[target]
url = "postgres://$PGUSER@$PGHOST:$PGPORT/$DB_FERRY"
table = "users"

[plugin]
path = "$FERRY_PLUGIN"

[migrate]
batch_size = $BATCH_SIZE
EOF
    cp "$CONFIG" "$LOGS/ferry.toml"
    run_migrate "$N" ferry-migrate "$CONFIG" "$DB_FERRY" migrate "$secs_sql"

    # 4. ferry validate -----------------------------------------------------------
    log "N=$N: ferry validate"
    rc=0
    t0=$(now)
    (cd "$TMP" && /usr/bin/time -v -o "$TMP/validate.time" \
        "$FERRY_BIN" validate --config "$CONFIG" --json >"$LOGS/validate.out" 2>"$LOGS/validate.err") || rc=$?
    t1=$(now)
    secs=$(seconds_between "$t0" "$t1")
    cp "$TMP/validate.time" "$LOGS/validate.time" 2>/dev/null || true
    case $rc in
        0) status=ok ;;
        3) status=MISMATCH; log "N=$N: ferry validate reports a MISMATCH (see $LOGS/validate.out)" ;;
        *) tail -n 30 "$LOGS/validate.err" >&2
           die "N=$N: ferry validate exited with $rc (stderr above; logs in $LOGS)" ;;
    esac
    record "$N" ferry-validate "$secs" "$(rss_kb_from_time_v "$TMP/validate.time")" "" \
        "$status" "$rc" "rows/s = source rows checked / s" "$(embed_output "$LOGS/validate.out")"
    log "N=$N: ferry validate $secs s (exit $rc)"

    # 5. Cross-check: two independent implementations of the seed's transform
    #    should have written the same rows. Informational: a difference is
    #    reported with a sample, it does not fail the run.
    fp_sql=$(fingerprint "$DB_SQL") || die "cannot fingerprint $DB_SQL"
    for db in "$DB_FERRY"; do
        fp_ferry=$(fingerprint "$db") || die "cannot fingerprint $db"
        if [[ $fp_sql == "$fp_ferry" ]]; then
            SUMMARY+=("N=$N: $db and the SQL target hold identical rows (${fp_sql%% *})")
        else
            dump='\copy (SELECT id, first_name, last_name, email, created_at, settings FROM users ORDER BY id) TO pstdout'
            psql -X -d "$DB_SQL" -c "$dump" >"$TMP/sql.rows" || die "cannot dump $DB_SQL"
            psql -X -d "$db" -c "$dump" >"$TMP/ferry.rows" || die "cannot dump $db"
            diff "$TMP/sql.rows" "$TMP/ferry.rows" >"$LOGS/$db.diff" || true
            SUMMARY+=("N=$N: $db and the SQL target DIFFER (rows: sql ${fp_sql%% *}, ferry ${fp_ferry%% *}); diff in $LOGS/$db.diff")
            log "N=$N: targets differ; first lines of the diff (< sql, > $db):"
            head -n 10 "$LOGS/$db.diff" >&2
        fi
    done
done

# --- report --------------------------------------------------------------------

echo
echo "| N | pipeline | seconds | rows/s | peak RSS MB | rows written | status |"
echo "|---:|---|---:|---:|---:|---:|---|"
printf '%s\n' "${TABLE_ROWS[@]}"
echo
echo "rows/s = source rows / wall-clock seconds. Baseline RSS = larger of its two psql"
echo "clients (server backends not counted). Results: $OUT_DIR/results-<N>.json"
if (( ${#SUMMARY[@]} > 0 )); then
    echo
    printf -- '- %s\n' "${SUMMARY[@]}"
fi
