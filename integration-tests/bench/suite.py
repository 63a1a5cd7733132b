#!/usr/bin/env python3
"""The benchmark suite: sluice against Sling, dlt and the physical references.

    python3 integration-tests/bench/suite.py            # 10M records
    python3 integration-tests/bench/suite.py --quick    # 1M records

Generates a seeded `events` data set (datagen), runs every workload with the release
`sluice` binary, with the physical reference (cat/cp, psql \\copy, kcat) and with the
peers (Sling, dlt) in the same run, on the same data and services, and writes
`results.md` and `results.json` (under $BENCH_DIR, default ~/.cache/sluice-bench/suite).

Records are counted at the destination (lines, Parquet metadata, count(*), partition
end offsets), never taken from a tool's own report. CPU seconds and peak RSS are the
tool's process tree (wait4); the database's, broker's and S3 server's CPU is read from
/proc around each run and reported separately. The peers run on the first
--peer-records records (Sling) and --dlt-records (dlt): they are 10-200x slower, and
their rates are per record like every other figure. A peer that cannot do a workload
here is a result too: the row says why.

Services: PostgreSQL at $PG_URL (default the test server); the Kafka broker is
librdkafka's mock cluster (the kafka-mock binary), the S3 server is moto and NATS a
private nats-server with JetStream, Redis a private redis-server, MQTT a private mosquitto,
all started here; RabbitMQ is the machine's (5672, or $SLUICE_BENCH_AMQP), MariaDB the
machine's (3306). Peers are installed into a
virtualenv under $BENCH_DIR; DuckDB (the SQL transform's peer) into this interpreter.
"""
import argparse
import datetime
import glob
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/sluice-target"))
BASE = os.environ.get("BENCH_DIR", os.path.expanduser("~/.cache/sluice-bench"))
WORK = os.path.join(BASE, "suite")
PEERS = os.path.join(BASE, "peers")
PG = os.environ.get("PG_URL", "postgres://postgres@127.0.0.1:5432/test")
SLING_VERSION = "1.4.11"
DLT_VERSION = "1.31.0"

EVENTS = [
    ("id", "int64", False, "bigint NOT NULL"),
    ("ts", "timestamptz", False, "timestamptz NOT NULL"),
    ("user_id", "int64", False, "bigint NOT NULL"),
    ("uuid", "string", False, "uuid NOT NULL"),
    ("event", "string", False, "text NOT NULL"),
    ("country", "string", True, "text"),
    ("amount", "decimal(12,2)", True, "numeric(12,2)"),
    ("mobile", "bool", True, "boolean"),
    ("tags", "list<string>", True, "text[]"),
    ("payload", "string", True, "jsonb"),
]
# CSV has no list type: the CSV data set is the same shape without `tags`
CSV_EVENTS = [c for c in EVENTS if c[0] != "tags"]


def schema_toml(columns):
    fields = ", ".join(
        f'{{ name = "{n}", type = "{t}"{"" if null else ", nullable = false"} }}'
        for n, t, null, _ in columns
    )
    return f"schema = [{fields}]"


def ddl(table, columns, key=True):
    cols = ", ".join(f"{n} {pg}" for n, _, _, pg in columns)
    return f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} ({cols}{', PRIMARY KEY (id)' if key else ''})"


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def psql(sql):
    return sh("psql", "-X", "-q", "-At", "-d", PG, "-v", "ON_ERROR_STOP=1", "-c", sql).strip()


def log(msg):
    print(f"==> {msg}", file=sys.stderr, flush=True)


# --- CPU of the services, read from /proc around each run --------------------------

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid, children_done=False):
    """utime + stime (+ reaped children's) of a process, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children_done:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def children(pid):
    out = []
    for d in glob.glob("/proc/[0-9]*"):
        try:
            with open(f"{d}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(os.path.basename(d)))
        except (OSError, ValueError):
            pass
    return out


class Postgres:
    """The server's CPU: the postmaster with its reaped backends, plus live backends."""

    name = "postgres"

    def __init__(self):
        data = psql("SHOW data_directory")
        with open(os.path.join(data, "postmaster.pid")) as f:
            self.pid = int(f.readline())

    def cpu(self):
        return proc_cpu(self.pid, True) + sum(proc_cpu(c) for c in children(self.pid))

    def mark(self):
        self.base = set(children(self.pid))

    def settle(self):
        """Waits (up to 3 s) until the run's backends have exited and been reaped."""
        for _ in range(30):
            if set(children(self.pid)) <= self.base:
                return
            time.sleep(0.1)


class Process:
    """A service we started: its own CPU."""

    def __init__(self, name, popen):
        self.name, self.popen = name, popen

    def cpu(self):
        return proc_cpu(self.popen.pid, True)

    def mark(self):
        pass

    def settle(self):
        pass


class Running(Process):
    """A service that was already running (the oldest process matching a pattern)."""

    def __init__(self, name, pid):
        self.name, self.pid = name, pid

    def cpu(self):
        return proc_cpu(self.pid, True)

    @staticmethod
    def find(name, pattern):
        """The running service, as a list of zero or one (for `servers=`)."""
        out = subprocess.run(["pgrep", "-o", "-f", pattern], capture_output=True, text=True).stdout.split()
        if not out:
            print(f"==> {name}: no local process matches {pattern!r}; its CPU is not measured", flush=True)
            return []
        return [Running(name, int(out[0]))]


# --- measuring one run -------------------------------------------------------------


class Suite:
    def __init__(self, args):
        self.args = args
        self.n = args.records
        self.results = []
        self.failed = []

    def measure(self, workload, tool, work, cmd, count, servers=(), records=None, env=None,
                input_bytes=None):
        """Runs `cmd`, then `count()` at the destination; appends one result."""
        records = records or self.n
        name = f"{len(self.results):02d}-{workload}.{tool}".replace(" ", "-").replace("\\", "")
        errlog = os.path.join(WORK, f"{name}.log")
        outlog = os.path.join(WORK, f"{name}.out")
        log(f"{workload}: {tool}")
        for srv in servers:
            srv.mark()
        before = {s.name: s.cpu() for s in servers}
        usage_file = os.path.join(WORK, "usage.txt")
        # GNU time, not wait4 here: a child forked from this (large) interpreter would
        # carry its peak RSS across exec
        start = time.monotonic()
        with open(errlog, "w") as err, open(outlog, "w") as out:
            proc = subprocess.run(["/usr/bin/time", "-f", "%U %S %M", "-o", usage_file, *cmd],
                                  stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                  env={**os.environ, **(env or {})}, cwd=WORK)
        secs = time.monotonic() - start
        for srv in servers:
            srv.settle()
        with open(usage_file) as f:
            user, system, rss_kib = f.read().split()[-3:]
        server_cpu = {s.name: s.cpu() - before[s.name] for s in servers}
        row = {"workload": workload, "tool": tool, "work": work, "records_in": records, "stdout": outlog}
        if proc.returncode != 0:
            with open(errlog, errors="replace") as f:
                lines = [re.sub(r"\x1b\[[0-9;]*m", "", l).strip() for l in f if l.strip()]
            reason = " / ".join(l for l in lines[-3:] if l not in ("fatal:", "~"))[-400:] or f"exit {proc.returncode}"
            row.update(status="failed", reason=reason, seconds=round(secs, 2))
            log(f"  failed: {reason}")
        else:
            got = count()
            cpu = float(user) + float(system)
            row.update(
                status="ok" if got == records else "wrong count",
                records=got,
                seconds=round(secs, 3),
                records_per_s=round(got / secs),
                mb_per_s=round(input_bytes / 1e6 / secs, 1) if input_bytes else None,
                cpu_s_per_m=round(cpu / max(got, 1) * 1e6, 2),
                peak_rss_mib=round(int(rss_kib) / 1024, 1),
                server_cpu_s_per_m={k: round(v / max(got, 1) * 1e6, 2) for k, v in server_cpu.items()},
            )
            log(f"  {got:,} records, {got / secs:,.0f}/s, {row['cpu_s_per_m']} CPU-s/M, {row['peak_rss_mib']} MiB")
            if got != records:
                log(f"  expected {records} records at the destination, counted {got}")
        if row["status"] != "ok" and tool == "sluice":
            self.failed.append(name)
        self.results.append(row)
        return row

    def note_types(self, schema, table):
        """Records the column types of the table the last (successful) run created."""
        last = self.results[-1]
        last["types"] = column_types(schema, table) if last["status"] == "ok" else None

    def skip(self, workload, tool, reason):
        log(f"{workload}: {tool}: not run: {reason}")
        self.results.append({"workload": workload, "tool": tool, "status": "not supported", "reason": reason})


# --- tools ---------------------------------------------------------------------------


