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
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-server redis-tools)
command -v rabbitmq-server >/dev/null 2>&1 || need_apt+=(rabbitmq-server)
command -v mosquitto >/dev/null 2>&1 || need_apt+=(mosquitto)
if ((${#need_apt[@]})); then
  log "installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! python3 -c 'import pyarrow' >/dev/null 2>&1; then
  log "installing pyarrow"
  python3 -m pip install -q pyarrow
fi
# the HTTP API tests read /metrics with the Prometheus client's own parser
if ! python3 -c 'import prometheus_client' >/dev/null 2>&1; then
  log "installing prometheus_client"
  python3 -m pip install -q prometheus_client
fi

# the Iceberg tests read tables back with pyiceberg: its SQL catalog on SQLite and on
# PostgreSQL (psycopg2), data files through pyarrow (local and S3)
if ! python3 -c 'import pyiceberg.catalog.sql, psycopg2' >/dev/null 2>&1; then
  log "installing pyiceberg"
  python3 -m pip install -q 'pyiceberg[sql-sqlite,sql-postgres,pyarrow]'
fi

# the NATS tests check what they publish and read with the NATS project's Python client
if ! python3 -c 'import paho.mqtt.client' >/dev/null 2>&1; then
  log "installing paho-mqtt"
  python3 -m pip install -q 'paho-mqtt>=2'
fi
if ! python3 -c 'import pika' >/dev/null 2>&1; then
  log "installing pika"
  python3 -m pip install -q pika
fi
if ! python3 -c 'import nats' >/dev/null 2>&1; then
  log "installing nats-py"
  python3 -m pip install -q nats-py
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
# CDC streams over a replication connection, which pg_hba.conf must allow on its own line
hba="$(psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'SHOW hba_file')"
if ! grep -Eq '^host[[:space:]]+replication[[:space:]]+all[[:space:]]+127\.0\.0\.1/32' "$hba"; then
  log "allowing replication connections from loopback (pg_hba.conf)"
  printf 'host replication all 127.0.0.1/32 trust\n' >>"$hba"
  psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'SELECT pg_reload_conf()' >/dev/null
fi
export SLUICE_TEST_PG="${SLUICE_TEST_PG:-postgres://postgres@127.0.0.1:5432/test}"

# S3: the moto server speaks the S3 API on loopback; a second one checks credentials
# (INITIAL_NO_AUTH_ACTION_COUNT=0), for the wrong-credentials test. 5.2.5 or later:
# 5.2.1 answers CompleteMultipartUpload with a root element the AWS SDK rejects.
if ! python3 -c 'import sys, boto3, moto; sys.exit(tuple(map(int, moto.__version__.split(".")[:3])) < (5, 2, 5))' >/dev/null 2>&1; then
  log "installing moto (S3 API server) and boto3"
  python3 -m pip install -q 'moto[server]>=5.2.5' boto3
fi
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
start_moto() {
  local port=$1
  shift
  up "$port" && return 0
  log "starting the S3 API server (moto) on port $port"
  mkdir -p "$CARGO_TARGET_DIR"
  env "$@" setsid nohup python3 -m moto.server -H 127.0.0.1 -p "$port" \
    >"$CARGO_TARGET_DIR/moto-$port.log" 2>&1 </dev/null &
  for _ in $(seq 1 60); do up "$port" && return 0; sleep 0.5; done
  echo "moto did not start on port $port; see $CARGO_TARGET_DIR/moto-$port.log" >&2
  return 1
}
start_moto 9555
start_moto 9556 INITIAL_NO_AUTH_ACTION_COUNT=0
export SLUICE_TEST_S3="${SLUICE_TEST_S3:-http://127.0.0.1:9555}"

# Kafka: the tests start librdkafka's mock cluster in their own process; Python
# confluent-kafka (its own librdkafka) produces and reads messages to check ours.
if ! python3 -c 'import confluent_kafka' >/dev/null 2>&1; then
  log "installing confluent-kafka"
  python3 -m pip install -q confluent-kafka
fi
# Avro: fastavro writes and reads messages to check ours; the test schema registry
# (integration-tests/schema_registry.py, started by the tests) checks compatibility
# with the Apache Avro library.
if ! python3 -c 'import fastavro, avro.compatibility' >/dev/null 2>&1; then
  log "installing fastavro and avro"
  python3 -m pip install -q fastavro avro
fi
export SLUICE_TEST_S3_AUTH="${SLUICE_TEST_S3_AUTH:-http://127.0.0.1:9556}"
# NATS with JetStream: the machine's own on 4222, started when it is down
if ! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
  log "starting nats-server (JetStream)"
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server)" -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  for _ in $(seq 1 30); do (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break; sleep 1; done
fi
export SLUICE_TEST_NATS="${SLUICE_TEST_NATS:-nats://127.0.0.1:4222}"
if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
  log "starting rabbitmq-server"
  rabbitmq-server -detached
  for _ in $(seq 1 60); do (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && break; sleep 1; done
fi
# MariaDB: the machine's own on 3306 (the mysql tests check with its `mariadb` client)
command -v mariadb >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-client >/dev/null; }
if ! mariadb -h 127.0.0.1 -P 3306 -u root -e 'SELECT 1' >/dev/null 2>&1; then
  log "starting mariadbd"
  start-stop-daemon --start --oknodo --background --exec "$(command -v mariadbd)"
  for _ in $(seq 1 60); do mariadb -h 127.0.0.1 -P 3306 -u root -e 'SELECT 1' >/dev/null 2>&1 && break; sleep 1; done
fi
mariadb -h 127.0.0.1 -P 3306 -u root -e 'CREATE DATABASE IF NOT EXISTS test'
export SLUICE_TEST_MYSQL_PORT="${SLUICE_TEST_MYSQL_PORT:-3306}"
# and a private one with the binlog on (row format, full metadata) for the CDC tests; it
# refuses LOAD DATA LOCAL INFILE, so the sink's INSERT path is tested there too
binlog_dir="$CARGO_TARGET_DIR/mariadb-binlog"
if ! mariadb -h 127.0.0.1 -P 3307 -u root -e 'SELECT 1' >/dev/null 2>&1; then
  log "starting a private mariadbd with the binlog on (port 3307)"
  if [[ ! -d "$binlog_dir/data/mysql" ]]; then
    mkdir -p "$binlog_dir"
    mariadb-install-db --no-defaults --datadir="$binlog_dir/data" --user=root \
      --auth-root-authentication-method=normal >"$binlog_dir/install.log" 2>&1
  fi
  setsid nohup mariadbd --no-defaults --datadir="$binlog_dir/data" --port=3307 --bind-address=127.0.0.1 \
    --socket="$binlog_dir/sock" --pid-file="$binlog_dir/pid" --log-error="$binlog_dir/error.log" --user=root \
    --log-bin=binlog --binlog-format=ROW --binlog-row-metadata=FULL --server-id=7 --local-infile=0 \
    </dev/null >/dev/null 2>&1 &
  for _ in $(seq 1 60); do mariadb -h 127.0.0.1 -P 3307 -u root -e 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.5; done
fi
mariadb -h 127.0.0.1 -P 3307 -u root -e 'CREATE DATABASE IF NOT EXISTS test'
export SLUICE_TEST_MYSQL_BINLOG_PORT="${SLUICE_TEST_MYSQL_BINLOG_PORT:-3307}"
if ! redis-cli -p 6379 PING 2>/dev/null | grep -q PONG; then
  log "starting redis-server"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 30); do redis-cli -p 6379 PING 2>/dev/null | grep -q PONG && break; sleep 1; done
fi

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
