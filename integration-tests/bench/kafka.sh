#!/usr/bin/env bash
# Kafka throughput: JSON lines file -> Kafka and Kafka -> JSON lines file, by sluice
# (typed: declared schema, decimals, timestamps, lists) and by Python confluent-kafka
# doing the same (json.loads of every record, json.dumps out), with JSON values and
# with Avro values (Confluent wire format, fastavro for Python), against one broker:
# librdkafka's mock cluster (the kafka-mock binary), on this machine, with
# group.initial.rebalance.delay.ms = 0 (Kafka's default is 3 s, a wait for more group
# members that a one-consumer run would otherwise count as read time).
#
#   bash integration-tests/bench/kafka.sh [--quick]     # 1M records by default here
#
# The mock cluster keeps only about 5 MB per partition, so the topics get one
# partition per 2 MB of input. Records are counted at the destination (partition end
# offsets, lines of the output file), never taken from the tools. Messages are keyed
# by id, so they spread evenly over the partitions.
set -euo pipefail
cd "$(dirname "$0")/../.."
source integration-tests/bench/common.sh "${1:---quick}"
python3 -c 'import confluent_kafka' 2>/dev/null || python3 -m pip install -q confluent-kafka
cargo build --release -p integration-tests --bin kafka-mock --quiet
MOCK="$CARGO_TARGET_DIR/release/kafka-mock"

PARTS=$((BYTES / 1500000 + 1))
coproc BROKER { exec "$MOCK" --rebalance-delay-ms 0 1 "sluice:$PARTS" "python:$PARTS" "avro:$PARTS" "pyavro:$PARTS"; }
read -r BOOT <&"${BROKER[0]}"
trap 'kill "$BROKER_PID" 2>/dev/null || true' EXIT
echo "broker: librdkafka mock cluster at $BOOT, $PARTS partitions per topic"

ends() { # sum of the end offsets of a topic
  python3 - "$BOOT" "$1" <<'PY'
import sys, confluent_kafka
boot, topic = sys.argv[1:]
c = confluent_kafka.Consumer({'bootstrap.servers': boot, 'group.id': 'ends'})
parts = c.list_topics(topic, timeout=10).topics[topic].partitions
print(sum(c.get_watermark_offsets(confluent_kafka.TopicPartition(topic, p), timeout=10)[1] for p in parts))
c.close()
PY
}

cat > "$WORK/to-kafka.toml" <<TOML
name = "to-kafka"
[source]
connector = "file"
path = "$INPUT"
$SCHEMA
[sink]
connector = "kafka"
bootstrap_servers = "$BOOT"
topic = "sluice"
key = ["id"]
compression = "none"
[checkpoint]
path = "$WORK/kafka-state.db"
interval = "10s"
TOML
rm -f "$WORK/kafka-state.db"
row1=$(measure sluice-file-to-kafka "$SLUICE" run --quiet "$WORK/to-kafka.toml")
row1="$row1 $(ends sluice)"

rm -rf "$WORK/from-kafka"
cat > "$WORK/from-kafka.toml" <<TOML
name = "from-kafka"
[source]
connector = "kafka"
bootstrap_servers = "$BOOT"
topics = ["sluice"]
bounded = true
$SCHEMA
[sink]
connector = "file"
path = "$WORK/from-kafka"
format = "json"
[checkpoint]
path = "$WORK/kafka-state2.db"
interval = "10s"
TOML
rm -f "$WORK/kafka-state2.db"
row2=$(measure sluice-kafka-to-file "$SLUICE" run --quiet "$WORK/from-kafka.toml")
row2="$row2 $(cat "$WORK"/from-kafka/*.jsonl | wc -l)"

# the Python reference, JSON values, or Avro values when given the registry (fastavro
# with the schema sluice registered, after json.loads and the typed conversions)
cat > "$WORK/py-produce.py" <<'PY'
import datetime, decimal, io, json, sys, urllib.request, confluent_kafka
boot, path, topic = sys.argv[1:4]
if len(sys.argv) > 4:
    import fastavro
    reg = sys.argv[4]
    schema = fastavro.parse_schema(json.loads(json.load(urllib.request.urlopen(reg + '/schemas/ids/1'))['schema']))
    header = bytes([0, 0, 0, 0, 1])
    buf = io.BytesIO()
    def load(line):
        r = json.loads(line, parse_float=decimal.Decimal)
        r['ts'] = datetime.datetime.fromisoformat(r['ts'].replace('Z', '+00:00'))
        return r
    def encode(r):
        buf.seek(0); buf.truncate()
        fastavro.schemaless_writer(buf, schema, r)
        return header + buf.getvalue()
else:
    load = json.loads
    def encode(r):
        return json.dumps(r).encode()
p = confluent_kafka.Producer({'bootstrap.servers': boot, 'enable.idempotence': True, 'linger.ms': 5,
                              'compression.codec': 'none'})
with open(path, 'rb') as f:
    for line in f:
        record = load(line)
        value = encode(record)
        while True:
            try:
                p.produce(topic, value, key=str(record['id']))
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)
assert p.flush(120) == 0
PY
row3=$(measure python-file-to-kafka python3 "$WORK/py-produce.py" "$BOOT" "$INPUT" python)
row3="$row3 $(ends python)"

