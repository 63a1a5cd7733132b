#!/usr/bin/env bash
# The cost of the plugin boundary: datagen -> blackhole with both connectors built in,
# then with the same connector code loaded from a plugin library (source side, sink
# side, both). Each run 3 times; prints the best records/s and the CPU-seconds.
#
#   bash integration-tests/bench/plugin.sh [RECORDS]     # default 20M
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
N="${1:-20000000}"
WORK="${BENCH_DIR:-$HOME/.cache/sluice-bench}/plugin"
rm -rf "$WORK" && mkdir -p "$WORK/plugins"
cargo build --release -p runtime --bin sluice --quiet
cargo build --release -p sluice-datagen-plugin --lib --quiet
cp "$CARGO_TARGET_DIR/release/libsluice_datagen_plugin.so" "$WORK/plugins/"
SLUICE="$CARGO_TARGET_DIR/release/sluice"

run() { # name source sink
  cat > "$WORK/$1.toml" <<TOML
name = "$1"
[source]
connector = "$2"
count = $N
[sink]
connector = "$3"
[checkpoint]
path = "$WORK/$1-state.db"
TOML
  local best=0 cpu=0
  for _ in 1 2 3; do
    rm -f "$WORK/$1-state.db"*
    local tf; tf=$(mktemp)
    /usr/bin/time -f "%e %U %S" -o "$tf" "$SLUICE" --plugin-dir "$WORK/plugins" run --quiet "$WORK/$1.toml" > "$WORK/$1.out" 2>/dev/null
    read -r secs user sys < "$tf"; rm -f "$tf"
    grep -q "$1: $N records" "$WORK/$1.out" || { echo "$1: wrong count: $(cat "$WORK/$1.out")"; exit 1; }
    local rate; rate=$(python3 -c "print(int($N / $secs))")
    if (( rate > best )); then best=$rate; cpu=$(python3 -c "print(round(($user + $sys) / $N * 1e6, 3))"); fi
  done
  printf '| %-32s | %12s | %10s |\n' "$1" "$best" "$cpu"
}

echo "records: $N, batch 8192, cores: $(nproc)"
printf '| %-32s | %12s | %10s |\n' pipeline "records/s" "CPU-s/M"
printf '|%s|%s|%s|\n' ---------------------------------- -------------- ------------
run built-in datagen blackhole
run plugin-source datagen_plugin blackhole
run plugin-sink datagen blackhole_plugin
run plugin-both datagen_plugin blackhole_plugin