def build():
    log("building the release binaries")
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "runtime", "--bin", "sluice",
                    "-p", "integration-tests", "--bin", "kafka-mock"], cwd=ROOT, check=True,
                   env={**os.environ, "CARGO_TARGET_DIR": TARGET})
    # SLUICE_BENCH_BIN: another sluice binary (an earlier build, for a before/after run)
    sluice = os.environ.get("SLUICE_BENCH_BIN") or os.path.join(TARGET, "release", "sluice")
    return sluice, os.path.join(TARGET, "release", "kafka-mock")


def install():
    """Python clients in this interpreter, the peers in their own virtualenv, kcat."""
    moto_ok = "import moto, sys; sys.exit(tuple(map(int, moto.__version__.split('.')[:3])) < (5, 2, 5))"
    need = [m for m, check in [("pyarrow", "import pyarrow"), ("confluent-kafka", "import confluent_kafka"),
                               ("nats-py", "import nats"), ("redis", "import redis"), ("pika", "import pika"),
                               ("paho-mqtt>=2", "import paho.mqtt.client"),
                               ("boto3", "import boto3"), ("moto[server]>=5.2.5", moto_ok),
                               ("pyiceberg[sql-sqlite,pyarrow]", "import pyiceberg.catalog.sql")]
            if subprocess.run([sys.executable, "-c", check], capture_output=True).returncode]
    if need:
        log(f"installing {' '.join(need)}")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *need], check=True)
    py = os.path.join(PEERS, "bin", "python")
    if not os.path.exists(py):
        log("creating the peers' virtualenv")
        subprocess.run([sys.executable, "-m", "venv", PEERS], check=True)
    check = subprocess.run([py, "-c", f"import dlt, sling_linux_amd64, s3fs, sqlalchemy, pyiceberg; assert dlt.__version__ == '{DLT_VERSION}'"],
                           capture_output=True)
    if check.returncode:
        log(f"installing sling {SLING_VERSION} and dlt {DLT_VERSION}")
        subprocess.run([py, "-m", "pip", "install", "-q", f"sling-linux-amd64=={SLING_VERSION}",
                        f"dlt[postgres,parquet,s3,pyiceberg]=={DLT_VERSION}", "sqlalchemy"], check=True)
    if not shutil.which("kcat"):
        log("installing kcat")
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat",
                       shell=True, check=True, stdout=subprocess.DEVNULL)
    sling = glob.glob(os.path.join(PEERS, "lib", "python3*", "site-packages", "sling_linux_amd64", "bin",
                                   "sling-linux-amd64"))[0]
    return py, sling


def run_sluice(sluice, name, body, interval="10s"):
    """The command running pipeline `name` (a fresh checkpoint store) of `body`."""
    path = os.path.join(WORK, f"{name}.toml")
    for f in glob.glob(os.path.join(WORK, f"{name}-state.db*")):
        os.remove(f)
    with open(path, "w") as f:
        f.write(f'name = "{name}"\n{body}\n[checkpoint]\npath = "{WORK}/{name}-state.db"\ninterval = "{interval}"\n')
    return [sluice, "run", "--quiet", path]


def fresh(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def count_lines(pattern):
    def count():
        n = 0
        for p in glob.glob(pattern, recursive=True):
            with open(p, "rb") as f:
                n += sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 20), b""))
        return n
    return count


def count_parquet(pattern):
    def count():
        import pyarrow.parquet as pq
        return sum(pq.ParquetFile(p).metadata.num_rows for p in glob.glob(pattern, recursive=True))
    return count


def count_iceberg(catalog, warehouse, s3_port=None):
    """Rows of bench.events read back with pyiceberg (every data file the table names)."""
    def count():
        from pyiceberg.catalog.sql import SqlCatalog
        props = {} if s3_port is None else {"s3.endpoint": f"http://127.0.0.1:{s3_port}", "s3.access-key-id": "test",
                                             "s3.secret-access-key": "test", "s3.region": "us-east-1"}
        t = SqlCatalog("sluice", uri=f"sqlite:///{catalog}", warehouse=warehouse, **props).load_table("bench.events")
        return t.scan().to_arrow().num_rows
    return count


def count_table(table):
    return lambda: int(psql(f"SELECT count(*) FROM {table}") or 0)


def column_types(schema, table):
    rows = psql(f"SELECT column_name || ' ' || format_type(atttypid, atttypmod) FROM information_schema.columns c "
                f"JOIN pg_attribute a ON a.attrelid = '{schema}.{table}'::regclass AND a.attname = c.column_name "
                f"WHERE table_schema = '{schema}' AND table_name = '{table}' ORDER BY ordinal_position")
    return ", ".join(r for r in rows.splitlines() if not r.startswith("_dlt"))


# --- data ------------------------------------------------------------------------------


def generate(sluice, n):
    """events-N.jsonl (10 columns) and events-N.csv (9, no list), seeded, cached."""
    jsonl = os.path.join(BASE, f"events-{n}.jsonl")
    csv = os.path.join(BASE, f"events-{n}.csv")
    for path, fmt, columns in [(jsonl, "json", EVENTS), (csv, "csv", CSV_EVENTS)]:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            continue
        log(f"generating {os.path.basename(path)}")
        out = fresh(os.path.join(WORK, "gen"))
        # the JSON data set keeps datagen's own events shape (the other scripts share it)
        declared = schema_toml(columns) if fmt == "csv" else ""
        cmd = run_sluice(sluice, f"gen-{fmt}", f"""
[source]
connector = "datagen"
count = {n}
null_rate = 0.05
{declared}
[sink]
connector = "file"
path = "{out}"
format = "{fmt}"
max_records = 0
max_bytes = 0
[batch]
max_records = 65536""", interval="1h")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        part = glob.glob(os.path.join(out, "part-*"))
        assert len(part) == 1, part
        os.rename(part[0], path)
    return jsonl, csv


def head(path, n, total):
    """The first n records of a data set of `total` records (a CSV keeps its header)."""
    if n >= total:
        return path
    out = os.path.join(os.path.dirname(path), os.path.basename(path).replace("events-", f"events-head{n}-of-"))
    if not os.path.exists(out):
        lines = n + (1 if path.endswith(".csv") else 0)
        with open(path, "rb") as src, open(out + ".tmp", "wb") as dst:
            for _ in range(lines):
                dst.write(src.readline())
        os.rename(out + ".tmp", out)
    return out


# --- the peers' commands -----------------------------------------------------------------

DLT_SCRIPT = r'''
import json, os, sys, dlt
src, dest = sys.argv[1], sys.argv[2]
def records():
    with open(src) as f:
        chunk = []
        for line in f:
            chunk.append(json.loads(line))
            if len(chunk) == 10000:
                yield chunk; chunk = []
        if chunk:
            yield chunk
@dlt.resource(name="events", write_disposition="append")
def events():
    yield from records()
if dest == "postgres":
    p = dlt.pipeline("bench_dlt_pg", destination=dlt.destinations.postgres(credentials=os.environ["DLT_PG"]), dataset_name="bench_dlt", pipelines_dir=sys.argv[3])
    p.run(events())
elif dest == "from-postgres":
    from dlt.sources.sql_database import sql_table
    p = dlt.pipeline("bench_dlt_out", destination=dlt.destinations.filesystem(sys.argv[4]),
                     dataset_name="out", pipelines_dir=sys.argv[3])
    limit = int(sys.argv[6])
    p.run(sql_table(credentials=os.environ["DLT_PG"].replace("postgresql://", "postgresql+psycopg2://"),
                    table=sys.argv[5], backend="pyarrow",
                    query_adapter_callback=lambda query, table: query.order_by(table.c.id).limit(limit)),
          loader_file_format="parquet")
elif dest == "iceberg":
    p = dlt.pipeline("bench_dlt_iceberg", destination=dlt.destinations.filesystem(sys.argv[4]),
                     dataset_name="out", pipelines_dir=sys.argv[3])
    p.run(events(), loader_file_format="parquet", table_format="iceberg")
else:
    p = dlt.pipeline("bench_dlt_" + dest, destination=dlt.destinations.filesystem(sys.argv[4]),
                     dataset_name="out", pipelines_dir=sys.argv[3])
    p.run(events(), loader_file_format=dest)
'''


def dlt_env():
    url = PG.replace("postgres://", "postgresql://")
    user = url.split("://", 1)[1].split("@", 1)[0]
    if ":" not in user:  # dlt insists on a password; a trust-auth server ignores it
        url = url.replace(f"{user}@", f"{user}:unused@", 1)
    return {"RUNTIME__DLTHUB_TELEMETRY": "false", "DLT_PG": url}


