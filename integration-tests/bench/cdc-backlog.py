#!/usr/bin/env python3
"""CDC throughput on a backlog: ROWS changes (inserts in transactions of TXN = 100,000, plus
one update of every tenth row) wait in the slot, then the pipeline starts and streams
them into a PostgreSQL upsert sink and, separately, into Parquet files. Prints changes/s,
the runtime's peak resident memory, the CPU the server's WAL sender spent per
million changes (decoding and sending: what the replication protocol saves against
peeking), and the CPU the runtime spent per million changes.

    python3 integration-tests/bench/cdc-backlog.py [ROWS]     # default 5,000,000

SLUICE=path/to/sluice picks the binary (default: the release build); ONLY=pg or
ONLY=parquet runs one of the two; TXN=ROWS writes the inserts as one transaction.
"""

import glob
import os
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/sluice-target"))
PG = os.environ.get("PG_URL", "postgres://postgres@127.0.0.1:5432/test")
WORK = os.path.join(os.environ.get("BENCH_DIR", os.path.expanduser("~/.cache/sluice-bench")), "cdc-backlog")
ROWS = int(sys.argv[1]) if len(sys.argv) > 1 else 5_000_000
TICK = os.sysconf("SC_CLK_TCK")


def psql(sql):
    return subprocess.run(["psql", "-X", "-q", "-At", "-d", PG, "-v", "ON_ERROR_STOP=1", "-c", sql],
                          check=True, capture_output=True, text=True).stdout.strip()


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:
        return 0.0


def peak_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def reset(name):
    psql(f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'sluice_{name}'")
    psql(f"DROP PUBLICATION IF EXISTS sluice_{name}")
    psql("DO $$ BEGIN IF to_regclass('public.sluice_offsets') IS NOT NULL THEN "
         f"DELETE FROM sluice_offsets WHERE pipeline = '{name}'; END IF; END $$")


def pipeline(name, sink):
    path = os.path.join(WORK, f"{name}.toml")
    with open(path, "w") as f:
        f.write(f'name = "{name}"\n[source]\nconnector = "postgres"\nurl = "{PG}"\n'
                f'tables = ["bench_cdcb_src"]\nmode = "cdc"\n[sink]\n{sink}\n'
                f'[checkpoint]\npath = "{WORK}/{name}.db"\ninterval = "1s"\n')
    return path


def start(sluice, path):
    return subprocess.Popen([sluice, "run", "--quiet", path], stdout=subprocess.DEVNULL,
                            stderr=open(path + ".log", "a"))


def walsender(name):
    pid = psql(f"SELECT pid FROM pg_stat_replication WHERE application_name = 'sluice {name}'")
    return int(pid) if pid else None


def parquet_rows():
    import pyarrow.parquet as pq
    total = 0
    for p in glob.glob(os.path.join(WORK, "pq", "*.parquet")):
        try:
            total += pq.read_metadata(p).num_rows
        except Exception:
            pass
    return total


def main():
    sluice = os.environ.get("SLUICE", os.path.join(TARGET, "release", "sluice"))
    if "SLUICE" not in os.environ:
        subprocess.run(["cargo", "build", "--release", "-p", "runtime", "--bin", "sluice", "--quiet"],
                       cwd=ROOT, check=True)
    subprocess.run(["rm", "-rf", WORK], check=True)
    os.makedirs(WORK)
    changes = ROWS + ROWS // 10
    runs = {
        "bench_cdcb_pg": (f'connector = "postgres"\nurl = "{PG}"\ntable = "bench_cdcb_dst"\n'
                          'mode = "upsert"\nkey = ["id"]',
                          lambda: psql("SELECT to_regclass('bench_cdcb_dst') IS NOT NULL") == "t"
                          and int(psql("SELECT count(*) FROM bench_cdcb_dst WHERE n < 0")) >= ROWS // 10
                          and int(psql("SELECT count(*) FROM bench_cdcb_dst")) >= ROWS),
        "bench_cdcb_pq": (f'connector = "file"\npath = "{WORK}/pq"\nformat = "parquet"',
                          lambda: parquet_rows() >= changes),
    }
    only = os.environ.get("ONLY")
    if only:
        runs = {k: v for k, v in runs.items() if k == {"pg": "bench_cdcb_pg", "parquet": "bench_cdcb_pq"}[only]}
    psql("DROP TABLE IF EXISTS bench_cdcb_src, bench_cdcb_dst")
    psql("CREATE TABLE bench_cdcb_src (id bigint PRIMARY KEY, n integer, amount numeric(12,2), "
         "at timestamptz, v text); ALTER TABLE bench_cdcb_src REPLICA IDENTITY FULL")
    # each pipeline's first run: the (empty) snapshot, and its slot
    paths = {}
    for name, (sink, _) in runs.items():
        reset(name)
        paths[name] = pipeline(name, sink)
        p = start(sluice, paths[name])
        for _ in range(100):
            if walsender(name):
                break
            time.sleep(0.1)
        p.terminate()
        p.wait()
    print(f"writing the backlog: {ROWS:,} inserts and {ROWS // 10:,} updates", file=sys.stderr)
    txn = int(os.environ.get("TXN", "100000"))
    for lo in range(0, ROWS, txn):
        psql(f"INSERT INTO bench_cdcb_src SELECT g, g, g / 100.0, now(), 'row ' || g "
             f"FROM generate_series({lo + 1}, {min(lo + txn, ROWS)}) g")
    psql("UPDATE bench_cdcb_src SET n = -n WHERE id % 10 = 0")
    for name, (_, done) in runs.items():
        started = time.time()
        p = start(sluice, paths[name])
        sender, sender_cpu, peak = None, 0.0, 0.0
        try:
            finished = done()
        except subprocess.CalledProcessError:
            finished = False
        while not finished:
            sender = sender or walsender(name)
            if sender:
                sender_cpu = max(sender_cpu, cpu_seconds(sender))
            peak = max(peak, peak_mib(p.pid))
            if p.poll() is not None:
                sys.exit(f"{name} ended early; see {paths[name]}.log")
            time.sleep(0.5)
            finished = done()
        took = time.time() - started
        if sender:
            sender_cpu = max(sender_cpu, cpu_seconds(sender))
        peak = max(peak, peak_mib(p.pid))
        runtime_cpu = cpu_seconds(p.pid)
        p.terminate()
        p.wait()
        reset(name)
        print(f"{name}: {changes:,} changes in {took:.1f} s = {changes / took:,.0f} changes/s, "
              f"peak RSS {peak:.0f} MiB, WAL sender CPU {sender_cpu / (changes / 1e6):.2f} s per million changes, "
              f"runtime CPU {runtime_cpu / (changes / 1e6):.2f} s per million changes")
    psql("DROP TABLE IF EXISTS bench_cdcb_src, bench_cdcb_dst")


if __name__ == "__main__":
    main()
