#!/usr/bin/env bash
# bench/parallel.sh — the parallel run (ferry sync + ferry sync --reverse)
# measured on two durable throwaway clusters (fsync on, synchronous_commit on,
# wal_level = logical, track_commit_timestamp = on), in one run:
#
#   1. apply rates, side by side: N_TX single-row updates written on the old
#      side with the forward stream stopped, then drained (the forward
#      stream through the seed's transform: the baseline); the same number
#      written on the new side with the reverse stream stopped, then drained
#      (through the seed's inverse, with conflict detection). changes/s.
#   2. lag both ways at once: pgbench at RATE updates/s on each side (disjoint
#      keys) for DURATION s while both streams run, plus PROBES/s probe rows
#      per side. A probe row is stamped with clock_timestamp() where it is
#      written and again by a trigger where it arrives (the same machine's
#      clock, the servers' own): p50 / p99 of arrival − write per direction,
#      computed by PostgreSQL, not by ferry. Conflicts (none expected on
#      disjoint keys) and echoes dropped are read from the reports.
#
# Usage: bench/parallel.sh                 (SEED_ROWS=200000 N_TX=100000 RATE=2000 DURATION=30)
#        UNDO_JOURNAL=false bench/parallel.sh  (both streams without the undo journal)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
OUT_DIR=$BENCH_DIR/out
SEED_ROWS=${SEED_ROWS:-200000}
N_TX=${N_TX:-100000}
RATE=${RATE:-2000}
PROBES=${PROBES:-20}
DURATION=${DURATION:-30}
FERRY_BIN=${FERRY_BIN:-$ROOT/target/release/ferry}
PLUGINS=$ROOT/plugins/target/wasm32-wasip2/release
mkdir -p "$OUT_DIR"

log() { printf '[parallel %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }

source "$BENCH_DIR/release.sh"
release_build "$FERRY_BIN" transform-user user-inverse

BIN=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | tail -n1)
WORK=$(mktemp -d /tmp/ferry-parallel.XXXXXX)
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[[ $(id -u) == 0 ]] && chown postgres "$WORK"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for side in old new; do as_pg "$BIN/pg_ctl" -D "$WORK/$side" -m immediate -w stop >/dev/null 2>&1 || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A durable cluster: PostgreSQL's defaults (fsync, synchronous_commit on).
start_cluster() { # side port
    as_pg "$BIN/initdb" -D "$WORK/$1" -U postgres --auth=trust -E UTF8 >/dev/null
    cat >>"$WORK/$1/postgresql.conf" <<CONF
port = $2
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
wal_level = logical
track_commit_timestamp = on
max_replication_slots = 4
max_wal_senders = 4
shared_buffers = 256MB
max_wal_size = 4GB
CONF
    as_pg "$BIN/pg_ctl" -D "$WORK/$1" -l "$WORK/$1.log" -w start >/dev/null
}
OLD_PORT=$(free_port); start_cluster old "$OLD_PORT"
NEW_PORT=$(free_port); start_cluster new "$NEW_PORT"
old() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$OLD_PORT" -U postgres -d postgres "$@"; }
new() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$NEW_PORT" -U postgres -d postgres "$@"; }

# Probe tables: written on one side, stamped on arrival on the other.
PROBES_DDL="CREATE TABLE probe_o2n (id bigint PRIMARY KEY, sent timestamptz NOT NULL, arrived timestamptz);
CREATE TABLE probe_n2o (id bigint PRIMARY KEY, sent timestamptz NOT NULL, arrived timestamptz);
CREATE SEQUENCE probe_ids;
CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN NEW.arrived := clock_timestamp(); RETURN NEW; END \$\$;"
log "seeding $SEED_ROWS legacy rows in the old cluster (port $OLD_PORT); new cluster on $NEW_PORT"
old -v n="$SEED_ROWS" -f "$BENCH_DIR/seed.sql" >/dev/null
old -c "$PROBES_DDL" -c "CREATE TRIGGER stamp BEFORE INSERT OR UPDATE ON probe_n2o FOR EACH ROW EXECUTE FUNCTION stamp()"
new -c "CREATE TABLE users (id text PRIMARY KEY, first_name text NOT NULL, last_name text NOT NULL,
        email text NOT NULL, created_at timestamptz NOT NULL, settings jsonb NOT NULL)" \
    -c "$PROBES_DDL" -c "CREATE TRIGGER stamp BEFORE INSERT OR UPDATE ON probe_o2n FOR EACH ROW EXECUTE FUNCTION stamp()"

