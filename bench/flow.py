"""
"The river keeps flowing" (issue 15): failing processors, hung and slow
servers, refused credentials and big backlogs, measured through real
C{twistd hermes} processes on throwaway servers.

    .venv/bin/python bench/flow.py [--quick] [--rounds 3] [--only SECTION ...]

  failures       20,000 pending changes over 2,000 keys (and with a key
                 each, unless --quick) drained by one
                 twistd hermes --outbox --max-attempts 3 with
                 tests.support.deliveries:FlakyRecorder: no failures, 3% of
                 first deliveries failing, twenty poison changes (always
                 failing); rates from the lines' timestamps
  chaos-failing  bench/outbox.py's chaos with 3% of first deliveries failing
  hung           every hermes backend SIGSTOPped (--liveness-timeout 3):
                 seconds to a new change and a new notification delivered
  timeout50      the consumer's role has statement_timeout = 50ms, a
                 400,000-change backlog: first delivery, drain rate,
                 connections lost
  grants         a consumer whose role has no grants: its connection
                 attempts, its log lines, /ready
  redis-auth     --sink redis://:WRONG@... on a redis-server requiring
                 another password: seconds to /ready 503
  figures        hermes-tx status and /metrics on a 1,000,000-change
                 backlog; commit -> execute latency of new changes with and
                 without a /metrics scrape every second
  memory         the peak RSS of twistd hermes --outbox draining 300
                 changes of 1 MB

--quick: one round, shorter waits (sections say which).  Each section's
logs are kept under /tmp/hermes-bench-flow-* (the path is printed).
"""

import argparse
import glob
import json
import math
import os
import random
import re
import sys
import tempfile
import time
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench")]

import psycopg2  # noqa: E402
import psycopg2.extensions  # noqa: E402

from hermes_tx.outbox.schema import install  # noqa: E402
from tests.support.deliveries import fails_first, judge, read_lines  # noqa: E402
from tests.support.fleet import Fleet, committed_on, prefill, prepare_writer_tables, wait_for  # noqa: E402
from tests.support.pgcluster import Cluster  # noqa: E402

FLAKY = "tests.support.deliveries:FlakyRecorder"
SECTIONS = ["failures", "chaos-failing", "hung", "timeout50", "grants", "redis-auth", "figures", "memory"]
#: "2026-12-02 10:00:00.123 UTC [123] LOG:  connection authorized: user=..."
CONNECTION = re.compile(r"^(\S+ \S+) \S+ \[\d+\] LOG:  connection authorized: user=(\S+) .*?"
                        r"(?:application_name=(\S+))?$", re.M)


