"""
The outbox's SQL against the hand-written queue loop, on one throwaway
server, in one run (not run by the tests).

    .venv/bin/python bench/outbox_sql.py [--rows 50000] [--rounds 3]
        [--only SECTION ...] [--version N]

--version installs the outbox only up to that migration (2: the claim
before version 4), to measure before and after on the same machine.

  drain    N pending changes drained from one blocking psycopg2 connection
           with a no-op "processor": hermes.claim(500) + ack, against
           DELETE ... WHERE id IN (SELECT id ... ORDER BY id LIMIT 500
           FOR UPDATE SKIP LOCKED) RETURNING ... on an equivalent table;
           keys: every change its own key, 500 keys, 10 keys, 1 key
           (per-key order allows one change of a key at a time, so with
           10 keys a claim returns at most 10 rows)
  blocked  one claim(500) while other tokens hold batches of changes (other
           consumers), up to the head of every key (nothing claimable: the
           per-key check's worst case)
  waiting  claim(500) while 100,000 keys wait for a retry; with a row
           behind each; with 10,000 fresh keys besides
  takeover a process holding 500 claims is SIGKILLed: seconds until
           another connection's claim gets them (visibility 30 s)
  bursts   three bursts of 100,000 changes drained by a claim + ack loop,
           then 500 changes/s: commit -> claimed, p50/p99/max
  backlog  a role with statement_timeout=50ms claiming from 400,000
           changes inserted at once (one key each, 500 keys)
  keys     emit with a 100 kB key; capture of a 2,690-byte text key
  capture  the same UPDATE workload on a 10,000-row table without and with
           the capture trigger: one row per autocommit statement, and one
           statement updating every row
Medians of the rounds are printed.
"""

import argparse
import os
import statistics
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench")]

import psycopg2  # noqa: E402

import outbox_claims  # noqa: E402
from hermes_tx.outbox import schema as outbox_schema  # noqa: E402
from hermes_tx.outbox import sql as outbox_sql  # noqa: E402
from hermes_tx.outbox.writes import id_array  # noqa: E402
from hermes_tx.outbox.capture import capture, uncapture  # noqa: E402
from tests.support.pgcluster import Cluster  # noqa: E402

BATCH = 500
TOPIC = "bench"
PAYLOAD = "jsonb_build_object('id', g, 'name', 'item ' || g, 'n', g * 7)"


def make_tables(cur):
    """
    Make C{bench_queue} (the hand-written loop's table, equivalent to the
    outbox) and C{items} (the table the capture workload updates).
    """
    cur.execute(
        "CREATE TABLE bench_queue (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " topic text NOT NULL, key text NOT NULL, payload jsonb NOT NULL,"
        " created_at timestamptz NOT NULL DEFAULT now())"
    )
    cur.execute("CREATE TABLE items (id int PRIMARY KEY, n int, name text, updated_at timestamptz)")
    # the two-step loop's table: the queue's, with a claim's columns and
    # the outbox's room for HOT updates
    cur.execute(
        "CREATE TABLE bench_claims (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " topic text NOT NULL, key text NOT NULL, payload jsonb NOT NULL,"
        " created_at timestamptz NOT NULL DEFAULT now(), token uuid, until timestamptz)"
        " WITH (fillfactor = 40)"
    )


def key_expression(keys):
    return "g::text" if keys is None else f"(g %% {keys})::text"


def reset(cur):
    cur.execute("TRUNCATE hermes.outbox, hermes.dead_letters, bench_queue")
    cur.execute("TRUNCATE bench_claims")


def fill(cur, rows, keys):
    cur.execute("TRUNCATE hermes.dead_letters")  # (fill_table empties the others)
    for table in ("hermes.outbox", "bench_queue", "bench_claims"):
        fill_table(cur, table, rows, keys)


def fill_table(cur, table, rows, keys):
    """Empty C{table}, write C{rows} changes to it and analyze it."""
    cur.execute(f"TRUNCATE {table}")
    cur.execute(
        f"INSERT INTO {table} (topic, key, payload)"
        f" SELECT %s, {key_expression(keys)}, {PAYLOAD} FROM generate_series(1, %s) g",
        (TOPIC, rows),
    )
    cur.execute(f"ANALYZE {table}")


