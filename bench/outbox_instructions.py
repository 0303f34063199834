"""
The no-op drain's statements counted in instructions of the server, not
timed (issue 15; docs/performance.rst, "The no-op drain by instructions"):
on a noisy machine a drain's time and a backend's CPU time vary by a
third between rounds, the count of instructions by nothing.

Each case runs in a single-user C{postgres} under C{valgrind
--tool=callgrind}, on a copy of one throwaway cluster holding the outbox
and the tables of bench/outbox_sql.py: the same changes (one key each,
the goal's shape) written to the outbox, the hand-written loop's table and
the two-step loop's table, then drained by the case's statements, each
its own transaction, claiming ahead as the consumer does (a batch
acknowledged after the next claim).  Two more cases say where the rest
lies: the loop's own statement on the outbox's table, and a claim that is
its own acknowledgement, held in a transaction over the delivery.  A case
that only writes the changes is counted too and taken off the others:
what is printed is the drain's instructions per change.  The loop's cost
per change grows with --changes (its plan scans the whole table once a
step); the others' hardly moves.

    .venv/bin/python bench/outbox_instructions.py [--changes N]

Needs valgrind (and root or the postgres user, as the tests' clusters).
About a minute per case for 20,000 changes.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psycopg2  # noqa: E402

from bench import outbox_sql  # noqa: E402
from hermes_tx.outbox import sql as statements  # noqa: E402
from hermes_tx.outbox.schema import install  # noqa: E402
from tests.support.pgcluster import Cluster  # noqa: E402

BATCH = 500

#: (name, what it is), in the order printed
CASES = [
    ("loop", "the hand-written DELETE ... SKIP LOCKED loop"),
    ("two steps", "UPDATE of the oldest 500 (SKIP LOCKED), then DELETE by id and token, a table like the loop's"),
    ("two steps, outbox", "the same UPDATE on the outbox, acknowledged by ack()"),
    ("hermes", "the outbox's claim_runs(500) and ack()"),
    ("loop, outbox", "the loop's statement on the outbox (fillfactor 40, room for HOT claims)"),
    ("held", "a DELETE of the oldest free change of each key, by ctid, in a transaction held open"
             " over the delivery (not the outbox's protocol)"),
]


def script(case, changes, hermes):
    """
    @param hermes: the outbox's C{claim_runs} and C{ack} statements as
        text (L{hermes_tx.outbox.sql}, rendered for the schema).
    @return: the single-user script of C{case} (C{None}: the writes alone).
    """
    out = ["CREATE TEMP TABLE held (step int, id bigint)", "CREATE INDEX ON held (step)", "SET jit = off"]
    for table in ("hermes.outbox", "bench_queue", "bench_claims"):
        out.append(f"INSERT INTO {table} (topic, key, payload) SELECT '{outbox_sql.TOPIC}', g::text,"
                   f" {outbox_sql.PAYLOAD} FROM generate_series(1, {changes}) g")
        out.append(f"VACUUM ANALYZE {table}")
    # The statements' parameters written in: a single-user backend takes none.
    tokens = [f"'{uuid.UUID(int=i + 1)}'" for i in range(changes // BATCH + 3)]
    for k in range(1, len(tokens) - 1):
        held = f"ARRAY(SELECT id FROM held WHERE step = {k - 1})"
        keep = f"INSERT INTO held SELECT {k}, id FROM"
        if case == "loop":
            out.append(f"WITH d AS ({outbox_sql.PLAIN_DELETE % BATCH}) {keep} d")
        elif case == "loop, outbox":
            # The loop's plan is a hash semi join over a sequential scan of
            # the whole table: its cost follows the table's pages.
            out.append(f"WITH d AS ({outbox_sql.PLAIN_DELETE.replace('bench_queue', 'hermes.outbox') % BATCH}) {keep} d")
        elif case == "held":
            if k == 1:
                out += outbox_sql.HELD_SETTINGS
            out += ["BEGIN", f"WITH d AS ({outbox_sql.HELD_DELETE % BATCH}) {keep} d", "COMMIT"]
        elif case == "two steps":
            out.append(f"WITH c AS ({outbox_sql.CLAIM_UPDATE % (tokens[k], BATCH)}) {keep} c")
            out.append(f"WITH d AS ({outbox_sql.CLAIM_DELETE % (held, tokens[k - 1])}) SELECT count(*) FROM d")
        elif case in ("two steps, outbox", "hermes"):
            if case == "hermes":
                claim = hermes["claim_runs"] % (f"ARRAY['{outbox_sql.TOPIC}']", BATCH, tokens[k], 30.0)
                out.append(f"{keep} ({claim}) c")
            else:
                out.append(f"WITH c AS (UPDATE hermes.outbox o SET claim_token = {tokens[k]},"
                           f" claimed_until = now() + interval '30 s', attempts = o.attempts + 1,"
                           f" claim_pid = pg_backend_pid(), claimed_at = now() WHERE o.id IN (SELECT id FROM"
                           f" hermes.outbox WHERE claimed_until IS NULL ORDER BY id LIMIT {BATCH}"
                           f" FOR UPDATE SKIP LOCKED)"
                           f" RETURNING o.id, o.topic, o.key, o.payload::text, extract(epoch FROM o.created_at))"
                           f" {keep} c")
            out.append(f"SELECT count(*) FROM ({hermes['ack'] % (held, tokens[k - 1])}) a")
    out.append("SELECT count(*) AS drained FROM held")
    return "".join(statement + ";\n\n" for statement in out)


def count(cluster, case, changes, hermes, workdir):
    """@return: the instructions of C{case}'s single-user run, and how many it drained."""
    name = re.sub(r"\W+", "-", case or "writes")
    copy = os.path.join(cluster.base_dir, f"copy-{name}")
    out = os.path.join(workdir, f"callgrind-{name}.out")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(as_postgres + ["cp", "-a", cluster.data_dir, copy], check=True)
    run = subprocess.run(
        as_postgres + ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                       os.path.join(cluster.bindir, "postgres"), "--single", "-j", "-D", copy, "postgres"],
        input=script(case, changes, hermes), capture_output=True, text=True, cwd=workdir)
    subprocess.run(as_postgres + ["rm", "-rf", copy], check=True)
    drained = re.findall(r'drained = "(\d+)"', run.stdout)
    errors = [line for line in run.stdout.splitlines() if "ERROR" in line]
    if run.returncode != 0 or errors or not drained:
        raise RuntimeError(f"{case or 'writes'}: {run.returncode} {errors[:3]} {run.stderr[-2000:]}")
    with open(out) as f:
        total = int(re.search(r"^summary: (\d+)$", f.read(), re.M).group(1))
    return total, int(drained[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=20000)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="hermes-bench-instructions-")
    os.chmod(workdir, 0o777)  # the postgres user writes callgrind's output there
    cluster = Cluster.create_primary()
    try:
        with psycopg2.connect(cluster.dsn()) as conn:
            install(conn)
            conn.autocommit = True
            outbox_sql.make_tables(conn.cursor())
            hermes = {"claim_runs": statements.claim_runs().as_string(conn), "ack": statements.ack().as_string(conn)}
        conn.close()
        cluster.stop()
        writes, _ = count(cluster, None, args.changes, hermes, workdir)
        print(f"the no-op drain's statements, {args.changes:,} changes (one key each), instructions of the server"
              f" per change (valgrind --tool=callgrind, the writes taken off)")
        loop = None
        for case, what in CASES:
            total, drained = count(cluster, case, args.changes, hermes, workdir)
            if drained != args.changes:
                raise RuntimeError(f"{case}: drained {drained} of {args.changes}")
            per = (total - writes) / args.changes
            loop = loop or per
            print(f"  {per:9,.0f}  {loop / per:4.2f}x  {what}", flush=True)
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
