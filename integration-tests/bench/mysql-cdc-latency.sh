#!/usr/bin/env bash
# MySQL/MariaDB CDC end-to-end latency: a writer commits 1,000-row transactions ten
# times a second (10k changes/s) for DURATION seconds into a MariaDB table with the
# binlog on; each row carries its statement time, and the PostgreSQL target stamps the
# time each row arrives (a trigger). Prints p50/p99/max of arrival - write, and checks
# that every row arrived.
#
#   bash integration-tests/bench/mysql-cdc-latency.sh [DURATION_SECONDS]   # default 20
#   LINGER=5ms bash ...   # the sink batch linger (default 20ms)
# The MariaDB is the test command's private one with the binlog on (127.0.0.1:3307,
# or $MYSQL_BINLOG_PORT).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
SECS="${1:-20}"
PG="${PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
PORT="${MYSQL_BINLOG_PORT:-3307}"
WORK="${BENCH_DIR:-$HOME/.cache/sluice-bench}/mysql-cdc"
rm -rf "$WORK" && mkdir -p "$WORK"
cargo build --release -p runtime --bin sluice --quiet
SLUICE="$CARGO_TARGET_DIR/release/sluice"
q() { psql -X -Atq -d "$PG" -c "$1"; }
my() { mariadb -h 127.0.0.1 -P "$PORT" -u root -N -B test -e "$1"; }
my "DROP TABLE IF EXISTS bench_mycdc_src; CREATE TABLE bench_mycdc_src (id BIGINT PRIMARY KEY, v VARCHAR(20), written DATETIME(6)) DEFAULT CHARSET = utf8mb4"
q "DROP TABLE IF EXISTS bench_mycdc_dst" >/dev/null
q "CREATE TABLE bench_mycdc_dst (id bigint PRIMARY KEY, v text, written timestamp, arrived timestamp)"
q "CREATE OR REPLACE FUNCTION bench_mycdc_arrived() RETURNS trigger LANGUAGE plpgsql AS \$\$ BEGIN NEW.arrived := clock_timestamp() AT TIME ZONE 'UTC'; RETURN NEW; END \$\$"
q "CREATE TRIGGER bench_mycdc_arrived BEFORE INSERT OR UPDATE ON bench_mycdc_dst FOR EACH ROW EXECUTE FUNCTION bench_mycdc_arrived()"
q "DO \$\$ BEGIN IF to_regclass('public.sluice_offsets') IS NOT NULL THEN DELETE FROM sluice_offsets WHERE pipeline = 'bench_mycdc'; END IF; END \$\$"
cat > "$WORK/cdc.toml" <<TOML
name = "bench_mycdc"
[source]
connector = "mysql"
url = "mysql://root@127.0.0.1:$PORT/test"
tables = ["bench_mycdc_src"]
mode = "cdc"
[sink]
connector = "postgres"
url = "$PG"
table = "bench_mycdc_dst"
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
python3 - "$PORT" "$SECS" <<'PY'
import subprocess, sys, time
port, secs = sys.argv[1], int(sys.argv[2])
start = time.time()
for t in range(secs * 10):
    lo = t * 1000
    # the session's time zone is the machine's (UTC here): NOW(6) is the write time
    subprocess.run(["mariadb", "-h", "127.0.0.1", "-P", port, "-u", "root", "test", "-e",
        f"SET time_zone = '+00:00'; INSERT INTO bench_mycdc_src SELECT seq, CONCAT('v', seq), NOW(6) FROM seq_{lo}_to_{lo + 999}"], check=True)
    delay = start + (t + 1) / 10 - time.time()
    if delay > 0:
        time.sleep(delay)
PY
for _ in $(seq 1 60); do
  [[ "$(q 'SELECT count(*) FROM bench_mycdc_dst')" == "$TOTAL" ]] && break
  sleep 1
done
kill -TERM "$PID"; wait "$PID" || true
got=$(q "SELECT count(*) FROM bench_mycdc_dst")
[[ "$got" == "$TOTAL" ]] || { echo "only $got of $TOTAL rows arrived"; cat "$WORK/err.log"; exit 1; }
echo "changes: $TOTAL at 10k/s for ${SECS}s, all arrived"
q "SELECT 'latency ms p50 ' || round((percentile_cont(0.5) WITHIN GROUP (ORDER BY ms))::numeric, 1) || '  p99 ' || round((percentile_cont(0.99) WITHIN GROUP (ORDER BY ms))::numeric, 1) || '  max ' || round(max(ms)::numeric, 1) FROM (SELECT extract(epoch FROM arrived - written) * 1000 AS ms FROM bench_mycdc_dst) x"
my "DROP TABLE bench_mycdc_src"