def sling_env():
    return {"SLING_HOME_DIR": os.path.join(WORK, "sling-home"), "SLING_DISABLE_TELEMETRY": "true",
            "SLING_LOADED_AT_COLUMN": "false", "PG": PG.replace("postgres://", "postgresql://") + "?sslmode=disable"}


# --- the workloads ------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1M records instead of 10M")
    ap.add_argument("--records", type=int, help="records in the data set (default 10M, --quick 1M)")
    ap.add_argument("--peer-records", type=int, default=1_000_000, help="records Sling runs on")
    ap.add_argument("--dlt-records", type=int, default=200_000, help="records dlt runs on")
    ap.add_argument("--only", help="comma-separated workload names")
    ap.add_argument("--no-peers", action="store_true", help="skip Sling and dlt")
    args = ap.parse_args()
    args.records = args.records or (1_000_000 if args.quick else 10_000_000)
    os.makedirs(WORK, exist_ok=True)
    sluice, mock = build()
    py, sling = install()
    jsonl, csv = generate(sluice, args.records)
    n = args.records
    peer_n, dlt_n = min(args.peer_records, n), min(args.dlt_records, n)
    s = Suite(args)
    pg = Postgres()
    only = set(args.only.split(",")) if args.only else None
    want = lambda w: only is None or w in only
    peers = not args.no_peers
    json_bytes, csv_bytes = os.path.getsize(jsonl), os.path.getsize(csv)
    per_json, per_csv = json_bytes / n, csv_bytes / n
    schema, csv_schema = schema_toml(EVENTS), schema_toml(CSV_EVENTS)
    dlt_script = os.path.join(WORK, "dlt_bench.py")
    with open(dlt_script, "w") as f:
        f.write(DLT_SCRIPT)
    dlt_dir = os.path.join(WORK, "dlt-pipelines")
    subprocess.run(["cat", jsonl], stdout=subprocess.DEVNULL, check=True)  # warm the page cache alike

    # the typed JSON lines source, and the file sink's Parquet of it (one file)
    json_source = f'[source]\nconnector = "file"\npath = "{jsonl}"\n{schema}\n'
    to_parquet = lambda out: (f'{json_source}[sink]\nconnector = "file"\npath = "{out}"\nformat = "parquet"\n'
                              'max_records = 0\nmax_bytes = 0')

    # 1. JSON lines -> JSON lines (typed) and -> Parquet (zstd)
    if want("json-to-json"):
        w = "json-to-json"
        s.measure(w, "cat", "reads the file (read reference)", ["cat", jsonl], lambda: n, input_bytes=json_bytes)
        out = os.path.join(WORK, "copy.jsonl")
        s.measure(w, "cp", "copies the file (read + write reference)", ["cp", jsonl, out],
                  count_lines(out), input_bytes=json_bytes)
        os.remove(out)
        out = fresh(os.path.join(WORK, "out-json"))
        s.measure(w, "sluice", "typed (declared schema: decimal, timestamptz, list), exactly-once file sink",
                  run_sluice(sluice, w, f'[source]\nconnector = "file"\npath = "{jsonl}"\n{schema}\n'
                             f'[sink]\nconnector = "file"\npath = "{out}"\nformat = "json"\nmax_records = 0\nmax_bytes = 0'),
                  count_lines(f"{out}/*.jsonl"), input_bytes=json_bytes)
        if peers:
            src = head(jsonl, peer_n, n)
            out = fresh(os.path.join(WORK, "out-sling-json"))
            s.measure(w, "sling", "untyped (types inferred), no delivery guarantee",
                      [sling, "run", "--src-stream", f"file://{src}", "--src-options", "{format: jsonlines}",
                       "--tgt-object", f"file://{out}/out.jsonl", "--tgt-options", "{format: jsonlines}"],
                      count_lines(f"{out}/**/*.jsonl"), records=peer_n, env=sling_env(),
                      input_bytes=per_json * peer_n)
            src = head(jsonl, dlt_n, n)
            out = fresh(os.path.join(WORK, "out-dlt-json"))
            s.measure(w, "dlt", "types inferred by dlt, load packages (at-least-once)",
                      [py, dlt_script, src, "jsonl", dlt_dir, f"file://{out}"],
                      count_dlt_jsonl(out), records=dlt_n, env=dlt_env(), input_bytes=per_json * dlt_n)
    def measure_parquet(w, tool, detail):
        """The typed JSON source into Parquet files, as workload `w`."""
        out = fresh(os.path.join(WORK, "out-parquet"))
        s.measure(w, tool, detail, run_sluice(sluice, w, to_parquet(out)),
                  count_parquet(f"{out}/*.parquet"), input_bytes=json_bytes)

    if want("json-to-parquet"):
        w = "json-to-parquet"
        measure_parquet(w, "sluice", "typed, Parquet zstd, exactly-once file sink")
        if peers:
            src = head(jsonl, peer_n, n)
            out = fresh(os.path.join(WORK, "out-sling-parquet"))
            s.measure(w, "sling", "untyped (types inferred)",
                      [sling, "run", "--src-stream", f"file://{src}", "--src-options", "{format: jsonlines, flatten: true}",
                       "--tgt-object", f"file://{out}/out.parquet"],
                      count_parquet(f"{out}/**/*.parquet"), records=peer_n, env=sling_env(),
                      input_bytes=per_json * peer_n)
            src = head(jsonl, dlt_n, n)
            out = fresh(os.path.join(WORK, "out-dlt-parquet"))
            s.measure(w, "dlt", "types inferred by dlt (pyarrow writer)",
                      [py, dlt_script, src, "parquet", dlt_dir, f"file://{out}"],
                      count_parquet(f"{out}/out/events/*.parquet"), records=dlt_n, env=dlt_env(),
                      input_bytes=per_json * dlt_n)

    # 1b. JSON lines -> Iceberg (local warehouse and S3), against the Parquet sinks that
    # write the same files without the table
    if want("json-to-iceberg") or want("json-to-iceberg-s3"):
        iceberg = lambda cat, wh, extra="": (
            f'{json_source}[sink]\nconnector = "iceberg"\ncatalog = {{ type = "sql", url = "sqlite://{cat}" }}\n'
            f'warehouse = "{wh}"\nnamespace = "bench"\ntable = "events"\n{extra}')
    if want("json-to-iceberg"):
        w = "json-to-iceberg"
        measure_parquet(w, "sluice parquet", "the same data as Parquet zstd files (reference: no table)")
        out = fresh(os.path.join(WORK, "out-iceberg"))
        s.measure(w, "sluice", "typed, Iceberg table (SQLite catalog, local warehouse), a commit per 10 s checkpoint, exactly-once",
                  run_sluice(sluice, w, iceberg(f"{out}/catalog.db", f"{out}/wh")),
                  count_iceberg(f"{out}/catalog.db", f"{out}/wh"), input_bytes=json_bytes)
        if peers:
            out = fresh(os.path.join(WORK, "out-dlt-iceberg"))
            shutil.rmtree(dlt_dir, ignore_errors=True)
            s.measure(w, "dlt", "types inferred by dlt, Iceberg through pyiceberg (filesystem destination)",
                      [py, dlt_script, head(jsonl, dlt_n, n), "iceberg", dlt_dir, f"file://{out}"],
                      count_parquet(f"{out}/out/events/data/**/*.parquet"), records=dlt_n, env=dlt_env(),
                      input_bytes=per_json * dlt_n)
    if want("json-to-iceberg-s3"):
        w = "json-to-iceberg-s3"
        moto = start_moto()
        s3 = boto3_client(moto.port)
        bucket = f"bench-ice-{os.getpid()}"
        s3.create_bucket(Bucket=bucket)
        conn = (f'endpoint = "http://127.0.0.1:{moto.port}"\n'
                'auth = { access_key_id = "test", secret_access_key = "test" }\n')
        s.measure(w, "sluice s3 parquet", "the same data as Parquet zstd objects (reference: no table)",
                  run_sluice(sluice, w, f'{json_source}[sink]\nconnector = "s3"\nbucket = "{bucket}"\n{conn}'
                             f'format = "parquet"\nprefix = "plain/"\nmax_records = 0\nmax_bytes = 0'),
                  lambda: count_objects(s3, bucket, "plain/"), servers=[moto], input_bytes=json_bytes)
        out = fresh(os.path.join(WORK, "out-iceberg-s3"))
        s.measure(w, "sluice", "typed, Iceberg table on S3 (SQLite catalog), a commit per 10 s checkpoint, exactly-once",
                  run_sluice(sluice, w, iceberg(f"{out}/catalog.db", f"s3://{bucket}/wh", "s3 = { " + conn.replace("\n", ", ").rstrip(", ") + " }\n")),
                  count_iceberg(f"{out}/catalog.db", f"s3://{bucket}/wh", moto.port), servers=[moto], input_bytes=json_bytes)
        moto.stop()

    # 2. CSV and JSON lines -> PostgreSQL, exactly-once
    if want("json-to-postgres") or want("postgres-to-parquet-s3"):
        w = "json-to-postgres"
        fresh_table("bench_events", EVENTS, w)
        s.measure(w, "sluice", "typed into uuid, text[], jsonb, numeric, timestamptz; exactly-once (offsets in the transaction)",
                  run_sluice(sluice, w, f'[source]\nconnector = "file"\npath = "{jsonl}"\n{schema}\n'
                             f'[sink]\nconnector = "postgres"\nurl = "{PG}"\ntable = "bench_events"'),
                  count_table("bench_events"), servers=[pg], input_bytes=json_bytes)
        # the physical reference reads the same rows as PostgreSQL's own CSV
        ref_csv = os.path.join(WORK, "events-pg.csv")
        psql(f"\\copy bench_events TO '{ref_csv}' WITH (FORMAT csv)")
        psql(ddl("bench_copy", EVENTS))
        s.measure(w, "psql \\copy", "COPY FROM of the same rows as PostgreSQL's CSV (physical reference)",
                  ["psql", "-X", "-q", "-d", PG, "-c", f"\\copy bench_copy FROM '{ref_csv}' WITH (FORMAT csv)"],
                  count_table("bench_copy"), servers=[pg], input_bytes=os.path.getsize(ref_csv))
        psql("DROP TABLE bench_copy")
        os.remove(ref_csv)
        if peers and want("json-to-postgres"):
            psql("DROP TABLE IF EXISTS public.bench_sling")
            s.measure(w, "sling", "types inferred (full-refresh), no delivery guarantee",
                      [sling, "run", "--src-stream", f"file://{head(jsonl, peer_n, n)}", "--src-options",
                       "{format: jsonlines, flatten: true}", "--tgt-conn", "PG", "--tgt-object", "public.bench_sling",
                       "--mode", "full-refresh"],
                      count_table("public.bench_sling"), records=peer_n, servers=[pg], env=sling_env(),
                      input_bytes=per_json * peer_n)
            s.note_types("public", "bench_sling")
            psql("DROP SCHEMA IF EXISTS bench_dlt CASCADE")
            shutil.rmtree(dlt_dir, ignore_errors=True)
            s.measure(w, "dlt", "types inferred by dlt, insert statements (at-least-once)",
                      [py, dlt_script, head(jsonl, dlt_n, n), "postgres", dlt_dir],
                      count_table("bench_dlt.events"), records=dlt_n, servers=[pg], env=dlt_env(),
                      input_bytes=per_json * dlt_n)
            s.note_types("bench_dlt", "events")
    if want("csv-to-postgres"):
        w = "csv-to-postgres"
        fresh_table("bench_csv", CSV_EVENTS, w)
        s.measure(w, "sluice", "typed; exactly-once (offsets in the transaction)",
                  run_sluice(sluice, w, f'[source]\nconnector = "file"\npath = "{csv}"\nformat = "csv"\n{csv_schema}\n'
                             f'[sink]\nconnector = "postgres"\nurl = "{PG}"\ntable = "bench_csv"'),
                  count_table("bench_csv"), servers=[pg], input_bytes=csv_bytes)
        psql(ddl("bench_copy", CSV_EVENTS))
        s.measure(w, "psql \\copy", "COPY FROM of the same file (physical reference)",
                  ["psql", "-X", "-q", "-d", PG, "-c", f"\\copy bench_copy FROM '{csv}' WITH (FORMAT csv, HEADER)"],
                  count_table("bench_copy"), servers=[pg], input_bytes=csv_bytes)
        psql("DROP TABLE bench_copy; DROP TABLE bench_csv")
        if peers:
            psql("DROP TABLE IF EXISTS public.bench_sling_csv")
            s.measure(w, "sling", "types inferred (full-refresh), no delivery guarantee",
                      [sling, "run", "--src-stream", f"file://{head(csv, peer_n, n)}", "--tgt-conn", "PG",
                       "--tgt-object", "public.bench_sling_csv", "--mode", "full-refresh"],
                      count_table("public.bench_sling_csv"), records=peer_n, servers=[pg], env=sling_env(),
                      input_bytes=per_csv * peer_n)
            s.note_types("public", "bench_sling_csv")
            psql("DROP TABLE IF EXISTS public.bench_sling_csv")
            s.skip(w, "dlt", "dlt reads CSV only through its filesystem source, which `dlt init` generates")

    # 3. PostgreSQL -> Parquet on S3 (moto), from the table loaded above
    if want("postgres-to-parquet-s3"):
        w = "postgres-to-parquet-s3"
        moto = start_moto()
        s.measure(w, "psql \\copy", "COPY TO /dev/null (physical reference)",
                  ["psql", "-X", "-q", "-d", PG, "-c", "\\copy bench_events TO '/dev/null'"], lambda: n,
                  servers=[pg])
        s3 = boto3_client(moto.port)
        bucket = f"bench-{os.getpid()}"
        s3.create_bucket(Bucket=bucket)
        for order, readers, tool, prefix in (("physical", 1, "sluice", "events/"),
                                             ("physical", 2, "sluice (2 readers)", "ranges/"),
                                             ("key", 1, "sluice (key order)", "keyed/")):
            by = f", {readers} block ranges at once" if readers > 1 else ""
            s.measure(w, tool, f"typed snapshot in {order} order (resumable){by}, Parquet zstd objects of 1M records",
                      run_sluice(sluice, w, f'[source]\nconnector = "postgres"\nurl = "{PG}"\ntables = ["bench_events"]\n'
                                 f'snapshot_order = "{order}"\nsnapshot_readers = {readers}\n'
                                 f'[sink]\nconnector = "s3"\nbucket = "{bucket}"\nendpoint = "http://127.0.0.1:{moto.port}"\n'
                                 'auth = { access_key_id = "test", secret_access_key = "test" }\n'
                                 f'format = "parquet"\nprefix = "{prefix}"\nmax_records = 1000000\nmax_bytes = 0'),
                      lambda: count_objects(s3, bucket, prefix), servers=[pg, moto])
        if peers:
            s.measure(w, "sling", "to S3 Parquet",
                      [sling, "run", "--src-conn", "PG", "--src-stream", "public.bench_events",
                       "--tgt-conn", "S3", "--tgt-object", f"s3://{bucket}/sling/events.parquet"],
                      lambda: count_objects(s3, bucket, "sling/"), servers=[pg, moto], records=n,
                      env={**sling_env(), "S3": json.dumps({"type": "s3", "bucket": bucket, "access_key_id": "test",
                                                            "secret_access_key": "test",
                                                            "endpoint": f"http://127.0.0.1:{moto.port}"})})
            s.measure(w, "dlt", "sql_table (pyarrow backend) to S3 Parquet",
                      [py, dlt_script, "-", "from-postgres", dlt_dir, f"s3://{bucket}/dlt", "bench_events", str(peer_n)],
                      lambda: count_objects(s3, bucket, "dlt/out/bench_events/"), servers=[pg, moto], records=peer_n,
                      env={**dlt_env(), "DESTINATION__FILESYSTEM__CREDENTIALS__AWS_ACCESS_KEY_ID": "test",
                           "DESTINATION__FILESYSTEM__CREDENTIALS__AWS_SECRET_ACCESS_KEY": "test",
                           "DESTINATION__FILESYSTEM__CREDENTIALS__ENDPOINT_URL": f"http://127.0.0.1:{moto.port}",
                           "DESTINATION__FILESYSTEM__CREDENTIALS__REGION_NAME": "us-east-1"})
        empty_bucket(s3, bucket)
        moto.stop()

    # 3b. JSON lines -> MariaDB, MariaDB -> Parquet
    if want("json-to-mysql") or want("mysql-to-parquet"):
        mysql_workloads(s, sluice, sling, jsonl, n, peer_n, per_json, json_bytes, schema, peers, want)

    # 4. JSON lines -> Kafka, Kafka -> PostgreSQL upsert
    if want("json-to-kafka") or want("kafka-to-postgres"):
        parts = json_bytes // 1_500_000 + 1
        # the mock cluster serves until its stdin closes
        # group.initial.rebalance.delay.ms = 0, as a test broker is usually set: the
        # consumer figure is the pipeline's, not a 3 s wait for more group members
        broker = subprocess.Popen([mock, "--rebalance-delay-ms", "0", "1", f"sluice:{parts}", f"kcat:{parts}"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        boot = broker.stdout.readline().strip()
        bk = Process("broker", broker)
        try:
            w = "json-to-kafka"
            s.measure(w, "sluice", "typed (declared schema), JSON values keyed by id, idempotent producer",
                      run_sluice(sluice, w, f'[source]\nconnector = "file"\npath = "{jsonl}"\n{schema}\n'
                                 f'[sink]\nconnector = "kafka"\nbootstrap_servers = "{boot}"\ntopic = "sluice"\n'
                                 'key = ["id"]\ncompression = "none"'),
                      lambda: topic_end(boot, "sluice"), servers=[bk], input_bytes=json_bytes)
            s.measure(w, "kcat", "each line as a message, unkeyed, untyped (physical reference)",
                      ["kcat", "-P", "-b", boot, "-t", "kcat", "-l", "-X", "enable.idempotence=true", jsonl],
                      lambda: topic_end(boot, "kcat"), servers=[bk], input_bytes=json_bytes)
            if peers:
                s.skip(w, "sling", "Sling has no Kafka target")
                s.skip(w, "dlt", "dlt has no Kafka destination")
            w = "kafka-to-postgres"
            s.measure(w, "kcat", "reads every message to /dev/null (read reference)",
                      ["kcat", "-C", "-b", boot, "-t", "sluice", "-e", "-q", "-o", "beginning"],
                      lambda: n, servers=[bk])
            fresh_table("bench_kafka", EVENTS, w)
            s.measure(w, "sluice", "consumer group, typed, upsert by id, exactly-once (offsets in the transaction)",
                      run_sluice(sluice, w, f'[source]\nconnector = "kafka"\nbootstrap_servers = "{boot}"\n'
                                 f'topics = ["sluice"]\nbounded = true\n{schema}\n'
                                 f'[sink]\nconnector = "postgres"\nurl = "{PG}"\ntable = "bench_kafka"\n'
                                 'mode = "upsert"\nkey = ["id"]'),
                      count_table("bench_kafka"), servers=[bk, pg])
            psql("DROP TABLE bench_kafka")
            if peers:
                s.skip(w, "sling", "Sling has no Kafka source")
                s.skip(w, "dlt", "dlt has no Kafka source outside its verified-sources template")
        finally:
            broker.kill()

    # 5. JSON lines -> NATS JetStream, JetStream -> JSON lines (a private nats-server)
    if want("json-to-nats") or want("nats-to-json"):
        port = free_port()
        store = fresh(os.path.join(WORK, "nats-store"))
        server = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"nats://127.0.0.1:{port}"
        ns = Process("nats-server", server)
        try:
            wait_port(port)
            nats_py(url, "await js.add_stream(name='SLUICE', subjects=['sluice.>'])\n"
                         "await js.add_stream(name='PY', subjects=['py.>'])")
            py_n = min(args.peer_records, n)
            w = "json-to-nats"
            s.measure(w, "sluice", "typed (declared schema), JetStream publishes with message ids, every ack awaited",
                      run_sluice(sluice, w, f'[source]\nconnector = "file"\npath = "{jsonl}"\n{schema}\n'
                                 f'[sink]\nconnector = "nats"\nurl = "{url}"\nsubject = "sluice.events"\nmsg_id = "ordinal"'),
                      lambda: stream_messages(url, "SLUICE"), servers=[ns], input_bytes=json_bytes)
            s.measure(w, "nats-py", "each line as a JetStream publish, 256 acks awaited at a time, untyped",
                      [sys.executable, "-c", NATS_PUB, url, head(jsonl, py_n, n), "py.events"],
                      lambda: stream_messages(url, "PY"), records=py_n, servers=[ns],
                      input_bytes=per_json * py_n)
            w = "nats-to-json"
            out = fresh(os.path.join(WORK, "out-nats"))
            s.measure(w, "sluice", "durable pull consumer, typed, acked after each checkpoint, exactly-once file sink",
                      run_sluice(sluice, w, f'[source]\nconnector = "nats"\nurl = "{url}"\nstream = "SLUICE"\n'
                                 f'bounded = true\n{schema}\n'
                                 f'[sink]\nconnector = "file"\npath = "{out}"\nformat = "json"\nmax_records = 0\nmax_bytes = 0'),
                      count_lines(f"{out}/*.jsonl"), servers=[ns])
            out = os.path.join(WORK, "out-nats-py.jsonl")
            s.measure(w, "nats-py", "pull consumer, batches of 1000, the last of each acked, payloads to a file",
                      [sys.executable, "-c", NATS_SUB, url, "SLUICE", str(py_n), out],
                      count_lines(out), records=py_n, servers=[ns])
            if peers:
                for w in ["json-to-nats", "nats-to-json"]:
                    s.skip(w, "sling", "Sling has no NATS connector")
                    s.skip(w, "dlt", "dlt has no NATS source or destination")
        finally:
            server.kill()

    # 6. Redis streams, RabbitMQ queues, MQTT topics, each both ways against a Python
    #    client doing the same on the same broker (private redis-server and mosquitto;
    #    the machine's RabbitMQ)
    py_n = min(args.peer_records, n)
    if want("json-to-redis") or want("redis-to-json"):
        port = free_port()
        server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rs = Process("redis-server", server)
        url = f"redis://127.0.0.1:{port}"
        try:
            wait_port(port)
            w = "json-to-redis"
            s.measure(w, "sluice", "typed, each record an XADD entry (JSON body), one MULTI/EXEC with the offsets per checkpoint",
                      run_sluice(sluice, w, f'[source]\nconnector = "file"\npath = "{jsonl}"\n{schema}\n'
                                 f'[sink]\nconnector = "redis"\nurl = "{url}"\nstream = "sluice"'),
                      lambda: redis_len(port, "sluice"), servers=[rs], input_bytes=json_bytes)
            s.measure(w, "redis-py", "each line an XADD (field body), pipelined by 1000, untyped",
                      [sys.executable, "-c", REDIS_PUB, str(port), head(jsonl, py_n, n), "py"],
                      lambda: redis_len(port, "py"), records=py_n, servers=[rs], input_bytes=per_json * py_n)
            s.measure(w, "redis-benchmark", "XADD of one small field, pipelined by 100 (the server's own tool)",
                      ["redis-benchmark", "-p", str(port), "-n", str(n), "-P", "100", "-q",
                       "XADD", "bench", "*", "id", "1"],
                      lambda: redis_len(port, "bench"), servers=[rs])
            # the same with a body field the size of sluice's (an average JSON line)
            body = "x" * round(per_json)
            s.measure(w, "redis-benchmark-body", f"XADD of a {len(body)}-byte body field, pipelined by 100 (the server's own tool)",
                      ["redis-benchmark", "-p", str(port), "-n", str(n), "-P", "100", "-q",
                       "XADD", "bench-body", "*", "body", body],
                      lambda: redis_len(port, "bench-body"), servers=[rs])
            w = "redis-to-json"
            out = fresh(os.path.join(WORK, "out-redis"))
            s.measure(w, "sluice", "consumer group, typed (JSON body), XACK after each checkpoint, exactly-once file sink",
                      run_sluice(sluice, w, f'[source]\nconnector = "redis"\nurl = "{url}"\nstream = "sluice"\n'
                                 f'bounded = true\n{schema}\n'
                                 f'[sink]\nconnector = "file"\npath = "{out}"\nformat = "json"\nmax_records = 0\nmax_bytes = 0'),
                      count_lines(f"{out}/*.jsonl"), servers=[rs])
            out = os.path.join(WORK, "out-redis-py.jsonl")
            s.measure(w, "redis-py", "XREADGROUP by 1000, XACK of each read, bodies to a file",
                      [sys.executable, "-c", REDIS_SUB, str(port), "py", str(py_n), out],
                      count_lines(out), records=py_n, servers=[rs])
        finally:
            server.kill()
    if want("json-to-rabbitmq") or want("rabbitmq-to-json"):
        amqp = os.environ.get("SLUICE_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2f")
        # the broker's own CPU: on 2 cores it is what bounds a reader
        broker = Running.find("rabbitmq", "beam.smp.*rabbit")
        for q in ["bench_sluice", "bench_py"]:
            pika_run(amqp, f"ch.queue_delete('{q}')\nch.queue_declare('{q}', durable=True)")
        w = "json-to-rabbitmq"
        s.measure(w, "sluice", "typed, persistent mandatory publishes, every publisher confirm awaited",
                  run_sluice(sluice, w, f'[source]\nconnector = "file"\npath = "{jsonl}"\n{schema}\n'
                             f'[sink]\nconnector = "rabbitmq"\nurl = "{amqp}"\nrouting_key = "bench_sluice"'),
                  lambda: queue_len(amqp, "bench_sluice"), servers=broker, input_bytes=json_bytes)
        s.measure(w, "pika", "each line a persistent publish with publisher confirms (blocking), untyped",
                  [sys.executable, "-c", PIKA_PUB, amqp, head(jsonl, py_n, n), "bench_py"],
                  lambda: queue_len(amqp, "bench_py"), servers=broker, records=py_n, input_bytes=per_json * py_n)
        w = "rabbitmq-to-json"
        out = fresh(os.path.join(WORK, "out-rabbitmq"))
        s.measure(w, "sluice", "manual acks (multiple) after each checkpoint, prefetch 10,000, typed, file sink",
                  run_sluice(sluice, w, f'[source]\nconnector = "rabbitmq"\nurl = "{amqp}"\nqueue = "bench_sluice"\n'
                             f'bounded = true\n{schema}\n'
                             f'[sink]\nconnector = "file"\npath = "{out}"\nformat = "json"\nmax_records = 0\nmax_bytes = 0'),
                  count_lines(f"{out}/*.jsonl"), servers=broker)
        out = os.path.join(WORK, "out-rabbitmq-py.jsonl")
        s.measure(w, "pika", "basic_consume, prefetch 1000, ack multiple every 1000, bodies to a file",
                  [sys.executable, "-c", PIKA_SUB, amqp, "bench_py", str(py_n), out],
                  count_lines(out), servers=broker, records=py_n)
        for q in ["bench_sluice", "bench_py"]:
            pika_run(amqp, f"ch.queue_delete('{q}')")
    if want("json-to-mqtt") or want("mqtt-to-json"):
        port = free_port()
        store = fresh(os.path.join(WORK, "mosquitto"))
        conf = os.path.join(store, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n")
        server = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ms = Process("mosquitto", server)
        url = f"mqtt://127.0.0.1:{port}"
        try:
            wait_port(port)
            out = fresh(os.path.join(WORK, "out-mqtt"))
            reader = (f'[source]\nconnector = "mqtt"\nurl = "{url}"\ntopics = ["bench/#"]\nclient_id = "bench"\n'
                      f'bounded = true\nmax_in_flight = 65535\n{schema}\n'
                      f'[sink]\nconnector = "file"\npath = "{out}"\nformat = "json"\nmax_records = 0\nmax_bytes = 0')
            # the session first, so the broker keeps what is published for it
            subprocess.run(run_sluice(sluice, "mqtt-session", reader), check=True, capture_output=True)
            subprocess.run([sys.executable, "-c", PAHO_SESSION, str(port), "py-bench", "py/#"], check=True)
            w = "json-to-mqtt"
            s.measure(w, "sluice", "typed, QoS 1 publishes, every PUBACK awaited",
                      run_sluice(sluice, w, f'[source]\nconnector = "file"\npath = "{jsonl}"\n{schema}\n'
                                 f'[sink]\nconnector = "mqtt"\nurl = "{url}"\ntopic = "bench/events"'),
                      lambda: n, servers=[ms], input_bytes=json_bytes)
            s.measure(w, "paho-mqtt", "each line a QoS 1 publish, every PUBACK awaited, untyped",
                      [sys.executable, "-c", PAHO_PUB, str(port), head(jsonl, py_n, n), "py/events"],
                      lambda: py_n, records=py_n, servers=[ms], input_bytes=per_json * py_n)
            w = "mqtt-to-json"
            s.measure(w, "sluice", "persistent session, QoS 1, PUBACK after each checkpoint, typed, file sink",
                      run_sluice(sluice, w, reader), count_lines(f"{out}/*.jsonl"), servers=[ms])
            pout = os.path.join(WORK, "out-mqtt-py.jsonl")
            s.measure(w, "paho-mqtt", "persistent session, QoS 1, automatic PUBACKs, payloads to a file",
                      [sys.executable, "-c", PAHO_SUB, str(port), "py-bench", "py/#", str(py_n), pout],
                      count_lines(pout), records=py_n, servers=[ms])
        finally:
            server.kill()
    if peers:
        for w in ["json-to-redis", "redis-to-json", "json-to-rabbitmq", "rabbitmq-to-json", "json-to-mqtt", "mqtt-to-json"]:
            if want(w):
                s.skip(w, "sling", "Sling has no connector for it")
                s.skip(w, "dlt", "dlt has no source or destination for it")

    # 7. SQL transforms: JSON lines -> SQL -> Parquet against DuckDB running the same
    #    SELECT over the same file; the engine alone (datagen -> SQL -> blackhole); and a
    #    query the built-in transforms can say, both ways
    if want("json-sql-parquet"):
        w = "json-sql-parquet"
        kept = sum(1 for line in open(jsonl) if json.loads(line).get("country") in SQL_COUNTRIES)
        rows = lambda pattern: (lambda: n if count_parquet(pattern)() == kept else -1)
        out = fresh(os.path.join(WORK, "out-sql"))
        s.measure(w, "sluice", "typed; SQL: 6 columns, upper/lower, a CASE, WHERE keeping ~half; Parquet zstd, exactly-once",
                  run_sluice(sluice, w, f'[source]\nconnector = "file"\npath = "{jsonl}"\n{schema}\n'
                             f'[[transforms]]\ntype = "sql"\nquery = """{SQL_QUERY}"""\n'
                             f'[sink]\nconnector = "file"\npath = "{out}"\nformat = "parquet"\nmax_records = 0\nmax_bytes = 0'),
                  rows(f"{out}/*.parquet"), input_bytes=json_bytes)
        if duckdb_ok():
            out = fresh(os.path.join(WORK, "out-duckdb"))
            s.measure(w, "duckdb", "the same SELECT over read_json (declared types) into Parquet zstd, all cores",
                      [sys.executable, "-c", DUCKDB_COPY, jsonl, SQL_QUERY, os.path.join(out, "out.parquet")],
                      rows(f"{out}/*.parquet"), input_bytes=json_bytes)
        else:
            s.skip(w, "duckdb", "duckdb did not install")
    if want("datagen-sql-blackhole"):
        w = "datagen-sql-blackhole"
        gen = f'[source]\nconnector = "datagen"\ncount = {n}\nnull_rate = 0.05\n'
        s.measure(w, "sluice", "engine + the SQL above (6 columns, 2 functions, a CASE, WHERE ~half)",
                  run_sluice(sluice, w, f'{gen}[[transforms]]\ntype = "sql"\nquery = """{SQL_QUERY}"""\n'
                             '[sink]\nconnector = "blackhole"', interval="1h"), lambda: n)
    if want("datagen-select-blackhole"):
        w = "datagen-select-blackhole"
        gen = f'[source]\nconnector = "datagen"\ncount = {n}\nnull_rate = 0.05\n'
        s.measure(w, "sluice", "SQL: SELECT 6 columns WHERE amount >= 250",
                  run_sluice(sluice, f"{w}-sql", f'{gen}[[transforms]]\ntype = "sql"\nquery = """{SQL_SELECT}"""\n'
                             '[sink]\nconnector = "blackhole"', interval="1h"), lambda: n)
        s.measure(w, "sluice built-ins", "the same as a filter and a select transform",
                  run_sluice(sluice, f"{w}-builtin", f'{gen}{BUILTIN_SELECT}[sink]\nconnector = "blackhole"',
                             interval="1h"), lambda: n)

    # 8. engine overhead
    if want("datagen-to-blackhole"):
        w = "datagen-to-blackhole"
        for interval, what in [("1h", "one checkpoint at the end"), ("1ms", "a checkpoint after every batch")]:
            s.measure(w, "sluice", f"engine only; {what}",
                      run_sluice(sluice, f"{w}-{interval}", f'[source]\nconnector = "datagen"\ncount = {n}\n'
                                 'null_rate = 0.05\n[sink]\nconnector = "blackhole"', interval=interval),
                      lambda: n)
            with open(s.results[-1]["stdout"]) as f:
                found = re.findall(r"(\d+) checkpoints", f.read())
            s.results[-1]["checkpoints"] = int(found[-1]) if found else None
            s.results[-1]["work"] += f" ({s.results[-1]['checkpoints']} checkpoints)"

    report(s, sling, py)
    if s.failed:
        sys.exit(f"sluice failed or miscounted: {', '.join(s.failed)}")


SQL_COUNTRIES = ("DE", "FR", "US", "JP")
SQL_QUERY = """
SELECT id, ts, user_id, upper(event) AS event, lower(country) AS country,
       CASE WHEN amount >= 500 THEN 'high' ELSE 'low' END AS tier
FROM input WHERE country IN ('DE', 'FR', 'US', 'JP')
"""
SQL_SELECT = "SELECT id, ts, user_id, event, country, amount FROM input WHERE amount >= 250"
BUILTIN_SELECT = """[[transforms]]
type = "filter"
field = "amount"
op = "ge"
value = 250
[[transforms]]
type = "select"
fields = ["id", "ts", "user_id", "event", "country", "amount"]
"""

# DuckDB: the same SELECT, `input` being the JSON lines file read with the declared types
DUCKDB_COPY = r'''
import sys, duckdb
src, query, out = sys.argv[1:4]
columns = {"id": "BIGINT", "ts": "TIMESTAMPTZ", "user_id": "BIGINT", "uuid": "VARCHAR", "event": "VARCHAR",
           "country": "VARCHAR", "amount": "DECIMAL(12,2)", "mobile": "BOOLEAN", "tags": "VARCHAR[]",
           "payload": "VARCHAR"}
con = duckdb.connect()
con.execute(f"CREATE VIEW input AS SELECT * FROM read_json('{src}', format = 'newline_delimited', columns = {columns})")
con.execute(f"COPY ({query}) TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
'''


def duckdb_ok():
    """DuckDB's Python package in this interpreter (installed on first use)."""
    if subprocess.run([sys.executable, "-c", "import duckdb"], capture_output=True).returncode:
        log("installing duckdb")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "duckdb"])
    return subprocess.run([sys.executable, "-c", "import duckdb"], capture_output=True).returncode == 0


NATS_PUB = r'''
import asyncio, sys, nats
async def main(url, path, subject):
    nc = await nats.connect(url)
    js = nc.jetstream()
    pending = []
    with open(path, "rb") as f:
        for line in f:
            pending.append(asyncio.ensure_future(js.publish(subject, line.rstrip(b"\n"))))
            if len(pending) >= 256:
                await asyncio.gather(*pending)
                pending = []
    await asyncio.gather(*pending)
    await nc.close()
asyncio.run(main(*sys.argv[1:4]))
'''

NATS_SUB = r'''
import asyncio, sys, nats
from nats.js.api import ConsumerConfig, AckPolicy
async def main(url, stream, want, path):
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(stream.lower() + ".>", durable=None, stream=stream,
                                  config=ConsumerConfig(ack_policy=AckPolicy.ALL))
    got = 0
    with open(path, "wb") as out:
        while got < int(want):
            msgs = await sub.fetch(min(1000, int(want) - got), timeout=10)
            for m in msgs:
                out.write(m.data + b"\n")
            got += len(msgs)
            await msgs[-1].ack()
    await nc.close()
asyncio.run(main(*sys.argv[1:5]))
'''


REDIS_PUB = r'''
import sys, redis
port, path, key = sys.argv[1:4]
r = redis.Redis(port=int(port))
p = r.pipeline(transaction=False)
with open(path, "rb") as f:
    for i, line in enumerate(f, 1):
        p.xadd(key, {"body": line.rstrip(b"\n")})
        if i % 1000 == 0:
            p.execute()
p.execute()
'''

REDIS_SUB = r'''
import sys, redis
port, key, want, path = sys.argv[1:5]
r = redis.Redis(port=int(port))
r.xgroup_create(key, "py", id="0", mkstream=True)
got = 0
with open(path, "wb") as out:
    while got < int(want):
        reply = r.xreadgroup("py", "c", {key: ">"}, count=1000, block=5000)
        entries = reply[0][1] if reply else []
        for _, fields in entries:
            out.write(fields[b"body"] + b"\n")
        if entries:
            r.xack(key, "py", *[i for i, _ in entries])
        got += len(entries)
'''

PIKA_PUB = r'''
import sys, pika
url, path, queue = sys.argv[1:4]
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()
ch.confirm_delivery()
props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
with open(path, "rb") as f:
    for line in f:
        ch.basic_publish("", queue, line.rstrip(b"\n"), props, mandatory=True)
conn.close()
'''

PIKA_SUB = r'''
import sys, pika
url, queue, want, path = sys.argv[1:5]
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()
ch.basic_qos(prefetch_count=1000)
got = 0
with open(path, "wb") as out:
    for m, props, body in ch.consume(queue, inactivity_timeout=10):
        if m is None:
            break
        out.write(body + b"\n")
        got += 1
        if got % 1000 == 0 or got == int(want):
            ch.basic_ack(m.delivery_tag, multiple=True)
        if got >= int(want):
            break
conn.close()
'''

PAHO_SESSION = r'''
import sys, time
import paho.mqtt.client as mqtt
port, cid, topic = sys.argv[1:4]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
c.connect("127.0.0.1", int(port))
c.loop_start()
c.subscribe(topic, qos=1)
time.sleep(0.5)
c.disconnect()
c.loop_stop()
'''

PAHO_PUB = r'''
import sys
import paho.mqtt.client as mqtt
port, path, topic = sys.argv[1:4]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="py-pub")
c.max_inflight_messages_set(1000)
c.max_queued_messages_set(0)
c.connect("127.0.0.1", int(port))
c.loop_start()
infos = []
with open(path, "rb") as f:
    for line in f:
        infos.append(c.publish(topic, line.rstrip(b"\n"), qos=1))
        if len(infos) == 10000:  # packet ids run out at 65535 in flight or queued
            for i in infos:
                i.wait_for_publish(60)
            infos = []
for i in infos:
    i.wait_for_publish(60)
c.disconnect()
c.loop_stop()
'''

PAHO_SUB = r'''
import sys, threading
import paho.mqtt.client as mqtt
port, cid, topic, want, path = sys.argv[1:6]
done = threading.Event()
out = open(path, "wb")
got = [0]
def on_message(c, u, m):
    out.write(m.payload + b"\n")
    got[0] += 1
    if got[0] >= int(want):
        done.set()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
c.on_message = on_message
c.connect("127.0.0.1", int(port))
c.subscribe(topic, qos=1)
c.loop_start()
done.wait(600)
c.disconnect()
c.loop_stop()
out.close()
'''


def redis_len(port, key):
    out = subprocess.run(["redis-cli", "-p", str(port), "XLEN", key], capture_output=True, text=True)
    return int(out.stdout.strip() or 0)


def pika_run(url, body):
    import pika
    conn = pika.BlockingConnection(pika.URLParameters(url))
    scope = {"ch": conn.channel(), "pika": pika}
    try:
        exec(body, scope)
        return scope.get("result")
    finally:
        conn.close()


def queue_len(url, queue):
    return pika_run(url, f"result = ch.queue_declare('{queue}', passive=True).method.message_count")


def nats_py(url, body):
    """Runs `body` in an async function with `js` the JetStream context of `url`."""
    import asyncio, nats
    code = "async def _f(js):\n" + "".join(f"    {l}\n" for l in body.splitlines())
    scope = {}
    exec(code, scope)

    async def run():
        nc = await nats.connect(url)
        try:
            return await scope["_f"](nc.jetstream())
        finally:
            await nc.close()
    return asyncio.run(run())


def stream_messages(url, stream):
    return nats_py(url, f"return (await js.stream_info('{stream}')).state.messages")


def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port, limit=20):
    import socket
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def count_dlt_jsonl(out):
    def count():
        import gzip
        n = 0
        for p in glob.glob(f"{out}/out/events/*"):
            opener = gzip.open if p.endswith(".gz") else open
            with opener(p, "rb") as f:
                n += sum(1 for _ in f)
        return n
    return count


