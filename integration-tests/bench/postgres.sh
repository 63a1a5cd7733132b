#!/usr/bin/env bash
# PostgreSQL throughput against psql \copy, the physical reference, on the same data
# and server: file -> PostgreSQL (insert) vs \copy FROM, PostgreSQL -> Parquet vs
# \copy TO /dev/null (the snapshot read in key order, then in physical order).
# Records are counted in the table / the Parquet metadata.
#
#   bash integration-tests/bench/postgres.sh [RECORDS]    # default 1M
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
N="${1:-1000000}"
PG="${PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
WORK="${BENCH_DIR:-$HOME/.cache/sluice-bench}/postgres"
rm -rf "$WORK" && mkdir -p "$WORK"
cargo build --release -p runtime --bin sluice --quiet
SLUICE="$CARGO_TARGET_DIR/release/sluice"
python3 -c 'import pyarrow' 2>/dev/null || python3 -m pip install -q pyarrow

# the data: N events (no list column: \copy CSV cannot carry it the same way)
SCHEMA='schema = [
  { name = "id", type = "int64", nullable = false }, { name = "ts", type = "timestamptz", nullable = false },
  { name = "user_id", type = "int64", nullable = false }, { name = "uuid", type = "string", nullable = false },
  { name = "event", type = "string", nullable = false }, { name = "country", type = "string" },
  { name = "amount", type = "decimal(12,2)" }, { name = "mobile", type = "bool" }, { name = "payload", type = "string" },
]'
for fmt in json csv; do
  cat > "$WORK/gen-$fmt.toml" <<TOML
name = "gen-$fmt"
[source]
connector = "datagen"
count = $N
null_rate = 0.05
$SCHEMA
[sink]
connector = "file"
path = "$WORK/gen-$fmt"
format = "$fmt"
max_records = 0
max_bytes = 0
[sink.csv]
header = false
[checkpoint]
path = "$WORK/gen-$fmt-state.db"
TOML
  "$SLUICE" run --quiet "$WORK/gen-$fmt.toml" >/dev/null 2>&1
done
# the file sink may roll a large data set into several parts: the JSON is read by glob,
# the CSV joined into one file for \copy
JSON="$WORK/gen-json/part-*.jsonl"
CSV="$WORK/gen.csv"
cat "$WORK"/gen-csv/part-*.csv > "$CSV" && rm -rf "$WORK/gen-csv"

DDL="id bigint NOT NULL, ts timestamptz NOT NULL, user_id bigint NOT NULL, uuid text NOT NULL, event text NOT NULL, country text, amount numeric(12,2), mobile boolean, payload text"
psql -X -q -d "$PG" -c "DROP TABLE IF EXISTS bench_copy, bench_sluice; DELETE FROM sluice_offsets WHERE pipeline LIKE 'bench-%';" 2>/dev/null || true
psql -X -q -d "$PG" -c "CREATE TABLE bench_copy ($DDL, PRIMARY KEY (id)); CREATE TABLE bench_sluice ($DDL, PRIMARY KEY (id));"

timed() { # label command...; prints "label seconds cpu"
  local tf; tf=$(mktemp)
  /usr/bin/time -f "%e %U %S" -o "$tf" "$@" >/dev/null 2>"$WORK/err.log" || { cat "$WORK/err.log"; exit 1; }
  read -r secs user sys < "$tf"; rm -f "$tf"
  echo "$secs $(python3 -c "print($user + $sys)")"
}

read -r copy_in_s copy_in_cpu < <(timed psql -X -q -d "$PG" -c "\\copy bench_copy FROM '$CSV' WITH (FORMAT csv)")
cat > "$WORK/in.toml" <<TOML
name = "bench-in"
[source]
connector = "file"
path = "$JSON"
$SCHEMA
[sink]
connector = "postgres"
url = "$PG"
table = "bench_sluice"
[checkpoint]
path = "$WORK/in-state.db"
TOML
read -r in_s in_cpu < <(timed "$SLUICE" run --quiet "$WORK/in.toml")
got=$(psql -X -Atq -d "$PG" -c "SELECT count(*) FROM bench_sluice")
[[ "$got" == "$N" ]] || { echo "bench_sluice has $got rows, expected $N"; exit 1; }

read -r copy_out_s copy_out_cpu < <(timed psql -X -q -d "$PG" -c "\\copy bench_sluice TO '/dev/null'")
snapshot() { # ORDER: the table to Parquet, read in that snapshot_order; prints "seconds cpu"
  rm -rf "$WORK/out" "$WORK/out-state.db"
  cat > "$WORK/out.toml" <<TOML
name = "bench-out"
[source]
connector = "postgres"
url = "$PG"
tables = ["bench_sluice"]
snapshot_order = "$1"
[sink]
connector = "file"
path = "$WORK/out"
format = "parquet"
[checkpoint]
path = "$WORK/out-state.db"
TOML
  timed "$SLUICE" run --quiet "$WORK/out.toml"
}
parquet_rows() {
  got=$(python3 -c "import pyarrow.parquet as pq, glob; print(sum(pq.ParquetFile(f).metadata.num_rows for f in glob.glob('$WORK/out/*.parquet')))")
  [[ "$got" == "$N" ]] || { echo "parquet has $got rows, expected $N"; exit 1; }
}
read -r out_s out_cpu < <(snapshot key)
parquet_rows
read -r phys_s phys_cpu < <(snapshot physical)
parquet_rows

echo "records: $N, PostgreSQL on the same 2 cores; CPU-s are the client's (sluice or psql) per million rows"
printf '| %-34s | %10s | %10s | %8s |\n' workload rows/s "CPU-s/M" "vs psql"
printf '|%s|%s|%s|%s|\n' ------------------------------------ ------------ ------------ ----------
python3 - "$N" "$copy_in_s" "$copy_in_cpu" "$in_s" "$in_cpu" "$copy_out_s" "$copy_out_cpu" "$out_s" "$out_cpu" "$phys_s" "$phys_cpu" <<'PY'
import sys
n = int(sys.argv[1]); v = [float(x) for x in sys.argv[2:]]
rows = [("psql \\copy FROM (CSV)", v[0], v[1], None), ("sluice file (JSON) -> postgres", v[2], v[3], v[0]),
        ("psql \\copy TO /dev/null", v[4], v[5], None), ("sluice postgres -> parquet (key)", v[6], v[7], v[4]),
        ("sluice postgres -> parquet (physical)", v[8], v[9], v[4])]
for name, secs, cpu, ref in rows:
    ratio = "" if ref is None else f"{ref / secs:.2f}x"
    print(f"| {name:<34} | {n / secs:>10,.0f} | {cpu / n * 1e6:>10.2f} | {ratio:>8} |")
PY
