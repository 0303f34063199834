"""
C{bench/outbox.py}'s C{xmin} section: throughput and claim cost of one
consumer, writers at full speed, while another connection holds a
C{REPEATABLE READ} transaction open (the xmin horizon pinned), read from
C{pg_stat_statements} and C{pg_stat_user_tables} every few seconds.
"""

import time

import psycopg2

from tests.support.fleet import Writer, prepare_writer_tables, wait_for

def xmin(bench, keys, processor):
    """
    Run the section on C{bench} (a C{bench/outbox.py} C{Bench}), adding a
    row per sample.

    @param keys: the writers' keys.
    @param processor: the consumer's C{--processor} (a no-op).
    """
    base, pinned, after, every = (6, 20, 6, 5) if bench.quick else (15, 60, 15, 10)
    print(f"xmin: {base} s, then {pinned} s pinned, then {after} s", flush=True)
    dsn = bench.database("xmin")
    prepare_writer_tables(dsn, keys)
    fleet = bench.fleet("xmin", dsn, "t", processor=processor)
    holder = psycopg2.connect(dsn, application_name="bench-holder")
    try:
        fleet.start()
        wait_for(fleet.consuming, 60, "consuming")
        writer = Writer(dsn, keys, rate=0, threads=2).start()
        samples = [("no transaction open", t) for t in range(every, base + 1, every)]
        samples += [("REPEATABLE READ open", t) for t in range(every, pinned + 1, every)]
        samples += [("after it ended", t) for t in range(every, after + 1, every)]
        statements_reset(bench)
        written = len(writer.acknowledged)
        for phase, at in samples:
            if phase == "REPEATABLE READ open" and at == every:
                holder.cursor().execute("BEGIN ISOLATION LEVEL REPEATABLE READ;"
                                        " SELECT count(*) FROM e2e_counters")
            if phase == "after it ended" and at == every:
                holder.commit()
            time.sleep(every)
            now = len(writer.acknowledged)
            sample(bench, dsn, phase, at, (now - written) / every, every)
            written = now
        writer.stop()
        fleet.stop()
        wait_for(fleet.stopped, 30, "twistd stopped")
    finally:
        holder.close()
        fleet.kill_all()


def statements_reset(bench):
    bench.cluster.execute("SELECT pg_stat_statements_reset()")


def sample(bench, dsn, phase, at, written, every):
    rows = bench.cluster.execute(
        "SELECT CASE WHEN query LIKE '%%.claim(%%' THEN 'claim' ELSE 'ack' END,"
        " sum(calls)::bigint, sum(total_exec_time)::float8, sum(rows)::bigint FROM pg_stat_statements"
        " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'xmin')"
        " AND (query LIKE '%%.claim(%%' OR query LIKE 'DELETE FROM \"hermes\".outbox o%%') GROUP BY 1")
    statements_reset(bench)
    stats = {kind: (calls, total, n) for kind, calls, total, n in rows}
    calls, total, _ = stats.get("claim", (0, 0.0, 0))
    acked = stats.get("ack", (0, 0.0, 0))[2]
    conn, cur = bench.connect(dsn)
    try:
        cur.execute("SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)"
                    " FROM hermes.outbox")
        depth, lag = cur.fetchone()
        cur.execute("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'hermes.outbox'::regclass")
        dead = cur.fetchone()[0]
    finally:
        conn.close()
    bench.add(f"xmin: {phase}, {at} s", f"written {written:,.0f}/s, delivered {acked / every:,.0f}/s,"
              f" claim {total / calls if calls else 0:.1f} ms ({calls / every:.0f}/s), depth {depth:,},"
              f" lag {lag:.1f} s, dead tuples {dead:,}")