class Bench:
    """
    One server (connections logged) and a database per case, the results
    as table rows.
    """

    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.rounds = 1 if args.quick else args.rounds
        self.rows = []  # (case, result, goal, met)
        self.notes = []
        self.logs = tempfile.mkdtemp(prefix="hermes-bench-flow-")
        print(f"logs: {self.logs}", flush=True)
        self.cluster = Cluster.create_primary()
        self.cluster.execute("ALTER SYSTEM SET log_connections = on")
        self.cluster.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        self.cluster.restart()
        self.cluster.execute("CREATE EXTENSION pg_stat_statements")
        self._databases = 0

    def database(self, name):
        """@return: the DSN of a new database with the outbox installed."""
        self._databases += 1
        name = f"{name}_{self._databases}"
        self.cluster.execute(f"CREATE DATABASE {name}")
        dsn = self.cluster.dsn(name)
        conn = psycopg2.connect(dsn)
        try:
            install(conn)
            conn.commit()
        finally:
            conn.close()
        return dsn

    def copy_database(self, dsn):
        """@return: the DSN of a new copy of the database at C{dsn} (nobody connected to it)."""
        self._databases += 1
        name = f"copy_{self._databases}"
        self.cluster.execute(f"CREATE DATABASE {name} TEMPLATE {_dbname(dsn)}")
        return self.cluster.dsn(name)

    def reset_statements(self):
        self.cluster.execute("SELECT pg_stat_statements_reset()")

    def statements(self, dsn, most=3):
        """
        @return: the statements of the database at C{dsn} that took the
            server the most time since L{reset_statements}, one line.
        """
        rows = self.cluster.execute(
            "SELECT calls, mean_exec_time, max_exec_time, regexp_replace(query, '\\s+', ' ', 'g')"
            " FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %s)"
            " ORDER BY total_exec_time DESC LIMIT %s", (_dbname(dsn), most))
        return "; ".join(f"{calls} x {query[:45]!r} mean {mean:.1f} ms, max {top:.0f} ms"
                         for calls, mean, top, query in rows)

    def connect(self, dsn):
        conn = psycopg2.connect(dsn, application_name="bench")
        conn.autocommit = True
        return conn, conn.cursor()

    def query(self, dsn, sql, params=None):
        conn, cur = self.connect(dsn)
        try:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description is not None else None
        finally:
            conn.close()

    def workdir(self, name):
        path = os.path.join(self.logs, name)
        os.makedirs(path, exist_ok=True)
        return path

    def server_log_mark(self):
        return len(self.cluster.read_log())

    def server_log(self, mark, path):
        """
        @return: the server's log since it had C{mark} characters, also
            written to C{path/server.log} (the cluster goes at the end).
        """
        text = self.cluster.read_log()[mark:]
        with open(os.path.join(path, "server.log"), "w") as f:
            f.write(text)
        return text

    def connections(self, mark, user):
        """
        @return: C{(seconds since the epoch of the server's clock,
            application_name)} of each connection C{user} made since the
            server log had C{mark} characters.
        """
        found = []
        for stamp, who, app in CONNECTION.findall(self.cluster.read_log()[mark:]):
            if who == user:
                found.append((datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp(), app))
        return found

    def check_logs(self, section, paths):
        """
        A note for each twistd log among C{paths} with an C{Unhandled
        Error} or a traceback other than the processor's C{Flaky} errors
        (logged with theirs).
        """
        for path in paths:
            with open(path, errors="replace") as f:
                text = f.read()
            foreign = [chunk for chunk in text.split("Traceback (most recent call last):")[1:]
                       if "deliveries.Flaky: " not in "\n".join(chunk.splitlines()[:40])]
            unhandled = text.count("Unhandled Error")
            if foreign or unhandled:
                self.note(f"{section}: {path}: {unhandled} Unhandled Error, {len(foreign)} traceback(s)"
                          f" other than Flaky's; first: {(foreign or [''])[0][:600]}")

    def add(self, case, result, goal, met):
        self.rows.append((case, result, goal, "yes" if met else "NO"))
        print(f"  {case}: {result}   (goal {goal}: {'met' if met else 'NOT met'})", flush=True)

    def note(self, text):
        self.notes.append(text)
        print(f"  note: {text[:500]}", flush=True)

    def close(self):
        self.cluster.destroy()

    # -- failures ----------------------------------------------------------------

    def failures(self):
        count = 20000
        for keys in ([2000] if self.quick else [2000, count]):
            self.failures_over(count, keys)

    def failures_over(self, count, keys):
        """
        The three drains of C{count} changes over C{keys} keys, each
        C{self.rounds} times (alternating the order), and their rows.
        """
        shape = "a key each" if keys == count else f"{keys:,} keys"
        names = [f"key-{i}" for i in range(keys)]
        rng = random.Random(15)
        poison = sorted(rng.sample([(k, n) for k in names for n in range(1, count // keys + 1)], 20))
        cases = [("no failures", {}), ("3% of first deliveries failing", {"E2E_FAIL_RATE": "0.03"}),
                 ("20 poison changes", {"E2E_POISON": json.dumps(poison)})]
        print(f"failures: {count:,} pending changes over {shape}, --max-attempts 3, {self.rounds} round(s)",
              flush=True)
        results = {label: [] for label, _ in cases}
        for r in range(self.rounds):
            for label, env in (cases if r % 2 == 0 else cases[::-1]):
                result = self.failing_drain(label, env, names, count // keys)
                results[label].append(result)
                print(f"    round {r + 1}, {label}: 95% in {result['t95']:.2f} s, all in"
                      f" {_seconds(result['t_all'])}, empty in {_seconds(result['t_empty'])};"
                      f" {result['retried']} delivered after a failure ({result['chosen']} chosen to fail),"
                      f" dead letters {len(result['dead'])}", flush=True)
        base = {k: _median([r[k] for r in results["no failures"]]) for k in ("t95", "t_all")}
        self.add(f"failures ({shape}): no failures", f"95% at {0.95 * count / base['t95']:,.0f}/s"
                 f" ({base['t95']:.2f} s), all in {_seconds(base['t_all'])}", "", base["t_all"] is not None)
        for label, env in cases[1:]:
            t95, t_all = (_median([r[k] for r in results[label]]) for k in ("t95", "t_all"))
            ratio = base["t95"] / t95
            wrong = sorted({w for r in results[label] for w in r["wrong"]})
            self.add(f"failures ({shape}): {label}, 95% delivered",
                     f"{0.95 * count / t95:,.0f}/s ({ratio:.2f}x, {t95:.2f} s)", ">= 0.7x", ratio >= 0.7)
            if "E2E_FAIL_RATE" in env:
                late = None if t_all is None or base["t_all"] is None else t_all - base["t_all"]
                self.add(f"failures ({shape}): {label}, all delivered",
                         f"{_seconds(t_all)} (+{late:.1f} s)" if late is not None else "not all",
                         "+10 s", late is not None and late <= 10)
            else:
                dead = [r["dead"] == poison for r in results[label]]
                worst = min(results[label], key=lambda r: r["dead"] == poison)
                self.add(f"failures ({shape}): {label}, dead letters",
                         f"{sum(dead)} of {len(dead)} round(s) exactly the twenty; outbox empty"
                         f" {_seconds(_median([r['t_empty'] for r in results[label]]))}"
                         + ("" if all(dead) else f" (a round: {len(worst['dead'])} dead letters, {worst['left']})"),
                         "exactly the 20", all(dead))
            self.add(f"failures ({shape}): {label}, delivered",
                     "; ".join(wrong[:3])[:300] + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else "")
                     or "every change once, in order",
                     "none lost, none out of order", not wrong)

    def failing_drain(self, label, env, keys, per_key):
        """
        One drain: a twistd hermes consuming, then C{len(keys) * per_key}
        changes committed at once.

        @return: a dict: C{t95}, C{t_all} (seconds from the commit to 95%
            and to all of the deliverable changes delivered; C{t_all}
            C{None} if some never were), C{t_empty} (to an empty outbox),
            C{dead} (the dead letters' C{(key, n)}, sorted), C{retried}
            (changes delivered after a failure), C{wrong} (what was wrong).
        """
        timeout = 60  # the poison changes' dead letters are due within about 5 s
        dsn = self.database("failures")
        prepare_writer_tables(dsn, keys)
        poison = {tuple(p) for p in json.loads(env.get("E2E_POISON", "[]"))}
        fleet = Fleet(dsn, ["t"], self.workdir(f"failures-{self._databases}"), processor=FLAKY,
                      extra=["--max-attempts", "3"] + self.args.hermes_arg)
        fleet.env.update(env)
        conn, cur = self.connect(dsn)
        try:
            fleet.start()
            wait_for(fleet.consuming, 60, "twistd hermes consuming", interval=0.005)
            prefill(dsn, keys, per_key)
            start = time.time()
            try:
                wait_for(lambda: not _pending(cur), timeout, "an empty outbox", interval=0.005)
                t_empty = time.time() - start
            except AssertionError:
                t_empty = None
            cur.execute("SELECT key, (payload ->> 'n')::int FROM hermes.dead_letters ORDER BY 1, 2")
            dead = [tuple(row) for row in cur.fetchall()]
            cur.execute("SELECT count(*), count(*) FILTER (WHERE (key, (payload ->> 'n')::int) IN"
                        " (SELECT * FROM unnest(%s::text[], %s::int[]))), array_agg(DISTINCT attempts)"
                        " FROM hermes.outbox", ([k for k, _ in poison], [n for _, n in poison]))
            left = cur.fetchone()
            fleet.stop()
            wait_for(fleet.stopped, 30, "twistd stopped")
        finally:
            conn.close()
            fleet.kill_all()
        lines = read_lines(fleet.output)
        counts, _ = committed_on(dsn)
        first = {}
        for line in lines:
            first.setdefault((line["key"], line["n"]), line)
        deliverable = sum(counts.values()) - len(poison)
        times = sorted(line["t"] - start for line in first.values())
        wrong = []
        # The poison changes are missing and their keys skip them: judge
        # every other key.
        spoilt = {k for k, _ in poison}
        verdict = judge([(d["key"], d["n"]) for d in lines if d["key"] not in spoilt],
                        {k: c for k, c in counts.items() if k not in spoilt})
        if verdict.missing or verdict.disorder or verdict.duplicates:
            wrong.append(verdict.summary())
        for key in spoilt:
            got = [d["n"] for d in lines if d["key"] == key]
            want = [n for n in range(1, counts[key] + 1) if (key, n) not in poison]
            if got != want:
                wrong.append(f"{key}: delivered {got}, expected {want}")
        self.check_logs(f"failures, {label}", [i.log_path for i in fleet.instances])
        rate = float(env.get("E2E_FAIL_RATE", 0))
        return {
            "t95": times[math.ceil(0.95 * deliverable) - 1] if len(times) >= 0.95 * deliverable else float("inf"),
            "t_all": times[-1] if len(first) >= deliverable else None,
            "t_empty": t_empty, "dead": dead, "wrong": wrong,
            "left": f"{left[0]} left in the outbox, {left[1]} of them poison, attempts {left[2]}",
            "retried": sum(1 for line in first.values() if line["attempts"] > 0),
            "chosen": sum(1 for k, n in first if rate and fails_first(k, n, rate)),
        }

    # -- chaos-failing -------------------------------------------------------------

    def chaos_failing(self):
        import outbox

        chaos = outbox.Bench(argparse.Namespace(quick=self.quick, rounds=1, fail_rate=0.03))
        try:
            verdict, caught_up = chaos.chaos()
        finally:
            chaos.close()
        case, result, _ = chaos.rows[-1]
        self.check_logs("chaos-failing", glob.glob(os.path.join(chaos.workdir, "chaos", "twistd-*.log")))
        self.add(case, result, "0 lost, 0 out of order, <= 5% duplicates, converged <= 30 s",
                 not verdict.missing and not verdict.disorder and verdict.duplicate_ratio <= 0.05
                 and caught_up <= 30)


def _pending(cur):
    cur.execute("SELECT EXISTS (SELECT 1 FROM hermes.outbox)")
    return cur.fetchone()[0]


def _dbname(dsn):
    return psycopg2.extensions.parse_dsn(dsn)["dbname"]


def _median(values):
    known = sorted(v for v in values if v is not None)
    if len(known) < len(values):
        return None
    return known[len(known) // 2]


def _seconds(value):
    return "never" if value is None else f"{value:.2f} s"


def main():
    import flow_backlog
    import flow_refused
    import flow_stuck

    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=SECTIONS, choices=SECTIONS)
    parser.add_argument("--memory-arg", action="append", default=[],
                        help="memory: an argument for twistd hermes (repeatable), e.g. a byte bound")
    parser.add_argument("--hermes-arg", action="append", default=[],
                        help="failures: an argument for twistd hermes (repeatable), e.g. --hermes-arg=--retry-delay=0.05")
    args = parser.parse_args()
    bench = Bench(args)
    try:
        for section in args.only:
            {"failures": bench.failures, "chaos-failing": bench.chaos_failing,
             "hung": lambda: flow_stuck.hung(bench), "timeout50": lambda: flow_stuck.timeout50(bench),
             "grants": lambda: flow_refused.grants(bench),
             "redis-auth": lambda: flow_refused.redis_auth(bench),
             "figures": lambda: flow_backlog.figures(bench),
             "memory": lambda: flow_backlog.memory(bench)}[section]()
    finally:
        bench.close()
    header = ("case", "result", "goal", "met")
    widths = [max(len(r[i]) for r in bench.rows + [header]) for i in range(4)]
    line = "  ".join("=" * w for w in widths)
    print("\n" + line)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print(line)
    for row in bench.rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print(line)
    for note in bench.notes:
        print(note)
    print(f"logs: {bench.logs}")


if __name__ == "__main__":
    main()