def fresh_table(table, columns, pipeline):
    """An empty table, and no offsets stored for the pipeline that loads it."""
    psql(ddl(table, columns))
    if psql("SELECT to_regclass('sluice_offsets') IS NOT NULL") == "t":
        psql(f"DELETE FROM sluice_offsets WHERE pipeline = '{pipeline}'")


MYSQL = "mysql://root@127.0.0.1:3306/test"


def mariadb(sql, *extra):
    """The `mariadb` client against the machine's MariaDB (root, database test)."""
    return subprocess.run(["mariadb", "-h", "127.0.0.1", "-u", "root", "-N", "-B", *extra, "test", "-e", sql],
                          check=True, capture_output=True, text=True).stdout.strip()


class Mariadb:
    """The MariaDB server's CPU (one process, all its threads)."""

    name = "mariadb"

    def __init__(self):
        with open(mariadb("SELECT @@pid_file")) as f:
            self.pid = int(f.read().split()[0])

    def cpu(self):
        return proc_cpu(self.pid, True)

    def mark(self):
        pass

    def settle(self):
        pass


def tsv_of_events(src, out):
    """The events as the tab-separated text LOAD DATA reads (what the sink streams):
    `\\N` for null, backslash escapes, timestamps in UTC, BIT(1) as its byte."""
    def esc(v):
        return v.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\0", "\\0")
    def field(col, v):
        if v is None:
            return b"\\N"
        if col == "ts":
            t = datetime.datetime.fromisoformat(v.replace("Z", "+00:00")).astimezone(datetime.timezone.utc)
            return t.strftime("%Y-%m-%d %H:%M:%S.%f").encode()
        if col == "mobile":
            return b"\x01" if v else b"\x00"
        if col == "tags":
            return esc(json.dumps(v, separators=(",", ":"), ensure_ascii=False)).encode()
        return esc(v if isinstance(v, str) else json.dumps(v)).encode()
    cols = [c for c, *_ in EVENTS]
    with open(src) as f, open(out, "wb") as o:
        for line in f:
            r = json.loads(line)
            o.write(b"\t".join(field(c, r.get(c)) for c in cols) + b"\n")