#: the hand-written loop's one statement (parameter: the batch size)
PLAIN_DELETE = (
    "DELETE FROM bench_queue WHERE id IN (SELECT id FROM bench_queue ORDER BY id"
    " LIMIT %s FOR UPDATE SKIP LOCKED)"
    " RETURNING id, topic, key, payload::text, extract(epoch FROM created_at)"
)
#: a claim that is its own acknowledgement (parameter: the batch size):
#: the outbox's oldest fresh changes, each the oldest of its key still in
#: the outbox, locked (SKIP LOCKED) and deleted by ctid.
#: Committed after delivery, a claim needs no second write; rolled back
#: (the consumer or its connection gone), its changes are back at once.
#: The per-key test is a probe of outbox_topic_key_hash_id per change:
#: hash and merge joins are turned off for it (HELD_SETTINGS), or it scans
#: the whole table, as PLAIN_DELETE's plan does (a hash semi join over a
#: sequential scan).  A measurement of another protocol (issue 15), not
#: the outbox's.
HELD_DELETE = (
    "DELETE FROM hermes.outbox o WHERE o.ctid = ANY (ARRAY("
    "SELECT o.ctid FROM hermes.outbox o WHERE o.topic = '{topic}' AND o.available_at <= o.created_at"
    " AND o.claimed_until IS NULL AND NOT EXISTS (SELECT 1 FROM hermes.outbox e WHERE e.topic = o.topic"
    " AND hashtextextended(e.key, 0) = hashtextextended(o.key, 0) AND e.key = o.key AND e.id < o.id)"
    " ORDER BY o.id LIMIT %s FOR UPDATE SKIP LOCKED))"
    " RETURNING o.id, o.topic, o.key, o.payload::text, extract(epoch FROM o.created_at)"
).format(topic=TOPIC)
#: what HELD_DELETE is run with
HELD_SETTINGS = ["SET enable_hashjoin = off", "SET enable_mergejoin = off"]
#: the two-step loop's claim (parameters: the token, the batch size)
CLAIM_UPDATE = (
    "UPDATE bench_claims SET token = %s, until = now() + interval '30 s'"
    " WHERE id IN (SELECT id FROM bench_claims WHERE until IS NULL ORDER BY id"
    " LIMIT %s FOR UPDATE SKIP LOCKED)"
    " RETURNING id, topic, key, payload::text, extract(epoch FROM created_at)"
)
#: the two-step loop's acknowledgement (parameters: the ids, the token)
CLAIM_DELETE = "DELETE FROM bench_claims WHERE id = ANY (%s::bigint[]) AND token = %s RETURNING id"


def drain_hermes(cur, rows):
    claim, ack = outbox_sql.claim(), outbox_sql.ack()
    done = 0
    start = time.perf_counter()
    while done < rows:
        token = str(uuid.uuid4())
        cur.execute(claim, ([TOPIC], BATCH, token, 30.0))
        batch = cur.fetchall()
        if not batch:
            raise RuntimeError(f"claim returned nothing after {done} of {rows}")
        cur.execute(ack, ([r[0] for r in batch], token))
        done += len(cur.fetchall())
    return time.perf_counter() - start


def drain_consumer(cur, rows, budget=64 << 20):
    """
    The consumer's own statements (L{outbox_sql.claim_within} and
    L{outbox_sql.ack}, as C{twistd hermes --outbox} sends them) in a
    blocking loop, claiming ahead as it does (a batch acknowledged after
    the next claim): what the drain of C{twistd hermes} would reach were
    its client free.
    """
    claim, ack = outbox_sql.claim_within(), outbox_sql.ack()
    done, held = 0, None
    start = time.perf_counter()
    while done < rows:
        token = str(uuid.uuid4())
        cur.execute(claim, ([TOPIC], BATCH, token, 30.0, budget, True))
        claimed = cur.fetchall()
        if held is None and not claimed:
            raise RuntimeError(f"the consumer's statements found nothing after {done} of {rows}")
        if held is not None:
            # (with few keys a claim ahead may find every head in flight)
            cur.execute(ack, (id_array(row[0] for row in held[1]), held[0]))
            done += len(cur.fetchall())
        held = (token, claimed) if claimed else None
    return time.perf_counter() - start


