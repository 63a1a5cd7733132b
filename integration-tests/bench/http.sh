#!/usr/bin/env bash
# The cost of the HTTP API: the JSON lines -> Parquet run (the suite's json-to-parquet,
# typed, zstd, exactly-once file sink) with the API off, and with `--http` on and
# /metrics and /pipelines scraped every second (curl, on the same machine),
# alternating which goes first, ROUNDS times each.
# Throughput is the pipeline's own (its summary line: records over its run time).
#
#   bash integration-tests/bench/http.sh [--quick] [ROUNDS]    # 10M records, 5 rounds
set -euo pipefail
cd "$(dirname "$0")/../.."
source integration-tests/bench/common.sh "${1:-}"
ROUNDS="${2:-5}"
PORT=18686

pipeline() { # name -> a pipeline file writing Parquet into a fresh folder
  rm -rf "$WORK/http-$1" "$WORK/http-$1.state.db"
  cat > "$WORK/http-$1.toml" <<TOML
name = "http-$1"
[source]
connector = "file"
path = "$INPUT"
$SCHEMA
[sink]
connector = "file"
path = "$WORK/http-$1"
format = "parquet"
max_records = 0
max_bytes = 0
[checkpoint]
path = "$WORK/http-$1.state.db"
TOML
}

rate() { # summary line -> records/s
  sed -n 's/.* s, \([0-9]*\) records\/s.*/\1/p' <<<"$1"
}

run_off() {
  pipeline off
  line=$(/usr/bin/time -f "cpu %U %S" -o "$WORK/http-off.cpu" "$SLUICE" run --quiet "$WORK/http-off.toml" 2>"$WORK/http-off.stderr")
  off+=("$(rate "$line")")
  off_cpu+=("$(cpu "$WORK/http-off.cpu")")
}

run_on() {
  pipeline on
  /usr/bin/time -f "cpu %U %S" -o "$WORK/http-on.cpu" "$SLUICE" run --quiet "$WORK/http-on.toml" --http "127.0.0.1:$PORT" >"$WORK/http-on.out" 2>"$WORK/http-on.stderr" &
  local pid=$!
  scrapes=0
  # scrape every second until the pipeline has finished (the service keeps serving)
  while ! grep -q "records/s" "$WORK/http-on.out" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { echo "the API run ended early:"; cat "$WORK/http-on.stderr"; exit 1; }
    if curl -sf "127.0.0.1:$PORT/metrics" >/dev/null && curl -sf "127.0.0.1:$PORT/pipelines" >/dev/null; then
      scrapes=$((scrapes + 1))
    fi
    sleep 1
  done
  # the signal goes to sluice, not to the time(1) process that measures it
  pkill -TERM -P "$pid"; wait "$pid"
  on+=("$(rate "$(cat "$WORK/http-on.out")")")
  on_cpu+=("$(cpu "$WORK/http-on.cpu")")
}

cpu() { # /usr/bin/time output -> user + system seconds
  python3 -c "import sys; u, s = open(sys.argv[1]).read().split('cpu ')[-1].split()[:2]; print(round(float(u) + float(s), 2))" "$1"
}

# alternate which goes first: the page cache and the machine's other load favour neither
off=() on=() off_cpu=() on_cpu=()
for round in $(seq 1 "$ROUNDS"); do
  if (( round % 2 )); then run_off; run_on; else run_on; run_off; fi
  echo "round $round: off ${off[-1]} records/s ${off_cpu[-1]} CPU-s, on ${on[-1]} records/s ${on_cpu[-1]} CPU-s ($scrapes scrapes)"
done
python3 - "${off[*]}" "${on[*]}" "${off_cpu[*]}" "${on_cpu[*]}" "$N" <<'PY'
import sys, statistics
off, on, off_cpu, on_cpu = ([float(x) for x in a.split()] for a in sys.argv[1:5])
m = statistics.median
print(f"records: {sys.argv[5]}; median records/s: API off {m(off):,.0f}, API on and scraped every second {m(on):,.0f} "
      f"({(m(off) - m(on)) / m(off) * 100:+.1f}% cost); median CPU-s: off {m(off_cpu):.2f}, on {m(on_cpu):.2f} "
      f"({(m(on_cpu) - m(off_cpu)) / m(off_cpu) * 100:+.1f}%)")
PY
