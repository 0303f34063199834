"""
The section "Elasticsearch with 3% of items answered 429 on first sight"
of bench/sinks.py (issue 15): the same outbox drained through a real
C{twistd hermes --outbox TOPIC --sink elasticsearch+http://...} process
into the tests' stand-in for the _bulk API (tests/support/fake_es.py, in a
process of its own), once answering every item and once answering 429 to
a chosen 3% of the items the first time it sees them (chosen by a hash of
the document id and version: the same ones every round).

Each round is timed from "consuming" (the changes are already in the
outbox) to an empty outbox (every change acknowledged, so confirmed by
the index), then the index is read back: every document indexed, each at
its key's last change (version and source).  Goal: the drain with 429s at
least 0.7x the rate without, and done within the time without + 3 s.
When 95% of the changes were acknowledged is printed beside it (as the
failing processor's goal counts a drain, bench/flow.py), a measurement.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

import psycopg2

from hermes_tx.outbox.schema import install
from tests.support.fleet import Fleet, wait_for
from tests.support.pgcluster import Cluster

TOPIC = "items"
INDEX = "items"


def emit(cur, events, keys):
    """
    Empty the outbox and emit C{events} changes over C{keys} keys, as
    C{hermes-tx capture} writes an UPDATE: C{{"op", "new": {"id", "n"}}},
    C{n} counting up per key.
    """
    cur.execute("TRUNCATE hermes.outbox")
    for first in range(1, events + 1, 5000):
        last = min(first + 4999, events)
        cur.execute(
            "SELECT count(hermes.emit(%s, 'k' || (g %% %s),"
            " jsonb_build_object('op', 'UPDATE', 'new',"
            "   jsonb_build_object('id', 'k' || (g %% %s), 'n', g))))"
            " FROM generate_series(%s, %s) g", (TOPIC, keys, keys, first, last))
    cur.execute("ANALYZE hermes.outbox")


def expected(cur):
    """@return: C{{key: (last outbox id, last n)}} of the pending changes."""
    cur.execute("SELECT DISTINCT ON (key) key, id, (payload -> 'new' ->> 'n')::int"
                " FROM hermes.outbox ORDER BY key, id DESC")
    return {key: (i, n) for key, i, n in cur.fetchall()}


def start_server(script, first_sight_429, workdir):
    """@return: C{(process, port)}: bench/sinks.py serving a fresh fake _bulk API."""
    port_file = os.path.join(workdir, f"port-{time.monotonic_ns()}")
    process = subprocess.Popen([sys.executable, script, "--serve", port_file,
                                "--first-sight-429", str(first_sight_429)])
    wait_for(lambda: os.path.exists(port_file) and open(port_file).read(), 30, "the fake _bulk API")
    return process, int(open(port_file).read())


def index_state(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_fake/{INDEX}") as answer:
        return json.loads(answer.read())


def depth(cur):
    cur.execute("SELECT count(*) FROM hermes.outbox")
    return cur.fetchone()[0]


def drain(dsn, cur, script, workdir, events, keys, first_sight_429, timeout, extra=()):
    """
    One round.

    @return: a dict: C{seconds} (C{None} when not drained within
        C{timeout}), C{left} (changes still in the outbox), C{answered_429},
        C{exact} (every key's document at its last change) and C{problems}.
    """
    emit(cur, events, keys)
    want = expected(cur)
    server, port = start_server(script, first_sight_429, workdir)
    fleet = Fleet(dsn, [TOPIC], os.path.join(workdir, f"fleet-{time.monotonic_ns()}"),
                  extra=extra, sink=f"elasticsearch+http://127.0.0.1:{port}/{INDEX}")
    os.makedirs(fleet.workdir)
    try:
        fleet.start()
        wait_for(fleet.consuming, 60, "twistd hermes consuming", interval=0.002)
        start = time.perf_counter()
        seconds = t95 = None
        tail = events // 20  # 95% acknowledged: at most this many left
        while time.perf_counter() - start < timeout:
            cur.execute("SELECT count(*) FROM (SELECT FROM hermes.outbox LIMIT %s) s", (tail + 1,))
            left = cur.fetchone()[0]
            if t95 is None and left <= tail:
                t95 = time.perf_counter() - start
            if not left:
                seconds = time.perf_counter() - start
                break
            time.sleep(0.005)
        left = depth(cur)
        state = index_state(port)
        fleet.stop()
        wait_for(fleet.stopped, 30, "twistd stopped")
    finally:
        fleet.kill_all()
        server.terminate()
        server.wait()
    live = state["live"]
    wrong = [k for k, (i, n) in want.items()
             if k not in live or live[k][0] != i or live[k][1] != {"id": k, "n": n}]
    cur.execute("SELECT count(*) FROM hermes.dead_letters")
    dead = cur.fetchone()[0]
    cur.execute("TRUNCATE hermes.dead_letters")
    problems = fleet.unclean()
    return {"seconds": seconds, "t95": t95, "left": left, "answered_429": state["answered_429"],
            "exact": not wrong and len(live) == len(want) and not dead,
            "wrong": len(wrong), "dead": dead, "problems": problems}


def run(script, events=20000, keys=2000, rounds=1, timeout=120.0, extra=()):
    """
    The section: C{rounds} rounds of the drain without and with 429s
    (alternating which goes first), medians printed with the goal.

    @param extra: more arguments for C{twistd hermes} (both drains).
    """
    workdir = tempfile.mkdtemp(prefix="hermes-bench-sinks-429-")
    cluster = Cluster.create_primary()
    try:
        cluster.execute("CREATE DATABASE sinks")
        dsn = cluster.dsn("sinks")
        conn = psycopg2.connect(dsn)
        install(conn)
        conn.commit()
        conn.autocommit = True
        cur = conn.cursor()
        results = {0.0: [], 0.03: []}
        print(f"es-429: {events:,} changes over {keys:,} keys through twistd hermes --outbox"
              f" --sink elasticsearch+http://...{''.join(' ' + a for a in extra)}"
              f" ({rounds} round(s), {timeout:g} s at most each)",
              flush=True)
        for r in range(rounds):
            for share in ((0.0, 0.03) if r % 2 == 0 else (0.03, 0.0)):
                result = drain(dsn, cur, script, workdir, events, keys, share, timeout, extra)
                results[share].append(result)
                took = (f"{result['seconds']:.2f} s, {events / result['seconds']:,.0f}/s"
                        f" (95% in {result['t95']:.2f} s)"
                        if result["seconds"] else f"not drained in {timeout:g} s,"
                        f" {result['left']:,} left")
                print(f"  round {r + 1}, {share:.0%} first-sight 429s: {took};"
                      f" {result['answered_429']:,} items answered 429;"
                      f" index {'exact' if result['exact'] else 'WRONG'}"
                      f" ({result['wrong']} documents off, {result['dead']} dead letters)",
                      flush=True)
                for problem in result["problems"]:
                    print("    " + problem[:1500].replace("\n", "\n    "), flush=True)
        conn.close()
    finally:
        cluster.destroy()
    return summarize(results, events, timeout)


def summarize(results, events, timeout):
    def median(values):
        values = sorted(values)
        return values[len(values) // 2]

    plain = [r["seconds"] for r in results[0.0]]
    throttled = [r["seconds"] if r["seconds"] else float("inf") for r in results[0.03]]
    base, slow = median(plain), median(throttled)
    ratio = base / slow if slow != float("inf") else 0.0
    exact = all(r["exact"] for rs in results.values() for r in rs)
    # the stream apart from its tail, as the failing processor's goal counts
    # it (bench/flow.py): a measurement beside the goal, not the goal
    t95_base = median([r["t95"] if r["t95"] else float("inf") for r in results[0.0]])
    t95_slow = median([r["t95"] if r["t95"] else float("inf") for r in results[0.03]])
    lines = [
        f"es-429  without 429s: {events / base:,.0f}/s ({base:.2f} s)",
        (f"es-429  3% first-sight 429s: {events / slow:,.0f}/s ({slow:.2f} s), {ratio:.2f}x,"
         f" +{slow - base:.2f} s" if slow != float("inf") else
         f"es-429  3% first-sight 429s: not drained within {timeout:g} s"),
        f"es-429  95% acknowledged: {t95_slow:.2f} s against {t95_base:.2f} s"
        f" ({t95_base / t95_slow:.2f}x; a measurement, the goal counts the whole drain)",
        f"es-429  goal: >= 0.70x and within +3 s: {'met' if ratio >= 0.7 and slow - base <= 3 else 'MISSED'};"
        f" every document indexed, index exact: {'yes' if exact else 'NO'}",
    ]
    for line in lines:
        print(line, flush=True)
    return lines
