#!/usr/bin/env bash
# CDC end-to-end latency: a writer commits 1,000-row transactions ten times a second
# (10k changes/s) for DURATION seconds; each row carries its commit time, and the
# target table stamps the time each row arrives (a column default). Prints p50/p99/max
# of arrival - commit, and checks that every row arrived.
#
#   bash integration-tests/bench/cdc-latency.sh [DURATION_SECONDS]   # default 20
#   LINGER=5ms bash ...   # the sink batch linger (default 20ms)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
SECS="${1:-20}"
PG="${PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
WORK="${BENCH_DIR:-$HOME/.cache/sluice-bench}/cdc"
rm -rf "$WORK" && mkdir -p "$WORK"
cargo build --release -p runtime --bin sluice --quiet
SLUICE="$CARGO_TARGET_DIR/release/sluice"
q() { psql -X -Atq -d "$PG" -c "$1"; }
[[ "$(q 'SHOW wal_level')" == logical ]] || { echo "wal_level must be logical"; exit 1; }
q "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'sluice_bench_cdc'" >/dev/null
q "DROP PUBLICATION IF EXISTS sluice_bench_cdc; DROP TABLE IF EXISTS bench_cdc_src, bench_cdc_dst" >/dev/null
q "CREATE TABLE bench_cdc_src (id bigint PRIMARY KEY, v text, committed timestamptz); ALTER TABLE bench_cdc_src REPLICA IDENTITY FULL"
q "CREATE TABLE bench_cdc_dst (id bigint PRIMARY KEY, v text, committed timestamptz, arrived timestamptz)"
# a trigger, not a default: the sink writes every column of its schema, NULLs included
q "CREATE OR REPLACE FUNCTION bench_cdc_arrived() RETURNS trigger LANGUAGE plpgsql AS \$\$ BEGIN NEW.arrived := clock_timestamp(); RETURN NEW; END \$\$"
q "CREATE TRIGGER bench_cdc_arrived BEFORE INSERT OR UPDATE ON bench_cdc_dst FOR EACH ROW EXECUTE FUNCTION bench_cdc_arrived()"
q "DO \$\$ BEGIN IF to_regclass('public.sluice_offsets') IS NOT NULL THEN DELETE FROM sluice_offsets WHERE pipeline = 'bench_cdc'; END IF; END \$\$"
cat > "$WORK/cdc.toml" <<TOML
name = "bench_cdc"
[source]
connector = "postgres"
url = "$PG"
tables = ["bench_cdc_src"]
mode = "cdc"
[sink]
connector = "postgres"
url = "$PG"
table = "bench_cdc_dst"
mode = "upsert"
key = ["id"]
[batch]
linger = "${LINGER:-20ms}"
[checkpoint]
path = "$WORK/state.db"
interval = "100ms"
TOML
"$SLUICE" run --quiet "$WORK/cdc.toml" > "$WORK/out.log" 2> "$WORK/err.log" &
PID=$!
sleep 2
TOTAL=$((SECS * 10 * 1000))
python3 - "$PG" "$SECS" <<'PY'
import subprocess, sys, time
pg, secs = sys.argv[1], int(sys.argv[2])
start = time.time()
for t in range(secs * 10):
    lo = t * 1000
    # statement_timestamp() is the commit time to within the statement's own duration
    subprocess.run(["psql", "-X", "-q", "-d", pg, "-c",
        f"INSERT INTO bench_cdc_src SELECT g, 'v' || g, clock_timestamp() FROM generate_series({lo}, {lo + 999}) g"], check=True)
    delay = start + (t + 1) / 10 - time.time()
    if delay > 0:
        time.sleep(delay)
PY
for _ in $(seq 1 60); do
  [[ "$(q 'SELECT count(*) FROM bench_cdc_dst')" == "$TOTAL" ]] && break
  sleep 1
done
kill -TERM "$PID"; wait "$PID" || true
got=$(q "SELECT count(*) FROM bench_cdc_dst")
[[ "$got" == "$TOTAL" ]] || { echo "only $got of $TOTAL rows arrived"; cat "$WORK/err.log"; exit 1; }
q "SELECT pg_drop_replication_slot('sluice_bench_cdc'); DROP PUBLICATION IF EXISTS sluice_bench_cdc" >/dev/null
echo "changes: $TOTAL at 10k/s for ${SECS}s, all arrived"
q "SELECT 'latency ms p50 ' || round((percentile_cont(0.5) WITHIN GROUP (ORDER BY ms))::numeric, 1) || '  p99 ' || round((percentile_cont(0.99) WITHIN GROUP (ORDER BY ms))::numeric, 1) || '  max ' || round(max(ms)::numeric, 1) FROM (SELECT extract(epoch FROM arrived - committed) * 1000 AS ms FROM bench_cdc_dst) x"