def mysql_workloads(s, sluice, sling, jsonl, n, peer_n, per_json, json_bytes, schema, peers, want):
    db = Mariadb()
    count = lambda table: lambda: int(mariadb(f"SELECT count(*) FROM {table}") or 0)
    mariadb("DROP TABLE IF EXISTS bench_my, bench_my_ref, bench_my_sling")
    offsets = "SELECT count(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'test' AND TABLE_NAME = 'sluice_offsets'"
    if mariadb(offsets) == "1":
        mariadb("DELETE FROM sluice_offsets WHERE pipeline = 'json-to-mysql'")
    w = "json-to-mysql"
    s.measure(w, "sluice", "typed (decimal, datetime(6), JSON, BIT), LOAD DATA LOCAL INFILE streamed, exactly-once",
              run_sluice(sluice, w, f'[source]\nconnector = "file"\npath = "{jsonl}"\n{schema}\n'
                         f'[sink]\nconnector = "mysql"\nurl = "{MYSQL}"\ntable = "bench_my"\nkey = ["id"]'),
              count("bench_my"), servers=[db], input_bytes=json_bytes)
    ref = os.path.join(WORK, "events-mysql.tsv")
    tsv_of_events(jsonl, ref)
    mariadb("CREATE TABLE bench_my_ref LIKE bench_my")
    cols = ", ".join(c for c, *_ in EVENTS)
    s.measure(w, "mariadb LOAD DATA", "LOAD DATA LOCAL INFILE of the same rows as a file (physical reference)",
              ["mariadb", "--local-infile=1", "-h", "127.0.0.1", "-u", "root", "test", "-e",
               f"LOAD DATA LOCAL INFILE '{ref}' INTO TABLE bench_my_ref CHARACTER SET binary ({cols})"],
              count("bench_my_ref"), servers=[db], input_bytes=os.path.getsize(ref))
    os.remove(ref)
    mariadb("DROP TABLE bench_my_ref")
    if peers:
        s.measure(w, "sling", "types inferred (full-refresh), no delivery guarantee",
                  [sling, "run", "--src-stream", f"file://{head(jsonl, peer_n, n)}", "--src-options",
                   "{format: jsonlines, flatten: true}", "--tgt-conn", "MYSQL", "--tgt-object", "test.bench_my_sling",
                   "--mode", "full-refresh"],
                  count("bench_my_sling"), records=peer_n, servers=[db],
                  env={**sling_env(), "MYSQL": MYSQL}, input_bytes=per_json * peer_n)
        mariadb("DROP TABLE IF EXISTS bench_my_sling")
    if want("mysql-to-parquet"):
        w = "mysql-to-parquet"
        s.measure(w, "mariadb --batch", "SELECT * to /dev/null by the client (read reference)",
                  ["sh", "-c", "mariadb --batch -h 127.0.0.1 -u root test -e 'SELECT * FROM bench_my' > /dev/null"],
                  lambda: n, servers=[db])
        out = fresh(os.path.join(WORK, "out-mysql-parquet"))
        s.measure(w, "sluice", "typed snapshot in key order in one consistent snapshot (resumable), Parquet zstd",
                  run_sluice(sluice, w, f'[source]\nconnector = "mysql"\nurl = "{MYSQL}"\ntables = ["bench_my"]\n'
                             f'[sink]\nconnector = "file"\npath = "{out}"\nformat = "parquet"\nmax_records = 0\nmax_bytes = 0'),
                  count_parquet(f"{out}/*.parquet"), servers=[db])
        if peers:
            out = fresh(os.path.join(WORK, "out-sling-mysql"))
            s.measure(w, "sling", "to Parquet",
                      [sling, "run", "--src-conn", "MYSQL", "--src-stream", "test.bench_my",
                       "--tgt-object", f"file://{out}/events.parquet"],
                      count_parquet(f"{out}/**/*.parquet"), records=n, servers=[db],
                      env={**sling_env(), "MYSQL": MYSQL})
    mariadb("DROP TABLE IF EXISTS bench_my")


