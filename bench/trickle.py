"""
A river at a steady trickle (issue 15): a captured table updated at 500
rows a second, kept in an Elasticsearch index (the tests' stand-in for the
_bulk API, in a process of its own) by a real C{twistd hermes --outbox
items --sink elasticsearch+http://...}.

    .venv/bin/python bench/trickle.py [--seconds 40] [--rate 500] [--bursts]

Measured, in one run on one throwaway server:

  - the server's CPU (every postgres process of the cluster: user + system
    time from /proc) for the writer alone, then for the writer with hermes
    consuming: the difference, per change, is what hermes costs the
    database (goal: at most 0.4 ms a change);
  - commit -> index latency of every change (the writer's COMMIT returned
    -> the stand-in applied it): p50, p99, max (goal: p99 under 50 ms);
  - with --bursts: the same latency after three bursts of 100,000 changes
    (goal: p99 still under 50 ms).
"""

import argparse
import os
import sys
import tempfile
import threading
import time
import urllib.request
import json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench")]

import psycopg2  # noqa: E402

from hermes_tx.outbox.capture import capture  # noqa: E402
from hermes_tx.outbox.schema import install  # noqa: E402
from sinks_429 import start_server  # noqa: E402
from tests.support.fleet import Fleet, wait_for  # noqa: E402
from tests.support.pgcluster import Cluster  # noqa: E402

KEYS = 500
SINKS = os.path.join(ROOT, "bench", "sinks.py")


def cluster_cpu(cluster):
    """
    @return: seconds of CPU (user + system) used so far by the cluster's
        processes (the postmaster and its children).
    """
    ticks = os.sysconf("SC_CLK_TCK")
    with open(os.path.join(cluster.data_dir, "postmaster.pid")) as f:
        postmaster = int(f.readline())
    total = 0
    for pid in [postmaster] + children(postmaster):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        # utime, stime, cutime, cstime (children that exited count too)
        total += sum(int(x) for x in fields[11:15])
    return total / ticks


def children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


class Writer(threading.Thread):
    """
    UPDATEs one row at a time (its own transaction) at C{rate} a second,
    round robin over the keys, each row's C{n} counting up; records when
    each COMMIT returned.
    """

    def __init__(self, dsn, rate, seconds):
        super().__init__(daemon=True)
        self.dsn, self.rate, self.seconds = dsn, rate, seconds
        self.committed = {}  # (key, n) -> time the COMMIT returned

    def run(self):
        conn = psycopg2.connect(self.dsn, application_name="bench-writer")
        conn.autocommit = True
        cur = conn.cursor()
        start = time.monotonic()
        count = int(self.rate * self.seconds)
        for i in range(count):
            due = start + i / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            key = f"k{i % KEYS}"
            cur.execute("UPDATE items SET n = n + 1 WHERE id = %s RETURNING n", (key,))
            (n,) = cur.fetchone()
            self.committed[(key, n)] = time.time()
        conn.close()


def burst(dsn, count):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    done = 0
    while done < count:
        cur.execute("UPDATE items SET n = n + 1 WHERE id IN"
                    " (SELECT id FROM items ORDER BY random() LIMIT 500)")
        done += cur.rowcount
    conn.close()


