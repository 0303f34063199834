"""
C{hermes-tx backfill} of a large captured table while a writer updates
random rows (docs/performance.rst, "Backfilling a table"):

  - copy: one C{INSERT INTO copy SELECT to_jsonb(t) FROM t} of the table
    into a table of one jsonb column (the physical limit of writing the
    rows once more), and into a table shaped as the outbox (its columns
    and indexes), each timed;
  - writer alone: UPDATEs of random rows (version + 1) paced at --rate
    per second, for --writer-seconds: latency p50 / p99;
  - backfill (--rounds times): the real C{hermes-tx backfill} process,
    the same writer running: its rate, the writer's p50 / p99 meanwhile,
    then the outbox checked: per key, in id order (the order a consumer
    delivers them), versions never go back, and the last change of every
    row holds its final version;
  - SIGKILL halfway: the backfill killed once half its rows are done, run
    again: every row's READ present, how many twice.

    .venv/bin/python bench/backfill.py [--quick] [--rows N] [--rounds 3]
"""

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time

import psycopg2

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hermes_tx.outbox.schema import install  # noqa: E402
from tests.support.pgcluster import Cluster  # noqa: E402

HERMES_TX = [sys.executable, "-m", "hermes_tx.outbox"]


def connect(dsn):
    conn = psycopg2.connect(dsn, application_name="bench")
    conn.autocommit = True
    return conn


