#!/usr/bin/env bash
# ferry's quickstart on the embedded default (SQLite, nothing to install):
# creates a legacy shop (the seed's users and their edge cases, orders with
# their items in JSON, a lookup table), builds the two plugins and ferry,
# then checks, migrates into the new schema, validates, and shows the result.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

echo "==> building the plugins (Rust → wasm32-wasip2 components) and ferry"
rustup target add wasm32-wasip2 >/dev/null
(cd plugins && cargo build --release --quiet --target wasm32-wasip2 -p transform-user -p split-orders)
cargo build --release --quiet -p ferry
ferry="$root/target/release/ferry"

export FERRY_QUICKSTART_DIR="$root/.ferry-quickstart"
rm -rf "$FERRY_QUICKSTART_DIR" && mkdir -p "$FERRY_QUICKSTART_DIR"
python3 - "$FERRY_QUICKSTART_DIR/legacy.db" examples/quickstart/legacy.sql <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.executescript(open(sys.argv[2], encoding="utf-8").read())
db.commit()
PY
config=examples/quickstart/ferry.toml

echo; echo "==> ferry check"
"$ferry" --config "$config" check

echo; echo "==> ferry migrate"
status=0
"$ferry" --config "$config" migrate || status=$?
# 4 = completed with dead letters (the seed's edge cases are meant to be rejected).
[ "$status" -eq 0 ] || [ "$status" -eq 4 ] || exit "$status"

echo; echo "==> ferry validate"
"$ferry" --config "$config" validate

echo; echo "==> the new schema ($FERRY_QUICKSTART_DIR/new.db)"
python3 - "$FERRY_QUICKSTART_DIR/new.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
for table, order in [("users", "rowid"), ("orders", "id"), ("order_items", "order_id, line"), ("countries", "code")]:
    print(f"-- {table}")
    for row in db.execute(f"SELECT * FROM {table} ORDER BY {order}"):
        print("   " + " | ".join(map(str, row)))
PY
