#!/usr/bin/env bash
# S3 benchmark: 10M `events` records, JSON lines file -> Parquet objects on the S3 API
# server the test suite uses (moto, started here if it is down), against the same
# Parquet written to local files and against boto3 uploading the finished Parquet
# (the server's own ingest ceiling). Records are counted in the objects with pyarrow.
# Peak RSS is compared between one object of all records and objects of 1M records:
# memory must not grow with the object size.
#
#   bash integration-tests/bench/s3.sh            # 10M records
#   bash integration-tests/bench/s3.sh --quick    # 1M records
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=integration-tests/bench/common.sh
source integration-tests/bench/common.sh
PORT="${S3_BENCH_PORT:-9555}"
ENDPOINT="http://127.0.0.1:$PORT"
if ! (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  python3 -m pip install -q 'moto[server]>=5.2.5' boto3
  setsid nohup python3 -m moto.server -H 127.0.0.1 -p "$PORT" >"$WORK/moto.log" 2>&1 </dev/null &
  sleep 3
fi
BUCKET="bench-$$"
S3PY="import boto3; s3 = boto3.client('s3', endpoint_url='$ENDPOINT', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1')"
python3 -c "$S3PY; s3.create_bucket(Bucket='$BUCKET')"

pipeline() { # name, sink lines
  rm -f "$WORK/$1-state.db"*
  cat > "$WORK/$1.toml" <<TOML
name = "$1"
[source]
connector = "file"
path = "$INPUT"
read_buffer = 4194304
$SCHEMA
[sink]
$2
[checkpoint]
path = "$WORK/$1-state.db"
interval = "10s"
TOML
}
S3SINK="connector = \"s3\"
bucket = \"$BUCKET\"
endpoint = \"$ENDPOINT\"
auth = { access_key_id = \"test\", secret_access_key = \"test\" }
format = \"parquet\""

count_objects() { # prefix -> "records bytes objects"
  python3 - "$1" <<PY
import sys, io, pyarrow.parquet as pq
$S3PY
n = b = k = 0
for page in s3.get_paginator('list_objects_v2').paginate(Bucket='$BUCKET', Prefix=sys.argv[1]):
    for o in page.get('Contents', []):
        if o['Key'].endswith('.parquet'):
            body = s3.get_object(Bucket='$BUCKET', Key=o['Key'])['Body'].read()
            n += pq.ParquetFile(io.BytesIO(body)).metadata.num_rows; b += o['Size']; k += 1
print(n, b, k)
PY
}

rows=()
notes=()
# local Parquet: the same encoding work without the network
rm -rf "$WORK/out-local"
pipeline local-parquet "connector = \"file\"
path = \"$WORK/out-local\"
format = \"parquet\"
max_records = 0
max_bytes = 0"
rows+=("$(measure local-parquet "$SLUICE" run --quiet "$WORK/local-parquet.toml") $N")

for spec in "s3-one-object one/ 0" "s3-1M-objects million/ 1000000" "s3-by-country country={country}/ 1000000"; do
  read -r name prefix max <<<"$spec"
  pipeline "$name" "$S3SINK
prefix = \"$name/$prefix\"
max_records = $max
max_bytes = 0"
  line=$(measure "$name" "$SLUICE" run --quiet "$WORK/$name.toml")
  read -r got bytes objects <<<"$(count_objects "$name/")"
  [[ "$got" == "$N" ]] || { echo "$name: objects hold $got records, expected $N"; exit 1; }
  rows+=("$line $got")
  notes+=("$name: $objects objects, $((bytes / 1000000)) MB of Parquet")
done

# the server's ceiling: boto3 uploading the local Parquet output (multipart, 8 MiB parts)
ref=$(ls "$WORK"/out-local/*.parquet | head -n1)
start=$(date +%s.%N)
python3 -c "$S3PY
from boto3.s3.transfer import TransferConfig
s3.upload_file('$ref', '$BUCKET', 'reference/upload.parquet', Config=TransferConfig(multipart_chunksize=8 << 20, max_concurrency=4))"
end=$(date +%s.%N)
size=$(stat -c %s "$ref")
notes+=("boto3 upload_file of the $((size / 1000000)) MB local Parquet: $(python3 -c "print(f'{$size / 1e6 / ($end - $start):.0f}')") MB/s")
rm -rf "$WORK/out-local"

print_table "${rows[@]}"
echo
printf '%s\n' "${notes[@]}"
python3 -c "$S3PY
for page in s3.get_paginator('list_objects_v2').paginate(Bucket='$BUCKET'):
    for o in page.get('Contents', []): s3.delete_object(Bucket='$BUCKET', Key=o['Key'])
s3.delete_bucket(Bucket='$BUCKET')"