cat > "$WORK/py-consume.py" <<'PY'
import io, json, sys, urllib.request, confluent_kafka
boot, topic, out, want = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if len(sys.argv) > 5:
    import fastavro
    reg = sys.argv[5]
    schemas = {}
    def decode(v):
        sid = int.from_bytes(v[1:5], 'big')
        if sid not in schemas:
            text = json.load(urllib.request.urlopen(f'{reg}/schemas/ids/{sid}'))['schema']
            schemas[sid] = fastavro.parse_schema(json.loads(text))
        return fastavro.schemaless_reader(io.BytesIO(v[5:]), schemas[sid], None)
else:
    decode = json.loads
c = confluent_kafka.Consumer({'bootstrap.servers': boot, 'group.id': 'py-bench', 'auto.offset.reset': 'earliest',
                              'enable.auto.commit': False})
parts = c.list_topics(topic, timeout=10).topics[topic].partitions
c.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in parts])
n = idle = 0
with open(out, 'w') as f:
    while n < want and idle < 10:
        got = c.consume(10000, 1.0)
        idle = 0 if got else idle + 1
        for m in got:
            if m.error():
                continue
            f.write(json.dumps(decode(m.value()), default=str))
            f.write('\n')
            n += 1
c.close()
PY
row4=$(measure python-kafka-to-file python3 "$WORK/py-consume.py" "$BOOT" sluice "$WORK/py-out.jsonl" "$N")
row4="$row4 $(wc -l < "$WORK/py-out.jsonl")"

# Avro in the Confluent wire format: sluice registers its schema in the test registry;
# the Python reference (the same scripts, given the registry) uses fastavro, the
# fastest Python Avro codec
python3 -c 'import fastavro, avro.compatibility' 2>/dev/null || python3 -m pip install -q fastavro avro
coproc REGISTRY { exec python3 integration-tests/schema_registry.py; }
read -r REG <&"${REGISTRY[0]}"
trap 'kill "$BROKER_PID" "$REGISTRY_PID" 2>/dev/null || true' EXIT
sed -e 's/^name = "to-kafka"/name = "to-kafka-avro"/' -e 's/^topic = "sluice"/topic = "avro"\nformat = "avro"\nschema_registry = { url = "'"${REG//\//\\/}"'" }/' \
  -e 's/kafka-state.db/kafka-state3.db/' "$WORK/to-kafka.toml" > "$WORK/to-kafka-avro.toml"
rm -f "$WORK/kafka-state3.db"
row5=$(measure sluice-file-to-kafka-avro "$SLUICE" run --quiet "$WORK/to-kafka-avro.toml")
row5="$row5 $(ends avro)"
rm -rf "$WORK/from-kafka"
sed -e 's/^name = "from-kafka"/name = "from-kafka-avro"/' -e 's/^topics = \["sluice"\]/topics = ["avro"]\nformat = "avro"\nschema_registry = { url = "'"${REG//\//\\/}"'" }/' \
  -e '/^schema = \[/,/^\]/d' -e 's/kafka-state2.db/kafka-state4.db/' "$WORK/from-kafka.toml" > "$WORK/from-kafka-avro.toml"
rm -f "$WORK/kafka-state4.db"
row6=$(measure sluice-kafka-avro-to-file "$SLUICE" run --quiet "$WORK/from-kafka-avro.toml")
row6="$row6 $(cat "$WORK"/from-kafka/*.jsonl | wc -l)"

row7=$(measure python-file-to-kafka-avro python3 "$WORK/py-produce.py" "$BOOT" "$INPUT" pyavro "$REG")
row7="$row7 $(ends pyavro)"

row8=$(measure python-kafka-avro-to-file python3 "$WORK/py-consume.py" "$BOOT" avro "$WORK/py-out.jsonl" "$N" "$REG")
row8="$row8 $(wc -l < "$WORK/py-out.jsonl")"

print_table "$row1" "$row2" "$row3" "$row4" "$row5" "$row6" "$row7" "$row8"
# sluice joins a consumer group (the broker holds a new group's first rebalance 3 s);
# the Python reference assigns partitions directly. The rate once assigned:
for run in sluice-kafka-to-file sluice-kafka-avro-to-file; do
python3 - "$WORK/$run.stderr" "$N" "$run" <<'PY'
import re, sys, datetime
text = re.sub(r'\x1b\[[0-9;]*m', '', open(sys.argv[1]).read())
def at(word):
    line = next(l for l in text.splitlines() if word in l)
    return datetime.datetime.fromisoformat(line.split()[0].replace('Z', '+00:00'))
secs = (at('pipeline finished') - at('partitions assigned')).total_seconds()
print(f"{sys.argv[3]} after the group join: {int(sys.argv[2]) / secs:,.0f} records/s ({secs:.2f} s)")
PY
done
echo "python: confluent-kafka $(python3 -c 'import confluent_kafka as c; print(c.version()[0], "librdkafka", c.libversion()[0])'), json.loads + json.dumps per record (untyped)"
rm -rf "$WORK/from-kafka" "$WORK/py-out.jsonl"