CONFIG=$WORK/ferry.toml
cat >"$CONFIG" <<TOML
name = "par"
[source]
url = "postgres://postgres@127.0.0.1:$OLD_PORT/postgres"
[target]
url = "postgres://postgres@127.0.0.1:$NEW_PORT/postgres"
undo_journal = ${UNDO_JOURNAL:-true}
[[tables]]
name = "users"
plugin = "$PLUGINS/transform_user.wasm"
inverse = "$PLUGINS/user_inverse.wasm"
[[tables]]
name = "probe_o2n"
[[tables]]
name = "probe_n2o"
[reverse]
TOML
ferry() { "$FERRY_BIN" --config "$CONFIG" "$@"; }

log "initial load (forward slot), then the reverse slot"
ferry sync --idle-exit 1 --json >"$WORK/load.json" || [[ $? == 4 ]]
ferry sync --reverse --idle-exit 1 --json >"$WORK/reverse-start.json" || [[ $? == 4 ]]

# --- 1. apply rates, forward (baseline) and reverse ---------------------------
cat >"$WORK/old-update.sql" <<'SQL'
\set id random(1, :half)
UPDATE users SET name = 'Old Bench ' || :id || ' ' || :client_id WHERE id = :id;
SQL
cat >"$WORK/new-update.sql" <<'SQL'
\set id random(:half + 1, :n)
UPDATE users SET last_name = 'New Bench ' || :id || ' ' || :client_id WHERE id = 'user_' || :id;
SQL
HALF=$((SEED_ROWS / 2))
# Runs one direction until idle; its report is $WORK/drain-$1.json. Prints
# "seconds changes" (the idle second not counted).
drain() { # forward|reverse
    local t0 idle=1 args=()
    [[ $1 == reverse ]] && args=(--reverse)
    t0=$(now)
    ferry sync "${args[@]}" --idle-exit "$idle" --json >"$WORK/drain-$1.json" 2>"$WORK/drain-$1.err" || [[ $? == 4 ]]
    echo "$(echo "$(now) - $t0 - $idle" | bc -l) $(jq '.stream.upserts + .stream.deletes + .stream.dead_lettered + .stream.conflicts' "$WORK/drain-$1.json")"
}
log "writing $N_TX updates on the old side (forward stopped)"
"$BIN/pgbench" -h 127.0.0.1 -p "$OLD_PORT" -U postgres -n -c 4 -j 2 -t $((N_TX / 4)) -D half="$HALF" -D n="$SEED_ROWS" \
    -f "$WORK/old-update.sql" postgres >"$WORK/pgbench-old.log" 2>&1
read -r fwd_s fwd_changes < <(drain forward)
log "forward drained $fwd_changes changes in $fwd_s s"
log "writing $N_TX updates on the new side (reverse stopped)"
"$BIN/pgbench" -h 127.0.0.1 -p "$NEW_PORT" -U postgres -n -c 4 -j 2 -t $((N_TX / 4)) -D half="$HALF" -D n="$SEED_ROWS" \
    -f "$WORK/new-update.sql" postgres >"$WORK/pgbench-new.log" 2>&1
read -r rev_s rev_changes < <(drain reverse)
log "reverse drained $rev_changes changes in $rev_s s"
fwd_rate=$(echo "$fwd_changes / $fwd_s" | bc -l)
rev_rate=$(echo "$rev_changes / $rev_s" | bc -l)
# The forward drain's applied rows came back through the reverse stream's
# reader as echoes and were dropped there: counted in its report.
rev_echoes=$(jq '.echo_changes' "$WORK/drain-reverse.json")

# --- 2. lag both ways at once --------------------------------------------------
old -c "TRUNCATE probe_o2n, probe_n2o"
new -c "TRUNCATE probe_o2n, probe_n2o"
# (The binary itself in the background, not the shell function: SIGTERM
# must reach ferry, which then reports.)
"$FERRY_BIN" --config "$CONFIG" sync --json >"$WORK/steady-forward.json" 2>"$WORK/steady-forward.err" & PIDS+=($!); FWD=$!
"$FERRY_BIN" --config "$CONFIG" sync --reverse --json >"$WORK/steady-reverse.json" 2>"$WORK/steady-reverse.err" &
PIDS+=($!); REV=$!
sleep 3
cat >"$WORK/probe-o2n.sql" <<'SQL'
INSERT INTO probe_o2n VALUES (nextval('probe_ids'), clock_timestamp());
SQL
cat >"$WORK/probe-n2o.sql" <<'SQL'
INSERT INTO probe_n2o VALUES (nextval('probe_ids'), clock_timestamp());
SQL
log "both sides: $RATE updates/s each and $PROBES probes/s each, for $DURATION s"
bench_pids=()
"$BIN/pgbench" -h 127.0.0.1 -p "$OLD_PORT" -U postgres -n -c 4 -j 2 -R "$RATE" -T "$DURATION" -D half="$HALF" -D n="$SEED_ROWS" \
    -f "$WORK/old-update.sql" postgres >"$WORK/steady-old.log" 2>&1 & bench_pids+=($!)
