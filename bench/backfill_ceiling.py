"""
The ceiling of a backfill's rate (issue 17): on a throwaway server, a
table of 300,000 rows copied as JSON into a one-column table (``INSERT INTO
copy SELECT to_jsonb(t) FROM t``, the goal's yardstick), the same rows as
READ changes inserted straight into the outbox by one statement (no row
locks, no progress: what any backfill into the outbox pays at least), and
into a table shaped like the outbox without its indexes and fill factor.
Median of 3 rounds, a checkpoint before each statement.

    .venv/bin/python bench/backfill_ceiling.py [--rows N]
"""

import argparse
import os
import sys
import time

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]

import psycopg2  # noqa: E402

from hermes_tx.outbox.schema import install  # noqa: E402
from tests.support.pgcluster import Cluster  # noqa: E402

#: a READ change's payload for a row of t, as hermes-tx backfill writes it
READ = ("jsonb_build_object('table', 'public.t', 'op', 'READ', 'key', jsonb_build_object('id', t.id),"
        " 'old', NULL, 'new', to_jsonb(t))")

CASES = [
    ("copy: INSERT INTO copy SELECT to_jsonb(t)", "TRUNCATE copy",
     "INSERT INTO copy SELECT to_jsonb(t) FROM t"),
    ("the READ changes straight into the outbox", "TRUNCATE hermes.outbox",
     f"INSERT INTO hermes.outbox (topic, key, payload) SELECT 't', t.id::text, {READ} FROM t"),
    ("the same into an outbox-shaped table, no index, fill factor 100", "TRUNCATE plain",
     f"INSERT INTO plain (id, topic, key, payload) SELECT t.id, 't', t.id::text, {READ} FROM t"),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rows", type=int, default=300000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cluster = Cluster.create_primary()
    try:
        conn = psycopg2.connect(cluster.dsn("postgres"))
        install(conn)
        conn.commit()
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("CREATE TABLE t (id bigint PRIMARY KEY, name text, price numeric, note text, at timestamptz)")
        cur.execute("INSERT INTO t SELECT g, 'name ' || g, g / 7.0, repeat('x', 40), now()"
                    " FROM generate_series(1, %s) g", (args.rows,))
        cur.execute("VACUUM ANALYZE t")
        cur.execute("CREATE TABLE copy (j jsonb)")
        cur.execute("CREATE TABLE plain (LIKE hermes.outbox INCLUDING DEFAULTS)")
        times = {label: [] for label, _, _ in CASES}
        for _ in range(args.rounds):
            for label, empty, statement in CASES:
                cur.execute(empty)
                cur.execute("CHECKPOINT")
                started = time.perf_counter()
                cur.execute(statement)
                times[label].append(time.perf_counter() - started)
        medians = {label: sorted(t)[len(t) // 2] for label, t in times.items()}
        copy = medians[CASES[0][0]]
        for label, seconds in medians.items():
            print(f"{label:66s} {args.rows / seconds:10,.0f} rows/s  {copy / seconds:.2f}x the copy")
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