def drain_two_steps(cur, rows):
    """
    Claim and acknowledge with nothing else: the oldest 500 unclaimed rows
    claimed (C{UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)
    RETURNING ...}), acknowledged (C{DELETE} by id and token) after the
    next claim, as a consumer claiming ahead does; no per-key order, no
    takeover, no retries.  What the two steps alone cost against the one
    C{DELETE} of L{drain_plain}.
    """
    done, held = 0, None
    start = time.perf_counter()
    while done < rows:
        token = str(uuid.uuid4())
        cur.execute(CLAIM_UPDATE, (token, BATCH))
        claimed = cur.fetchall()
        if held is not None:
            cur.execute(CLAIM_DELETE, (id_array(row[0] for row in held[1]), held[0]))
            done += len(cur.fetchall())
        held = (token, claimed) if claimed else None
        if held is None and done < rows:
            raise RuntimeError(f"the two-step loop found nothing after {done} of {rows}")
    return time.perf_counter() - start


def drain_held(cur, rows):
    """
    Drain the outbox by L{HELD_DELETE}: each claim deleted in a
    transaction that commits after its (no-op) delivery, no second write.
    Not the outbox's protocol: what a claim held in a transaction would
    cost against L{drain_plain}.
    """
    for setting in HELD_SETTINGS:
        cur.execute(setting)
    done = 0
    start = time.perf_counter()
    try:
        while done < rows:
            cur.execute("BEGIN")
            cur.execute(HELD_DELETE, (BATCH,))
            claimed = cur.fetchall()
            cur.execute("COMMIT")
            if not claimed:
                raise RuntimeError(f"the held claim found nothing after {done} of {rows}")
            done += len(claimed)
    finally:
        cur.execute("ROLLBACK")  # (a warning only, unless a step failed)
        cur.execute("RESET ALL")
    return time.perf_counter() - start


def drain_plain(cur, rows):
    done = 0
    start = time.perf_counter()
    while done < rows:
        cur.execute(PLAIN_DELETE, (BATCH,))
        done += len(cur.fetchall())
    return time.perf_counter() - start


def blocked_claim(cur, rows, keys, held, repeat=10):
    """
    Time a claim(500) while other tokens hold C{held} changes (whole
    batches of 500, oldest first).

    @return: (median seconds, rows the timed claim got, rows held).
    """
    cur.execute(
        f"INSERT INTO hermes.outbox (topic, key, payload)"
        f" SELECT %s, {key_expression(keys)}, {PAYLOAD} FROM generate_series(1, %s) g",
        (TOPIC, rows),
    )
    cur.execute("ANALYZE hermes.outbox")
    holding = 0
    while holding < held:
        cur.execute(outbox_sql.claim(), ([TOPIC], BATCH, str(uuid.uuid4()), 600.0))
        got = len(cur.fetchall())
        holding += got
        if got < BATCH:
            break
    times = []
    for _ in range(repeat):
        token = str(uuid.uuid4())
        start = time.perf_counter()
        cur.execute(outbox_sql.claim(), ([TOPIC], BATCH, token, 30.0))
        got = cur.fetchall()
        times.append(time.perf_counter() - start)
        cur.execute("UPDATE hermes.outbox SET claim_token = NULL, claimed_until = NULL, attempts = 0"
                    " WHERE claim_token = %s", (token,))
    reset(cur)
    return statistics.median(times), len(got), holding