"$BIN/pgbench" -h 127.0.0.1 -p "$NEW_PORT" -U postgres -n -c 4 -j 2 -R "$RATE" -T "$DURATION" -D half="$HALF" -D n="$SEED_ROWS" \
    -f "$WORK/new-update.sql" postgres >"$WORK/steady-new.log" 2>&1 & bench_pids+=($!)
"$BIN/pgbench" -h 127.0.0.1 -p "$OLD_PORT" -U postgres -n -c 1 -R "$PROBES" -T "$DURATION" -f "$WORK/probe-o2n.sql" postgres \
    >"$WORK/probe-old.log" 2>&1 & bench_pids+=($!)
"$BIN/pgbench" -h 127.0.0.1 -p "$NEW_PORT" -U postgres -n -c 1 -R "$PROBES" -T "$DURATION" -f "$WORK/probe-n2o.sql" postgres \
    >"$WORK/probe-new.log" 2>&1 & bench_pids+=($!)
wait "${bench_pids[@]}"
sleep 3
kill -TERM "$FWD" "$REV"; wait "$FWD" || true; wait "$REV" || true; PIDS=()
tps_old=$(awk '/^tps/ {printf "%.0f", $3; exit}' "$WORK/steady-old.log")
tps_new=$(awk '/^tps/ {printf "%.0f", $3; exit}' "$WORK/steady-new.log")
lag() { # side table → "p50 p99 arrived sent"
    "$1" -At -c "SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
                        round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1), count(ms), count(*)
                 FROM (SELECT extract(epoch FROM arrived - sent) * 1000 AS ms FROM $2) l" | tr '|' ' '
}
read -r o2n_p50 o2n_p99 o2n_arrived o2n_all < <(lag new probe_o2n)
read -r n2o_p50 n2o_p99 n2o_arrived n2o_all < <(lag old probe_n2o)
conflicts=$(( $(old -At -c "SELECT count(*) FROM ferry.conflicts") + $(new -At -c "SELECT count(*) FROM ferry.conflicts") ))
cp "$WORK/steady-forward.json" "$OUT_DIR/parallel-steady-forward.json"
cp "$WORK/steady-reverse.json" "$OUT_DIR/parallel-steady-reverse.json"
echoes_forward=$(jq '.echo_changes' "$WORK/steady-forward.json" 2>/dev/null || echo n/a)
echoes_reverse=$(jq '.echo_changes' "$WORK/steady-reverse.json" 2>/dev/null || echo n/a)

jq -n --argjson fs "$fwd_s" --argjson fc "$fwd_changes" --argjson rs "$rev_s" --argjson rc "$rev_changes" \
   --arg o50 "$o2n_p50" --arg o99 "$o2n_p99" --arg n50 "$n2o_p50" --arg n99 "$n2o_p99" \
   --arg to "$tps_old" --arg tn "$tps_new" --argjson conflicts "$conflicts" \
   '{drain: {forward: {changes: $fc, seconds: $fs}, reverse: {changes: $rc, seconds: $rs}},
     steady: {updates_per_s_old: $to, updates_per_s_new: $tn, old_to_new_ms: {p50: $o50, p99: $o99},
              new_to_old_ms: {p50: $n50, p99: $n99}, conflicts: $conflicts}}' >"$OUT_DIR/parallel.json"

echo
echo "| measure | value |"
echo "|---|---:|"
printf '| forward drain, old → new through the transform (baseline) | %s changes in %.2f s = **%.0f changes/s** |\n' "$fwd_changes" "$fwd_s" "$fwd_rate"
printf '| reverse drain, new → old through the inverse | %s changes in %.2f s = **%.0f changes/s** |\n' "$rev_changes" "$rev_s" "$rev_rate"
printf '| echoes the reverse reader dropped meanwhile | %s |\n' "$rev_echoes"
printf '| steady updates/s achieved (old, new) | %s, %s |\n' "$tps_old" "$tps_new"
printf '| **old → new lag p50 / p99 (ms, %s of %s probes)** | **%s / %s** |\n' "$o2n_arrived" "$o2n_all" "$o2n_p50" "$o2n_p99"
printf '| **new → old lag p50 / p99 (ms, %s of %s probes)** | **%s / %s** |\n' "$n2o_arrived" "$n2o_all" "$n2o_p50" "$n2o_p99"
printf '| echoes dropped while steady (forward reader, reverse reader) | %s, %s |\n' "$echoes_forward" "$echoes_reverse"
printf '| conflicts recorded, both databases (disjoint keys: none expected) | %s |\n' "$conflicts"
