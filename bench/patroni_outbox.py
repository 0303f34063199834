"""
What C{bench/patroni.py} says about the outbox on the Patroni recipe's
cluster: what synchronous mode costs a commit, and whether the outbox kept
its guarantee through the faults (every change whose COMMIT returned
delivered, per key in order), with how long changes waited.
"""

import statistics
import time

import psycopg2

from tests.support.deliveries import judge
from tests.support.fleet import committed_on, wait_for


def query(dsn, sql):
    conn = psycopg2.connect(dsn, connect_timeout=2)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]
    finally:
        conn.close()


def commit_latency(dsn, count):
    """@return: C{(p50, p99)} milliseconds of C{count} single-INSERT commits, one client."""
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        cur = conn.cursor()
        times = []
        for _ in range(count):
            start = time.perf_counter()
            cur.execute("INSERT INTO bench_probe DEFAULT VALUES")
            times.append((time.perf_counter() - start) * 1000)
    finally:
        conn.close()
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99)]


def sync_cost(demo, dsn, count=500):
    """
    Commit latency with C{synchronous_mode} on (the recipe), then off
    (C{patronictl edit-config}), then on again.

    @return: lines to print.
    """
    sync = commit_latency(dsn, count)
    demo.patronictl("edit-config", "-s", "synchronous_mode=false", "--force")
    wait_for(lambda: query(dsn, "SHOW synchronous_standby_names") == "", 60, "asynchronous replication", 0.2)
    plain = commit_latency(dsn, count)
    demo.patronictl("edit-config", "-s", "synchronous_mode=true", "--force")
    wait_for(lambda: query(dsn, "SHOW synchronous_standby_names") != "" and demo.healthy(), 60,
             "synchronous replication again", 0.2)
    return [f"commit latency, one client, {count} single-INSERT commits each: synchronous_mode p50"
            f" {sync[0]:.2f} ms, p99 {sync[1]:.2f} ms; asynchronous p50 {plain[0]:.2f} ms,"
            f" p99 {plain[1]:.2f} ms"]


def guarantee(dsn, writer, outbox, faults, visibility=30.0):
    """
    Wait until the outbox is empty, then judge what C{outbox} delivered
    against what the final primary has and what the writer saw return.

    @param visibility: the consumer's C{--visibility-timeout}.
    @return: lines to print.
    """
    wait_for(lambda: query(dsn, "SELECT count(*) FROM hermes.outbox") == 0, visibility + 120,
             "an empty outbox", 0.5)
    counts, tokens = committed_on(dsn)
    lines = outbox.lines()
    verdict = judge([(d["key"], d["n"], d["w"]) for d in lines], counts, tokens)
    acked = list(writer.acknowledged)
    lost = [(k, n) for k, n, w, _ in acked if tokens.get((k, n)) != w]
    returned = {w for _, _, w, _ in acked}
    in_doubt = sum(1 for w in tokens.values() if w not in returned)
    first = {}
    for d in lines:
        first.setdefault((d["key"], d["n"], d["w"]), d["t"])
    waits = [(first[(k, n, w)] - t, k, t) for k, n, w, t in acked if (k, n, w) in first]
    span = max(t for _, _, _, t in acked) - min(t for _, _, _, t in acked)
    out = [
        f"outbox through {len(faults)} faults, synchronous mode: {len(acked):,} commits returned"
        f" ({len(acked) / span:.0f}/s), {writer.unknown} cut (outcome unknown), {in_doubt} of them"
        f" committed all the same, {writer.refused} refused",
        f"  final primary has {verdict.expected:,}; delivered {verdict.delivered:,}: {len(verdict.missing)}"
        f" missing, {len(verdict.disorder)} out of order, {verdict.duplicates} duplicates,"
        f" {len(verdict.phantoms)} phantoms; COMMIT returned but not on the final primary: {len(lost)}"
        "   (guarantee: 0 missing, 0 out of order, 0 phantoms, 0 lost)",
    ]
    if verdict.missing or verdict.disorder or verdict.phantoms or lost:
        out.append("  " + verdict.summary() + f"; lost {lost[:5]}")
    longest = max(waits)
    per_fault = []
    for i, f in enumerate(faults):
        around = [w for w, _, t in waits if f["start"] - 2 <= t <= f["whole"]]
        per_fault.append(f"{f['kind']} {max(around):.2f}" if around else f"{f['kind']} -")
    out.append(f"  longest commit -> delivery: {longest[0]:.2f} s ({longest[1]}); per fault (changes"
               f" committed from 2 s before it until the cluster was whole): {', '.join(per_fault)} s")
    for limit in (visibility, 5.0):
        keys = {k for w, k, _ in waits if w >= limit}
        changes = sum(w >= limit for w, _, _ in waits)
        out.append(f"  keys that waited >= {limit:g} s: {len(keys)} ({changes} changes)"
                   + ("   (the visibility timeout)" if limit == visibility else ""))
    return out
