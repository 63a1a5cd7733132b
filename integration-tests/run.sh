#!/usr/bin/env bash
# The one command that runs the whole test suite on a fresh machine: installs the
# clients the tests verify with, starts the services they need, builds the real
# `sluice` binary and runs every test. Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
export CARGO_TERM_COLOR=never

log() { printf '==> %s\n' "$*"; }

# --- clients the tests verify results with (not written by this project) ---
need_apt=()
command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
if ((${#need_apt[@]})); then
  log "installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! python3 -c 'import pyarrow' >/dev/null 2>&1; then
  log "installing pyarrow"
  python3 -m pip install -q pyarrow
fi

# --- services the tests talk to ---
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
psql -h 127.0.0.1 -U postgres -d postgres -Atqc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE test"
if [[ "$(psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'SHOW wal_level')" != logical ]]; then
  log "setting wal_level = logical for the CDC tests (restarts PostgreSQL)"
  psql -h 127.0.0.1 -U postgres -d postgres -qc "ALTER SYSTEM SET wal_level = logical"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main restart
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
export SLUICE_TEST_PG="${SLUICE_TEST_PG:-postgres://postgres@127.0.0.1:5432/test}"

# --- build and static checks ---
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
log "building the sluice binary and the plugin libraries the tests load"
cargo build -p runtime --bin sluice --quiet
cargo build -p sluice-template -p sluice-testplug --lib --quiet

# --- the suite ---
log "running the tests"
cargo test --workspace --quiet -- --test-threads 2
