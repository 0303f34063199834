"""
What version 3 of the outbox (functions with their owner's rights, dead
letters superseded by acknowledgements, capture taking a key's lock when
it has a dead letter) costs, against version 2, on one throwaway server,
in one run (not run by the tests).

    .venv/bin/python bench/outbox_privileges.py [--rounds 200] [--rows 50000]

  ack      one acknowledgement of 500 claimed rows: version 2's DELETE
           statement, then version 3's ack() with no dead letter, with
           1,000 and with 20,000 dead letters of other keys (medians and
           10th percentiles of --rounds, interleaved)
  drain    --rows changes drained by claim(500) + ack from one connection,
           version 2 against version 3 without and with 1,000 dead
           letters (median of 3 rounds)
  capture  20,000 single-row UPDATEs of a captured 10,000-row table, and
           one UPDATE of all its rows: version 2's trigger against
           version 3's (median of 4 rounds)
Rounds are interleaved, each case first in turn.
"""

import argparse
import os
import statistics
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import psycopg2  # noqa: E402

from hermes_tx.outbox import sql as outbox_sql  # noqa: E402
from hermes_tx.outbox.capture import capture  # noqa: E402
from hermes_tx.outbox.schema import install  # noqa: E402
from tests.support.pgcluster import Cluster  # noqa: E402

#: version 2's ack: the statement before it was a function
V2_ACK = ("DELETE FROM hermes.outbox o WHERE o.id = ANY (%s::bigint[]) AND o.claim_token = %s::uuid"
          " RETURNING o.id")
BATCH = 500


def database(cluster, name, version, dead=0):
    cluster.execute(f"CREATE DATABASE {name}")
    conn = psycopg2.connect(cluster.dsn(name, application_name="bench-privileges"))
    conn.autocommit = True
    install(conn, target=version)
    if dead:
        conn.cursor().execute(
            "INSERT INTO hermes.dead_letters (id, topic, key, payload, created_at, attempts)"
            " SELECT -g, 'bench', 'dead-' || g, '{}', now(), 1 FROM generate_series(1, %s) g", (dead,))
        conn.cursor().execute("ANALYZE hermes.dead_letters")
        conn.cursor().execute("SELECT hermes.rebuild_dead_keys()")  # as dead-lettering would
    return conn


def ack_once(cur, statement, tag):
    token = str(uuid.uuid4())
    cur.execute(
        "INSERT INTO hermes.outbox (topic, key, payload, claim_token, claimed_until)"
        " SELECT 'bench', g || '-' || %s, '{\"a\": 1}', %s::uuid, now() + interval '1 min'"
        " FROM generate_series(1, %s) g RETURNING id", (tag, token, BATCH))
    ids = "{" + ",".join(str(r[0]) for r in cur.fetchall()) + "}"
    start = time.perf_counter()
    cur.execute(statement, (ids, token))
    done = len(cur.fetchall())
    elapsed = time.perf_counter() - start
    assert done == BATCH, done
    return elapsed


def drain(cur, rows, ack):
    cur.execute("TRUNCATE hermes.outbox")
    cur.execute(
        "INSERT INTO hermes.outbox (topic, key, payload) SELECT 'bench', g::text,"
        " jsonb_build_object('id', g, 'name', 'item ' || g) FROM generate_series(1, %s) g", (rows,))
    cur.execute("ANALYZE hermes.outbox")
    claim = outbox_sql.claim()
    done = 0
    start = time.perf_counter()
    while done < rows:
        token = str(uuid.uuid4())
        cur.execute(claim, (["bench"], BATCH, token, 30.0))
        ids = "{" + ",".join(str(r[0]) for r in cur.fetchall()) + "}"
        cur.execute(ack, (ids, token))
        done += len(cur.fetchall())
    return time.perf_counter() - start


def updates(cur, single):
    cur.execute("TRUNCATE items, hermes.outbox")
    cur.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, 10000) g")
    cur.execute("VACUUM ANALYZE items")
    start = time.perf_counter()
    if single:
        for i in range(20000):
            cur.execute("UPDATE items SET n = n + 1 WHERE id = %s", (i % 10000 + 1,))
    else:
        cur.execute("UPDATE items SET n = n + 1")
    return time.perf_counter() - start


def rotated(cases, i):
    """
    @return: C{cases} starting at the C{i}th (modulo): each case runs
        first, second... in turn, so none always follows the same one (and
        its autovacuum).
    """
    i %= len(cases)
    return list(cases[i:]) + list(cases[:i])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--rows", type=int, default=50000)
    args = parser.parse_args()
    cluster = Cluster.create_primary()
    try:
        v2 = database(cluster, "v2", 2)
        v3 = database(cluster, "v3", 3)
        v3_1k = database(cluster, "v3_1k", 3, dead=1000)
        v3_20k = database(cluster, "v3_20k", 3, dead=20000)

        print(f"ack of {BATCH} rows, median / 10th percentile of {args.rounds} (ms)")
        cases = [("version 2 DELETE", v2, V2_ACK), ("version 3 ack(), no dead letter", v3, outbox_sql.ack()),
                 ("version 3 ack(), 1,000 dead letters", v3_1k, outbox_sql.ack()),
                 ("version 3 ack(), 20,000 dead letters", v3_20k, outbox_sql.ack())]
        times = {label: [] for label, _, _ in cases}
        for i in range(args.rounds):
            for label, conn, statement in rotated(cases, i):
                times[label].append(ack_once(conn.cursor(), statement, i))
        for label, found in times.items():
            print(f"  {label:>38}: {statistics.median(found) * 1000:6.3f} /"
                  f" {statistics.quantiles(found, n=10)[0] * 1000:6.3f}")

        print(f"drain {args.rows} rows, claim({BATCH}) + ack, median of 3")
        cases = [("version 2", v2, V2_ACK), ("version 3, no dead letter", v3, outbox_sql.ack()),
                 ("version 3, 1,000 dead letters", v3_1k, outbox_sql.ack())]
        times = {label: [] for label, _, _ in cases}
        for i in range(3):
            for label, conn, statement in rotated(cases, i):
                times[label].append(drain(conn.cursor(), args.rows, statement))
        base = statistics.median(times["version 2"])
        for label, found in times.items():
            seconds = statistics.median(found)
            print(f"  {label:>38}: {args.rows / seconds:9.0f}/s ({base / seconds:.2f}x version 2)")

        print("capture: UPDATEs of a captured 10,000-row table, version 2 / version 3, median of 4")
        for conn in (v2, v3):
            cur = conn.cursor()
            cur.execute("CREATE TABLE items (id int PRIMARY KEY, n int)")
            capture(conn, "items", "items")
        for single in (True, False):
            found = {2: [], 3: []}
            for i in range(4):
                for version, conn in rotated(((2, v2), (3, v3)), i):
                    found[version].append(updates(conn.cursor(), single))
            a, b = statistics.median(found[2]), statistics.median(found[3])
            label = "20,000 single-row UPDATEs" if single else "one UPDATE of 10,000 rows"
            print(f"  {label:>38}: {a:.3f} s / {b:.3f} s = {b / a:.2f}x")
        for conn in (v2, v3, v3_1k, v3_20k):
            conn.close()
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