def update_workload(cur, conn_dsn, single, rows=10000, statements=20000):
    cur.execute("TRUNCATE items")
    cur.execute(
        "INSERT INTO items SELECT g, 0, 'item ' || g, now() FROM generate_series(1, %s) g", (rows,)
    )
    cur.execute("VACUUM ANALYZE items")
    start = time.perf_counter()
    if single:
        for i in range(statements):
            cur.execute("UPDATE items SET n = n + 1, updated_at = now() WHERE id = %s", (i % rows + 1,))
    else:
        cur.execute("UPDATE items SET n = n + 1, updated_at = now()")
    elapsed = time.perf_counter() - start
    cur.execute("TRUNCATE hermes.outbox")
    return elapsed


def drain(cur, args):
    print(f"drain {args.rows} pending changes, batches of {BATCH}, median of {args.rounds} rounds;"
          " the server's CPU (its backend) per 1,000 changes")
    cur.execute("SELECT pg_backend_pid()")
    pid = cur.fetchone()[0]
    for keys in (None, 500, 10, 1):
        if keys is not None and keys < 100 and args.rows > 5000:
            rows = 5000 if keys == 10 else 2000
        else:
            rows = args.rows
        hermes, plain, cpu = [], [], []
        for _ in range(args.rounds):
            fill(cur, rows, keys)
            plain.append(drain_plain(cur, rows))
            before = outbox_claims.cpu_seconds(pid)
            hermes.append(drain_hermes(cur, rows))
            cpu.append(outbox_claims.cpu_seconds(pid) - before)
        h, p = statistics.median(hermes), statistics.median(plain)
        label = "own key each" if keys is None else f"{keys} keys"
        print(f"  {label:>12}: {rows} rows  hermes {rows / h:9.0f}/s   plain loop {rows / p:9.0f}/s"
              f"   ratio {p / h:.2f}   hermes CPU {statistics.median(cpu) / rows * 1e6:.1f} ms")


def blocked(cur, args):
    print(f"one claim(500) while others hold changes ({args.rows} rows, median of 10)")
    for keys, held, label in [
        (None, 1500, "own key each, 3 batches in flight"),
        (500, 500, "500 keys, every head in flight"),
        (5000, 5000, "5000 keys, every head in flight"),
        (5000, 1500, "5000 keys, 3 batches in flight"),
    ]:
        seconds, got, holding = blocked_claim(cur, args.rows, keys, held)
        print(f"  {label:>34}: {seconds * 1000:7.2f} ms, got {got} (held {holding})")


def capture_overhead(conn, cur, args):
    print("capture overhead: UPDATE workload without / with the trigger")
    for single in (True, False):
        without, with_ = [], []
        for _ in range(args.rounds):
            without.append(update_workload(cur, None, single))
            capture(conn, "items", "items")
            with_.append(update_workload(cur, None, single))
            uncapture(conn, "items")
        w, t = statistics.median(without), statistics.median(with_)
        label = "20000 single-row statements" if single else "one statement, 10000 rows"
        print(f"  {label}: {w:.3f} s / {t:.3f} s = {t / w:.2f}x")


SECTIONS = ("drain", "blocked", "waiting", "takeover", "bursts", "backlog", "keys", "capture")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rows", type=int, default=50000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=SECTIONS)
    parser.add_argument("--version", type=int, default=None, help="install the outbox up to this migration")
    args = parser.parse_args()
    cluster = Cluster.create_primary()
    try:
        dsn = cluster.dsn(application_name="bench-outbox")
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        applied = outbox_schema.install(conn, target=args.version)
        print(f"outbox at version {applied[-1].version}")
        cur = conn.cursor()
        make_tables(cur)
        sections = {
            "drain": lambda: drain(cur, args),
            "blocked": lambda: blocked(cur, args),
            "waiting": lambda: outbox_claims.waiting(cur),
            "takeover": lambda: outbox_claims.takeover(cur, dsn),
            "bursts": lambda: outbox_claims.bursts(cur, dsn),
            "backlog": lambda: outbox_claims.backlog(cluster, "postgres", cur),
            "keys": lambda: outbox_claims.keys(conn, cur),
            "capture": lambda: capture_overhead(conn, cur, args),
        }
        for name in SECTIONS:
            if name in args.only:
                sections[name]()
        conn.close()
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
