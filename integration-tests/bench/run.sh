#!/usr/bin/env bash
# Foundation benchmarks: JSON lines -> JSON lines (declared schema), JSON lines ->
# Parquet, datagen -> Parquet, datagen -> blackhole, with `cat` as the I/O reference.
# Prints records/s, MB/s, CPU-seconds per million records and peak RSS; records are
# counted at the sink (output lines / Parquet metadata), never taken from the engine.
#
#   bash integration-tests/bench/run.sh            # 10M records
#   bash integration-tests/bench/run.sh --quick    # 1M records
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=integration-tests/bench/common.sh
source integration-tests/bench/common.sh

pipeline() { # name, format, source-kind
  local name="$1" format="$2" kind="$3"
  rm -rf "$WORK/out-$name"
  if [[ "$kind" == file ]]; then
    cat > "$WORK/$name.toml" <<TOML
name = "$name"
[source]
connector = "file"
path = "$INPUT"
read_buffer = 4194304
$SCHEMA
TOML
  else
    cat > "$WORK/$name.toml" <<TOML
name = "$name"
[source]
connector = "datagen"
count = $N
null_rate = 0.05
TOML
  fi
  cat >> "$WORK/$name.toml" <<TOML
[sink]
connector = "$([[ $format == blackhole ]] && echo blackhole || echo file)"
$([[ $format == blackhole ]] || printf 'path = "%s"\nformat = "%s"\nmax_records = 0\nmax_bytes = 0\n' "$WORK/out-$name" "$format")
[checkpoint]
path = "$WORK/$name-state.db"
interval = "10s"
TOML
  rm -f "$WORK/$name-state.db"*
}

count_sink() { # name, format
  local dir="$WORK/out-$1"
  case "$2" in
    json) cat "$dir"/*.jsonl | wc -l ;;
    parquet) python3 -c "import pyarrow.parquet as pq, glob; print(sum(pq.ParquetFile(f).metadata.num_rows for f in glob.glob('$dir/*.parquet')))" ;;
    blackhole) echo "$N" ;;
  esac
}

rows=()
cat "$INPUT" > /dev/null # warm the page cache for every reader alike
rows+=("$(measure cat cat "$INPUT") $N")
# read + write reference for file -> file workloads
rows+=("$(measure cp cp "$INPUT" "$WORK/copy.jsonl") $N")
rm -f "$WORK/copy.jsonl"
for spec in "json-to-json json file" "json-to-parquet parquet file" "datagen-to-parquet parquet datagen" "datagen-to-blackhole blackhole datagen"; do
  read -r name format kind <<<"$spec"
  pipeline "$name" "$format" "$kind"
  line=$(measure "$name" "$SLUICE" run --quiet "$WORK/$name.toml")
  got=$(count_sink "$name" "$format")
  [[ "$got" == "$N" ]] || { echo "$name: sink has $got records, expected $N"; exit 1; }
  rows+=("$line $got")
  rm -rf "$WORK/out-$name"
done

print_table "${rows[@]}"
