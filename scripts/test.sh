#!/usr/bin/env bash
# Runs every test of ferry: formatting, lints, the plugin rules' unit tests,
# the host's unit tests and the end-to-end suite (real PostgreSQL, real
# SQLite, real plugin components built from source).
#
# Needs: rustup (installs the wasm32-wasip2 target), Python 3 with pip
# (installs componentize-py), Node.js with npm (installs componentize-js), PostgreSQL reachable at
# $FERRY_TEST_PG (default postgres://postgres@127.0.0.1:5432, a role that
# may CREATE DATABASE), and NATS with JetStream at $FERRY_TEST_NATS (default
# 127.0.0.1:4222).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> toolchain"
rustup target add wasm32-wasip2 >/dev/null
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# Python plugins are built from source by the tests with componentize-py
# (pinned: the version the SDK and the conformance test were checked with);
# the conformance test's oracle runs on Node (the machine's).
python3 -m pip install --quiet --disable-pip-version-check componentize-py==0.25.1
# JavaScript plugins: componentize-js, pinned by plugins/js/package-lock.json.
(cd plugins/js && npm ci --no-audit --no-fund --silent)

echo "==> format"
cargo fmt --all -- --check
(cd plugins && cargo fmt --all -- --check)

echo "==> plugins (wasm32-wasip2 components, built from source)"
(cd plugins && cargo build --release --target wasm32-wasip2)

echo "==> plugin rules (native unit tests)"
(cd plugins && cargo test -p user-rules --quiet)

echo "==> lints"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "==> host unit tests and the end-to-end suite"
cargo test --workspace
