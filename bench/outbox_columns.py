"""
What choosing columns (outbox version 7) costs the capture trigger, against
version 6's trigger, on one throwaway server, in one run (not run by the
tests).

    .venv/bin/python bench/outbox_columns.py [--rounds 5]

A captured table of 10,000 rows with six columns (int key, text, int,
timestamptz, text, 50-character text); per round, interleaved, each case
first in turn: one UPDATE of every row, and 20,000 single-row UPDATEs
(from one connection), with version 6's trigger and with version 7's
sending every column, all but one (C{--exclude-columns}) and only two
(C{--columns}).  Printed: the median time of each case and the median of
its per-round ratio to version 6.
"""

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import psycopg2  # noqa: E402

from hermes_tx.outbox.capture import capture  # noqa: E402
from hermes_tx.outbox.schema import install  # noqa: E402
from tests.support.pgcluster import Cluster  # noqa: E402

ROWS = 10000

#: (label, database, selection or None for version 6's trigger)
CASES = [("version 6, every column", "v6", None),
         ("version 7, every column", "v7all", {}),
         ("version 7, --exclude-columns secret", "v7but", {"excluded": ["secret"]}),
         ("version 7, --columns name,n", "v7only", {"columns": ["name", "n"]})]


def database(cluster, name, selection):
    cluster.execute(f"CREATE DATABASE {name}")
    conn = psycopg2.connect(cluster.dsn(name, application_name="bench-columns"))
    conn.autocommit = True
    install(conn, target=6 if selection is None else None)
    conn.cursor().execute("CREATE TABLE items (id int PRIMARY KEY, name text, n int, at timestamptz,"
                          " secret text, note text)")
    capture(conn, "items", "items", **(selection or {}))
    return conn


def updates(cur, single):
    cur.execute("TRUNCATE items, hermes.outbox")
    cur.execute("INSERT INTO items SELECT g, 'name ' || g, 0, now(), 'SECRET', repeat('x', 50)"
                " FROM generate_series(1, %s) g", (ROWS,))
    cur.execute("VACUUM ANALYZE items")
    start = time.perf_counter()
    if single:
        for i in range(2 * ROWS):
            cur.execute("UPDATE items SET n = n + 1 WHERE id = %s", (i % ROWS + 1,))
    else:
        cur.execute("UPDATE items SET n = n + 1")
    return time.perf_counter() - start


def rotated(cases, i):
    i %= len(cases)
    return list(cases[i:]) + list(cases[:i])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cluster = Cluster.create_primary()
    try:
        conns = {label: database(cluster, name, selection) for label, name, selection in CASES}
        for single in (False, True):
            what = "20,000 single-row UPDATEs" if single else f"one UPDATE of {ROWS:,} rows"
            print(f"{what}, median of {args.rounds} rounds")
            times = {label: [] for label in conns}
            for i in range(args.rounds):
                for label, conn in rotated(list(conns.items()), i):
                    times[label].append(updates(conn.cursor(), single))
            base = times[CASES[0][0]]
            for label, found in times.items():
                ratio = statistics.median(a / b for a, b in zip(found, base))
                print(f"  {label:>38}: {statistics.median(found):.3f} s ({ratio:.2f}x version 6)")
        for conn in conns.values():
            conn.close()
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
