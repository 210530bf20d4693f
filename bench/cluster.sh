# bench/cluster.sh — sourced by the change-stream benchmarks: a throwaway
# PostgreSQL source cluster (initdb, wal_level = logical) on its own port,
# so the machine's server is not reconfigured. Sets BIN, WORK, PORT, SRC and
# the helpers as_pg and src; stops it and removes WORK on exit (after
# running the caller's `bench_cleanup`, if it defines one).

BIN=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | tail -n1)
WORK=$(mktemp -d /tmp/ferry-bench.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[[ $(id -u) == 0 ]] && chown postgres "$WORK"
cluster_cleanup() {
    declare -F bench_cleanup >/dev/null && bench_cleanup
    as_pg "$BIN/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cluster_cleanup EXIT
as_pg "$BIN/initdb" -D "$WORK/data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
cat >>"$WORK/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
wal_level = logical
max_replication_slots = 4
max_wal_senders = 4
synchronous_commit = off
shared_buffers = 256MB
max_wal_size = 4GB
CONF
as_pg "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null
SRC="postgres://postgres@127.0.0.1:$PORT/postgres"
src() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d postgres "$@"; }