class Writer:
    """
    UPDATEs of random rows paced at C{rate} per second on one connection
    (its own thread); the latency of each, in seconds.
    """

    def __init__(self, dsn, rows, rate):
        self.dsn = dsn
        self.rows = rows
        self.rate = rate
        self.latencies = []
        self.errors = []
        self._stop = threading.Event()

    def start(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        rng = random.Random(17)
        conn = connect(self.dsn)
        cur = conn.cursor()
        start, n = time.monotonic(), 0
        try:
            while not self._stop.is_set():
                due = start + n / self.rate
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                t0 = time.monotonic()
                cur.execute("UPDATE items SET version = version + 1 WHERE id = %s", (rng.randint(1, self.rows),))
                self.latencies.append(time.monotonic() - t0)
                n += 1
        except Exception as e:
            self.errors.append(e)
        finally:
            conn.close()

    def take(self):
        """
        @return: the latencies since the last take.
        """
        taken, self.latencies = self.latencies, []
        return taken

    def stop(self):
        self._stop.set()
        self.thread.join()
        if self.errors:
            raise self.errors[0]


def percentiles(latencies):
    ordered = sorted(latencies)
    if not ordered:
        return float("nan"), float("nan")
    return (ordered[len(ordered) // 2] * 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000)


def timed(cur, statement):
    t0 = time.monotonic()
    cur.execute(statement)
    return time.monotonic() - t0


def check(cur, rows):
    """
    @return: C{(keys with a change, versions gone back, rows whose last
        change is not their final version, READs per row above one)}.
    """
    cur.execute(
        "WITH c AS (SELECT key, id, (payload -> 'new' ->> 'version')::int AS v FROM hermes.outbox"
        "           WHERE topic = 'items'),"
        " o AS (SELECT v, lag(v) OVER (PARTITION BY key ORDER BY id) AS before FROM c)"
        " SELECT count(*) FILTER (WHERE v < before) FROM o")
    backwards = cur.fetchone()[0]
    cur.execute(
        "WITH last AS (SELECT DISTINCT ON (key) key, (payload -> 'new' ->> 'version')::int AS v"
        "              FROM hermes.outbox WHERE topic = 'items' ORDER BY key, id DESC)"
        " SELECT count(*), count(*) FILTER (WHERE l.v IS DISTINCT FROM t.version)"
        " FROM items t LEFT JOIN last l ON l.key = t.id::text")
    total, stale = cur.fetchone()
    cur.execute("SELECT count(DISTINCT key), count(*) - count(DISTINCT key) FROM hermes.outbox"
                " WHERE topic = 'items' AND payload ->> 'op' = 'READ'")
    read_keys, twice = cur.fetchone()
    assert total == rows
    return read_keys, backwards, stale, twice


def backfill(dsn, *args):
    """
    Run C{hermes-tx backfill} to its end.

    @return: the seconds from its start to its last chunk (the progress
        table's times: the process's start, some 0.5 s on this machine,
        left out; a backfill that went on: since the first run's start).
    """
    proc = subprocess.run(HERMES_TX + ["backfill", "--table", "items", "--dsn", dsn, *args],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr)
    conn = connect(dsn)
    try:
        cur = conn.cursor()
        cur.execute("SELECT extract(epoch FROM finished_at - started_at)::float8 FROM hermes.backfills")
        return cur.fetchone()[0]
    finally:
        conn.close()


def reset(cur):
    cur.execute("TRUNCATE hermes.outbox, hermes.backfills")
    cur.execute("VACUUM ANALYZE hermes.outbox")
    cur.execute("CHECKPOINT")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 rows, shorter phases")
    parser.add_argument("--rows", type=int, help="rows in the table (default 1,000,000; --quick 100,000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=500.0, help="writer's UPDATEs per second")
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--writer-seconds", type=float, help="writer alone (default 20; --quick 8)")
    args = parser.parse_args()
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    alone = args.writer_seconds or (8.0 if args.quick else 20.0)
    cluster = Cluster.create_primary()
    try:
        cluster.execute("CREATE DATABASE bench")
        dsn = cluster.dsn("bench")
        conn = connect(dsn)
        install(conn)
        cur = conn.cursor()
        cur.execute("CREATE TABLE items (id bigint PRIMARY KEY, version int NOT NULL, name text,"
                    " price numeric, created timestamptz, pad text)")
        cur.execute("INSERT INTO items SELECT g, 0, 'item ' || g, g / 100.0, now(), md5(g::text)"
                    " FROM generate_series(1, %s) g", (rows,))
        cur.execute("VACUUM ANALYZE items")
        cur.execute("CHECKPOINT")
        subprocess.run(HERMES_TX + ["capture", "--table", "items", "--topic", "items", "--dsn", dsn],
                       check=True, capture_output=True)
        print(f"{rows:,} rows; writer {args.rate:.0f} UPDATEs/s; chunk {args.chunk}; {args.rounds} rounds",
              flush=True)

        cur.execute("CREATE TABLE copy (r jsonb)")
        cur.execute("CREATE TABLE copy_outbox (LIKE hermes.outbox INCLUDING ALL)")
        plain, shaped = [], []
        for _ in range(args.rounds):
            cur.execute("TRUNCATE copy, copy_outbox")
            cur.execute("CHECKPOINT")
            plain.append(rows / timed(cur, "INSERT INTO copy SELECT to_jsonb(t) FROM items t"))
            cur.execute("CHECKPOINT")
            shaped.append(rows / timed(
                cur, "INSERT INTO copy_outbox (topic, key, payload) SELECT 'items', t.id::text,"
                     " jsonb_build_object('table', 'public.items', 'op', 'READ', 'key', jsonb_build_object("
                     "'id', t.id), 'old', NULL, 'new', to_jsonb(t)) FROM items t ORDER BY t.id"))
        cur.execute("DROP TABLE copy, copy_outbox")
        copy_rate = statistics.median(plain)
        print(f"copy into a jsonb table: {copy_rate:,.0f} rows/s (median; {', '.join(f'{r:,.0f}' for r in plain)})")
        print(f"copy into an outbox-shaped table: {statistics.median(shaped):,.0f} rows/s"
              f" ({', '.join(f'{r:,.0f}' for r in shaped)})", flush=True)

        writer = Writer(dsn, rows, args.rate).start()
        time.sleep(alone)
        base50, base99 = percentiles(writer.take())
        print(f"writer alone: p50 {base50:.2f} ms, p99 {base99:.2f} ms", flush=True)

        rates, p99s, p50s = [], [], []
        for n in range(args.rounds):
            reset(cur)
            writer.take()
            took = backfill(dsn, "--chunk", str(args.chunk))
            during = writer.take()
            p50, p99 = percentiles(during)
            rates.append(rows / took)
            p50s.append(p50)
            p99s.append(p99)
            time.sleep(0.5)
            print(f"round {n + 1}: backfill {rows / took:,.0f} rows/s ({took:.1f} s), writer p50 {p50:.2f} ms,"
                  f" p99 {p99:.2f} ms ({len(during)} updates)", flush=True)
        writer.stop()
        read_keys, backwards, stale, twice = check(cur, rows)
        print(f"last round's outbox: {read_keys:,} rows READ, {twice} twice; per key {backwards} versions"
              f" gone back; {stale} rows whose last change is not their final version")
        rate, p99 = statistics.median(rates), statistics.median(p99s)
        print(f"backfill rate (median) {rate:,.0f} rows/s = {rate / copy_rate:.2f}x the jsonb copy"
              f" (goal >= 0.5x), {rate / statistics.median(shaped):.2f}x the outbox-shaped copy")
        print(f"writer p99 during backfill (median) {p99:.2f} ms = {p99 / base99:.2f}x alone (goal <= 2x);"
              f" p50 {statistics.median(p50s):.2f} ms vs {base50:.2f} ms", flush=True)

        reset(cur)
        writer = Writer(dsn, rows, args.rate).start()
        proc = subprocess.Popen(HERMES_TX + ["backfill", "--table", "items", "--chunk", str(args.chunk),
                                             "--dsn", dsn], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            cur.execute("SELECT coalesce((SELECT rows_done FROM hermes.backfills), 0)")
            if cur.fetchone()[0] >= rows // 2:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        cur.execute("SELECT rows_done FROM hermes.backfills")
        killed_at = cur.fetchone()[0]
        took = backfill(dsn, "--chunk", str(args.chunk))
        writer.stop()
        read_keys, backwards, stale, twice = check(cur, rows)
        print(f"SIGKILL at {killed_at:,} rows, run again (both runs {took:.1f} s): {read_keys:,} of {rows:,} rows READ,"
              f" {twice} twice (chunk {args.chunk}); {backwards} versions gone back, {stale} stale", flush=True)
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
