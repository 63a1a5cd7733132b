#!/usr/bin/env python3
"""Several runtimes on one pipeline (`[checkpoint] store = "postgres"`): figures.

    python3 integration-tests/bench/shared.py [--files 40] [--rows 50000] [--repeat 5]

With the release `sluice` binary (cargo build --release -p runtime --bin sluice):

1. file -> blackhole and file -> PostgreSQL over the same files, with the local
   SQLite store (one runtime) and with the shared PostgreSQL store: one runtime
   reading 1, 2 and 3 splits at once (`splits_at_once`), then 2 and 3 runtimes
   started at once on this machine (2 at once each), the setups taken in turn
   `--repeat` times, medians: records/s from the first start to the
   last exit, records counted at the destination (count(*)) or from the runtimes'
   `sluice offsets show`;
2. the lease table under load: `sluice_splits` filled with 100,000 splits, and
   pgbench running the runtime's statements from 100 clients at once: a claim
   followed by the split's finish (each client holds one lease at a time, as a
   runtime does), and lease renewals: statements/s and latency, for the model of 100
   runtimes in the summary.

Everything runs against $PG_URL (default the test server) in tables named
`bench_shared*`, dropped first. Prints a Markdown table.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/sluice-target"))
SLUICE = os.path.join(TARGET, "release", "sluice")
PG = os.environ.get("PG_URL", "postgres://postgres@127.0.0.1:5432/test")

SCHEMA = ('schema = [{ name = "id", type = "int64", nullable = false }, '
          '{ name = "file", type = "int32" }, { name = "amount", type = "decimal(12,2)" }, '
          '{ name = "note", type = "string" }]')


def psql(sql):
    out = subprocess.run(["psql", "-X", "-A", "-t", "-q", "-d", PG, "-c", sql],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def make_files(d, files, rows):
    os.makedirs(os.path.join(d, "in"), exist_ok=True)
    for f in range(files):
        with open(os.path.join(d, "in", "f%03d.jsonl" % f), "w") as out:
            base = f * rows
            out.writelines('{"id": %d, "file": %d, "amount": "%d.%02d", "note": "row %d of file %d"}\n'
                           % (base + i, f, i, i % 100, i, f) for i in range(rows))


def pipeline(d, name, sink, shared, at_once):
    if sink == "postgres":
        sink_toml = '[sink]\nconnector = "postgres"\nurl = "%s"\ntable = "%s"\n' % (PG, name)
    else:
        sink_toml = '[sink]\nconnector = "blackhole"\n'
    store = ('[checkpoint]\nstore = "postgres"\nurl = "%s"\nsplits_at_once = %d\n' % (PG, at_once)
             if shared else "")
    path = os.path.join(d, name + ".toml")
    with open(path, "w") as f:
        f.write('name = "%s"\n[source]\nconnector = "file"\npath = "in/*.jsonl"\n%s\n%s%s'
                % (name, SCHEMA, sink_toml, store))
    return path


def forget(name):
    psql("DROP TABLE IF EXISTS \"%s\"; DO $$ BEGIN "
         "IF to_regclass('public.sluice_splits') IS NOT NULL THEN "
         "DELETE FROM sluice_splits WHERE pipeline = '%s'; "
         "DELETE FROM sluice_split_claims WHERE pipeline = '%s'; "
         "DELETE FROM sluice_imports WHERE pipeline = '%s'; END IF; "
         "IF to_regclass('public.sluice_offsets') IS NOT NULL THEN "
         "DELETE FROM sluice_offsets WHERE pipeline = '%s' OR pipeline LIKE '%s.split-%%'; END IF; END $$"
         % (name, name, name, name, name, name))


def run(d, name, sink, runtimes, total, at_once=2):
    shared = runtimes > 0
    forget(name)
    state = os.path.join(d, ".sluice")
    subprocess.run(["rm", "-rf", state], check=True)
    toml = pipeline(d, name, sink, shared, at_once)
    start = time.monotonic()
    procs = [subprocess.Popen([SLUICE, "run", "--quiet", toml], cwd=d,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(max(runtimes, 1))]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            sys.exit("sluice failed: %s" % err.decode()[-2000:])
    wall = time.monotonic() - start
    if sink == "postgres":
        got = int(psql('SELECT count(*) FROM "%s"' % name))
        if got != total:
            sys.exit("%s: %d rows of %d" % (name, got, total))
    elif shared:
        got = int(psql("SELECT coalesce(sum((offsets::json->'splits'->>'_sluice.records')::int8), 0) "
                       "FROM sluice_splits WHERE pipeline = '%s'" % name))
        if got != total:
            sys.exit("%s: %d records of %d" % (name, got, total))
    return total / wall, wall


def leases(clients, seconds):
    """pgbench running the claim and renewal statements against 100,000 splits."""
    psql("DELETE FROM sluice_splits WHERE pipeline = 'bench_leases'; "
         "DELETE FROM sluice_split_claims WHERE pipeline = 'bench_leases'; "
         "INSERT INTO sluice_splits (pipeline, split) "
         "SELECT 'bench_leases', 'split-' || lpad(g::text, 6, '0') FROM generate_series(1, 100000) g")
    claim = (
        "WITH c AS (SELECT split, CASE WHEN lease_until IS NOT NULL THEN owner END AS was "
        "FROM sluice_splits WHERE pipeline = 'bench_leases' AND NOT done "
        "AND (lease_until IS NULL OR lease_until < now()) AND split <> ALL('{}'::text[]) "
        "ORDER BY split LIMIT 1 FOR UPDATE SKIP LOCKED), "
        "u AS (UPDATE sluice_splits s SET owner = 'runtime-' || :client_id, epoch = s.epoch + 1, "
        "updated_at = now(), lease_until = now() + 30000 * interval '1 millisecond', "
        "claimed_version = s.version "
        "FROM c WHERE s.pipeline = 'bench_leases' AND s.split = c.split "
        "RETURNING s.split, s.epoch, s.imported, c.was), "
        "h AS (INSERT INTO sluice_split_claims (pipeline, split, epoch, owner) "
        "SELECT 'bench_leases', split, epoch, 'runtime-' || :client_id FROM u) "
        "SELECT substr(split, 7)::int AS claimed, epoch FROM u \\gset\n"
        # and the split read: each client holds one lease at a time, as a runtime does
        "UPDATE sluice_splits SET done = true, lease_until = NULL, done_version = claimed_version "
        "WHERE pipeline = 'bench_leases' AND split = 'split-' || lpad(:claimed::text, 6, '0') "
        "AND epoch = :epoch "
        "AND owner = 'runtime-' || :client_id AND NOT done;\n")
    renew = (
        "\\set n random(1, 100000)\n"
        "UPDATE sluice_splits SET lease_until = now() + 30000 * interval '1 millisecond' "
        "WHERE pipeline = 'bench_leases' AND split = 'split-' || lpad(:n::text, 6, '0') "
        "AND epoch = 1 AND owner = 'runtime-' || :client_id AND NOT done;\n")
    out = {}
    with tempfile.TemporaryDirectory() as t:
        for what, sql in (("claim", claim), ("renew", renew)):
            script = os.path.join(t, what + ".sql")
            with open(script, "w") as f:
                f.write(sql)
            r = subprocess.run(["pgbench", "-n", "-c", str(clients), "-j", "2", "-T", str(seconds),
                                "-f", script, PG], capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit("pgbench failed: " + r.stderr[-2000:])
            tps = lat = None
            for line in r.stdout.splitlines():
                if line.startswith("tps ="):
                    tps = float(line.split()[2])
                if line.startswith("latency average"):
                    lat = float(line.split()[3])
            out[what] = (tps, lat)
    psql("DELETE FROM sluice_splits WHERE pipeline = 'bench_leases'; "
         "DELETE FROM sluice_split_claims WHERE pipeline = 'bench_leases'")
    return out


def runs(d, files, rows, repeat):
    total = files * rows
    make_files(d, files, rows)
    print("%d files of %d records (%d in all), median of %d runs, the setups taken in turn\n"
          % (files, rows, total, repeat))
    print("| sink | store | runtimes | splits at once | records/s | seconds | of sqlite |")
    print("|---|---|---|---|---|---|---|")
    # the local store, then the shared one: one runtime reading one split at a time,
    # two and three; then two and three runtimes
    setups = ((0, 1), (1, 1), (1, 2), (1, 3), (2, 2), (3, 2))
    for sink in ("blackhole", "postgres"):
        name = "bench_shared_" + sink
        got = {setup: [] for setup in setups}
        # in turn, so that the machine's drift touches every setup alike
        for _ in range(repeat):
            for runtimes, at_once in setups:
                got[(runtimes, at_once)].append(run(d, name, sink, runtimes, total, at_once))
        local = median(got[setups[0]])[0]
        for (runtimes, at_once), results in got.items():
            rate, wall = median(results)
            print("| %s | %s | %d | %s | %.0f | %.1f | %.2fx |"
                  % (sink, "postgres" if runtimes else "sqlite", max(runtimes, 1),
                     at_once if runtimes else "-", rate, wall, rate / local), flush=True)
        forget(name)


def median(results):
    return sorted(results)[len(results) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--rows", type=int, default=50000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-leases", action="store_true")
    ap.add_argument("--no-runs", action="store_true")
    a = ap.parse_args()
    if not os.path.exists(SLUICE):
        sys.exit("build it first: cargo build --release -p runtime --bin sluice")
    if not a.no_runs:
        with tempfile.TemporaryDirectory() as d:
            runs(d, a.files, a.rows, a.repeat)
    if not a.no_leases:
        # the table exists once a shared run has made it
        out = leases(100, 10)
        print("\nlease table, 100,000 splits, 100 pgbench clients:")
        for what, (tps, lat) in out.items():
            print("- %s: %.0f statements/s, %.1f ms average latency" % (what, tps, lat))


if __name__ == "__main__":
    main()
