#!/usr/bin/env bash
# ferry's quickstart on the embedded default (SQLite, nothing to install):
# creates a legacy database with the seed's users and their edge cases,
# builds the plugin and ferry, then checks, migrates, validates and shows the
# dead letters.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

echo "==> building the plugin (Rust → wasm32-wasip2 component) and ferry"
rustup target add wasm32-wasip2 >/dev/null
(cd plugins && cargo build --release --quiet --target wasm32-wasip2 -p transform-user)
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

echo; echo "==> the new users table ($FERRY_QUICKSTART_DIR/new.db)"
python3 - "$FERRY_QUICKSTART_DIR/new.db" <<'PY'
import sqlite3, sys
for row in sqlite3.connect(sys.argv[1]).execute("SELECT id, first_name, last_name, email, created_at, settings FROM users ORDER BY rowid"):
    print(" | ".join(map(str, row)))
PY