def applied_at(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_fake/items?times=1") as answer:
        return {(doc_id, n): t for doc_id, n, t in json.loads(answer.read())["applied_at"]}


def latencies(writer, applied):
    waits = sorted((applied[k] - t) * 1000 for k, t in writer.committed.items() if k in applied)
    missing = len(writer.committed) - len(waits)
    return waits, missing


def pct(values, q):
    return values[min(len(values) - 1, int(len(values) * q))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--bursts", action="store_true", help="also after three bursts of 100,000")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="hermes-bench-trickle-")
    cluster = Cluster.create_primary()
    cluster.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    cluster.restart()
    server = None
    fleet = None
    try:
        cluster.execute("CREATE DATABASE trickle")
        dsn = cluster.dsn("trickle")
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        install(conn)
        cur = conn.cursor()
        cur.execute("CREATE TABLE items (id text PRIMARY KEY, n int NOT NULL, name text)")
        cur.execute("INSERT INTO items SELECT 'k' || g, 0, 'item ' || g FROM generate_series(0, %s) g",
                    (KEYS - 1,))
        capture(conn, "items", "items")
        count = int(args.rate * args.seconds)

        # The writer alone: what the server spends without hermes.
        before = cluster_cpu(cluster)
        alone = Writer(dsn, args.rate, args.seconds)
        alone.start()
        alone.join()
        writer_cpu = cluster_cpu(cluster) - before
        cur.execute("TRUNCATE hermes.outbox")
        cur.execute("VACUUM ANALYZE hermes.outbox")
        cur.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        cur.execute("SELECT pg_stat_statements_reset()")

        server, port = start_server(SINKS, 0.0, workdir)
        fleet = Fleet(dsn, ["items"], workdir, sink=f"elasticsearch+http://127.0.0.1:{port}/items")
        fleet.start()
        wait_for(fleet.consuming, 60, "consuming")
        time.sleep(2.0)
        before = cluster_cpu(cluster)
        writer = Writer(dsn, args.rate, args.seconds)
        writer.start()
        writer.join()
        wait_for(lambda: depth(cur) == 0, 60, "an empty outbox")
        both_cpu = cluster_cpu(cluster) - before
        statements = cluster.execute(
            "SELECT calls, round(total_exec_time::numeric, 1), left(regexp_replace(query, '\\s+', ' ', 'g'), 70)"
            " FROM pg_stat_statements WHERE calls > 10 ORDER BY total_exec_time DESC LIMIT 12",
            dbname="trickle")
        waits, missing = latencies(writer, applied_at(port))
        if os.environ.get("TRICKLE_DEBUG"):
            applied = applied_at(port)
            series = [(applied[k] - t) * 1000 for k, t in writer.committed.items() if k in applied]
            print("latency over time (ms):", [round(series[i]) for i in range(0, len(series), len(series) // 30)])
        extra = (both_cpu - writer_cpu) / count * 1000
        rows = [
            (f"server CPU, writer alone, {count:,} UPDATEs at {args.rate:g}/s", f"{writer_cpu:.2f} s", ""),
            ("server CPU, writer + twistd hermes --sink elasticsearch", f"{both_cpu:.2f} s", ""),
            ("extra server CPU per change", f"{extra:.3f} ms", "<= 0.4 ms"),
            (f"commit -> index ({len(waits):,} changes, {missing} missing)",
             f"p50 {pct(waits, 0.5):.1f} ms, p99 {pct(waits, 0.99):.1f} ms, max {waits[-1]:.1f} ms",
             "p99 < 50 ms"),
        ]
        if args.bursts:
            for _ in range(3):
                burst(dsn, 100000)
                wait_for(lambda: depth(cur) == 0, 600, "the burst drained", interval=0.5)
            after = Writer(dsn, args.rate, min(args.seconds, 20.0))
            after.start()
            after.join()
            wait_for(lambda: depth(cur) == 0, 60, "an empty outbox")
            waits, missing = latencies(after, applied_at(port))
            rows.append((f"after 3 bursts of 100,000: commit -> index ({len(waits):,}, {missing} missing)",
                         f"p50 {pct(waits, 0.5):.1f} ms, p99 {pct(waits, 0.99):.1f} ms, "
                         f"max {waits[-1]:.1f} ms", "p99 < 50 ms"))
        fleet.stop()
        wait_for(fleet.stopped, 30, "twistd stopped")
        unclean = fleet.unclean()
    finally:
        if fleet is not None:
            fleet.kill_all()
        if server is not None:
            server.terminate()
            server.wait()
        cluster.destroy()
    print("statements (calls, ms, text):")
    for calls, ms, text in statements:
        print(f"  {calls:>7} {ms:>9} {text}")
    width = max(len(r[0]) for r in rows)
    for case, result, goal in rows:
        print(f"{case.ljust(width)}  {result}" + (f"   (goal {goal})" if goal else ""))
    if unclean:
        print("\n".join(unclean)[:3000])


def depth(cur):
    cur.execute("SELECT count(*) FROM hermes.outbox")
    return cur.fetchone()[0]


if __name__ == "__main__":
    main()