def topic_end(boot, topic):
    import confluent_kafka
    c = confluent_kafka.Consumer({"bootstrap.servers": boot, "group.id": "ends"})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    total = sum(c.get_watermark_offsets(confluent_kafka.TopicPartition(topic, p), timeout=10)[1] for p in parts)
    c.close()
    return total


class Moto(Process):
    def __init__(self, port):
        log(f"starting moto on port {port}")
        popen = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        super().__init__("s3", popen)
        self.port = port
        import socket
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"moto did not start on port {port}")

    def stop(self):
        self.popen.kill()
        self.popen.wait()


def start_moto():
    return Moto(int(os.environ.get("S3_BENCH_PORT", "9565")))


def boto3_client(port):
    import boto3
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="test",
                        aws_secret_access_key="test", region_name="us-east-1")


def count_objects(s3, bucket, prefix):
    import pyarrow.parquet as pq
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            if o["Key"].endswith(".parquet"):
                body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
                n += pq.ParquetFile(io.BytesIO(body)).metadata.num_rows
    return n


def empty_bucket(s3, bucket):
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=o["Key"])
    s3.delete_bucket(Bucket=bucket)


# --- the report ------------------------------------------------------------------------------


def versions(sling, py):
    def first(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"
    import confluent_kafka
    return {
        "sluice": first(["git", "-C", ROOT, "describe", "--always", "--dirty"]),
        "rustc": first(["rustc", "--version"]).replace("rustc ", ""),
        "postgresql": psql("SHOW server_version"),
        "sling": first([sling, "--version"]).replace("Version: ", ""),
        "dlt": first([py, "-c", "import dlt; print(dlt.__version__)"]),
        "kcat": next((l.split("(")[0].replace("Version ", "").strip() for l in
                      subprocess.run(["kcat", "-V"], capture_output=True, text=True).stdout.splitlines()
                      if l.startswith("Version")), "unknown"),
        "librdkafka (broker: mock cluster)": confluent_kafka.libversion()[0],
        "moto": first([sys.executable, "-c", "import moto; print(moto.__version__)"]),
        "python": platform.python_version(),
    }


def machine():
    with open("/proc/cpuinfo") as f:
        model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "unknown")
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) // 1024 // 1024
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": mem, "kernel": platform.release()}


def report(s, sling, py):
    results = [{k: v for k, v in r.items() if k != "stdout"} for r in s.results]
    data = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "records": s.n, "machine": machine(), "versions": versions(sling, py), "results": results}
    with open(os.path.join(WORK, "results.json"), "w") as f:
        json.dump(data, f, indent=1)
    m = data["machine"]
    lines = [f"{s.n:,} `events` records; {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB; "
             f"{data['date']}", "",
             "| workload | tool | work done | records | records/s | MB/s | CPU-s/M | server CPU-s/M | peak RSS MiB | sluice is |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    by_w = {}
    for r in s.results:
        if r["tool"] == "sluice" and r.get("status") == "ok":
            by_w.setdefault(r["workload"], r["records_per_s"])
    for r in s.results:
        if r.get("status") != "ok":
            reason = r["reason"].replace("|", "/")
            reason = reason if len(reason) <= 140 else reason[:140] + "..."
            lines.append(f"| {r['workload']} | {r['tool']} | {r['status']}: {reason} | | | | | | | |")
            continue
        server = ", ".join(f"{k} {v}" for k, v in r["server_cpu_s_per_m"].items())
        ratio = ""
        if r["tool"] != "sluice" and r["workload"] in by_w:
            ratio = f"{by_w[r['workload']] / r['records_per_s']:.2f}x"
        lines.append(f"| {r['workload']} | {r['tool']} | {r['work']} | {r['records']:,} | {r['records_per_s']:,} | "
                     f"{r['mb_per_s'] or ''} | {r['cpu_s_per_m']} | {server} | {r['peak_rss_mib']} | {ratio} |")
    types = [f"- {r['workload']} / {r['tool']}: {r['types']}" for r in s.results if r.get("types")]
    if types:
        lines += ["", "Column types of the tables the peers created:", *types]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items())]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(WORK, "results.md"), "w") as f:
        f.write(text)
    print(text)
    log(f"results: {WORK}/results.md and results.json")


if __name__ == "__main__":
    main()
