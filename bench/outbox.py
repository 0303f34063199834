"""
The durable outbox's goals (issue 10), measured through real C{twistd
hermes --outbox} processes on one throwaway server, peers in the same run
(not run by the tests; C{bench/outbox_sql.py} measures the SQL alone).

    .venv/bin/python bench/outbox.py [--quick] [--rounds 3] [--only SECTION ...]

  chaos    three instances, one SIGKILLed and replaced every 3 s, one kill
           of every hermes backend, one server restart (fast), during
           20,000 UPDATEs of a captured table over 500 keys: every committed
           change delivered, per key in order, duplicates counted; with
           --fail-rate 0.03 the processor fails the first delivery of 3% of
           the changes (tests.support.deliveries:FlakyRecorder)
  drain    50,000 pending changes, a no-op processor in one twistd
           process, against the hand-written DELETE ... SKIP LOCKED loop
           (bench/outbox_sql.py), and the server's time executing the
           statements of each (pg_stat_statements, microseconds a change);
           beside them the outbox's claim + ack in a
           blocking loop, the consumer's own statements in one (claiming
           ahead), and a claim (UPDATE ... SKIP LOCKED) + ack with
           nothing else (no per-key order), claiming ahead, and a claim
           deleted in a transaction held over the delivery (another
           protocol, measured for issue 15); pgqueuer and
           procrastinate processing the
           same number of no-op jobs (bench/outbox_peers.py); enqueue timed
           apart from processing
  latency  commit -> execute at 500 changes/s over 500 keys, --poll-interval
           10 (only the wake-up can be fast)
  capture  the same UPDATE workload with and without the capture trigger
  xmin     writers at full speed, one consumer, while another connection
           holds a REPEATABLE READ transaction open for 60 s
           (bench/outbox_xmin.py)
  scale    a processor taking 5 ms per change (a Deferred, the reactor
           free): 1, 2 and 4 instances draining the same 4,000 changes over
           500 keys, committed at once once they all consume

--quick shortens everything (5,000 changes, 20 s of pinned xmin, one round).
Requires bench/requirements.txt.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench")]

import psycopg2  # noqa: E402

import outbox_peers  # noqa: E402
import outbox_sql  # noqa: E402
import outbox_xmin  # noqa: E402
from hermes_tx.outbox.capture import capture, uncapture  # noqa: E402
from hermes_tx.outbox.schema import install  # noqa: E402
from tests.support.deliveries import judge, read_lines  # noqa: E402
from tests.support.fleet import (  # noqa: E402
    Fleet, Writer, committed_on, prepare_writer_tables, wait_for,
)
from tests.support.pgcluster import Cluster  # noqa: E402

NOOP = "tests.support.deliveries:NoOp"
FLAKY = "tests.support.deliveries:FlakyRecorder"
KEYS = [f"key-{i}" for i in range(500)]


class Bench:
    """One server, a database per section, the results as table rows."""

    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.rows = []  # (case, result, goal)
        self.notes = []
        self.workdir = tempfile.mkdtemp(prefix="hermes-bench-outbox-")
        self.cluster = Cluster.create_primary()
        self.cluster.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        self.cluster.restart()
        self.cluster.execute("CREATE EXTENSION pg_stat_statements")

    def database(self, name):
        self.cluster.execute(f"CREATE DATABASE {name}")
        dsn = self.cluster.dsn(name)
        with psycopg2.connect(dsn) as conn:
            install(conn)
        conn.close()
        return dsn

    def connect(self, dsn):
        conn = psycopg2.connect(dsn, application_name="bench")
        conn.autocommit = True
        return conn, conn.cursor()

    def fleet(self, name, dsn, topic, **kwargs):
        path = os.path.join(self.workdir, name)
        os.makedirs(path, exist_ok=True)
        return Fleet(dsn, [topic], path, **kwargs)

    def add(self, case, result, goal=""):
        self.rows.append((case, result, goal))
        print(f"  {case}: {result}" + (f"   (goal {goal})" if goal else ""), flush=True)

    def close(self):
        self.cluster.destroy()

    # -- chaos -----------------------------------------------------------------

    def chaos(self):
        """@return: the L{Verdict} and the seconds from the last commit to an empty outbox."""
        count = 5000 if self.quick else 20000
        rate = getattr(self.args, "fail_rate", 0.0)
        failing = f", {rate:.0%} of first deliveries failing" if rate else ""
        print(f"chaos: {count} UPDATEs over 500 keys, 3 instances{failing}", flush=True)
        dsn = self.database("chaos")
        prepare_writer_tables(dsn, KEYS, captured_topic="t")
        fleet = self.fleet("chaos", dsn, "t", extra=["--visibility-timeout", "2", "--poll-interval", "0.5"],
                           **({"processor": FLAKY} if rate else {}))
        fleet.env["E2E_FAIL_RATE"] = str(rate)
        try:
            for _ in range(3):
                fleet.start()
            wait_for(fleet.consuming, 60, "three instances consuming")
            # about 28 s of writes, whatever the count: room for 9 faults
            writer = Writer(dsn, KEYS, rate=count / 28.0, threads=2, limit=count, captured=True).start()
            events, done = ["kill", "terminate", "kill", "restart"], []
            while not writer.done():
                time.sleep(3.0)
                event = events[len(done)] if len(done) < len(events) else "kill"
                if event == "kill":
                    fleet.kill_one()
                    fleet.start()
                elif event == "terminate":
                    self.cluster.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name LIKE 'hermes%%' AND datname = 'chaos'")
                else:
                    self.cluster.restart("fast")
                done.append(event)
            finished = time.time()
            wait_for(lambda: self.depth(dsn) == 0, 600, "an empty outbox", interval=0.2)
            caught_up = time.time() - finished
            wait_for(fleet.consuming, 60, "the last replacement consuming")  # SIGTERM before twistd
            fleet.stop()  # installed its handlers would kill it
            wait_for(fleet.stopped, 60, "the instances stopped")
        finally:
            fleet.kill_all()
        counts, _ = committed_on(dsn, captured=True)
        verdict = judge([(d["key"], d["n"]) for d in read_lines(fleet.output)], counts)
        self.add(f"chaos: {verdict.expected:,} committed UPDATEs, {done.count('kill')} SIGKILLs,"
                 f" {done.count('terminate')} kill of all backends, {done.count('restart')} restart"
                 + failing,
                 f"{len(verdict.missing)} missing, {len(verdict.disorder)} out of order,"
                 f" {verdict.duplicate_ratio:.2%} duplicates; caught up {caught_up:.1f} s after the last"
                 " commit", "0, 0, <= 5%" + (", 30 s" if rate else ""))
        if fleet.unclean():
            self.notes.append("chaos: " + " | ".join(fleet.unclean())[:2000])
        return verdict, caught_up

    def depth(self, dsn):
        conn, cur = self.connect(dsn)
        try:
            cur.execute("SELECT count(*) FROM hermes.outbox")
            return cur.fetchone()[0]
        finally:
            conn.close()

    # -- drain -----------------------------------------------------------------

    def drain(self):
        rows, rounds = (5000, 1) if self.quick else (50000, self.args.rounds)
        print(f"drain {rows} pending changes (median of {rounds})", flush=True)
        dsn = self.database("drain")
        conn, cur = self.connect(dsn)
        outbox_sql.make_tables(cur)
        results = {}
        for keys in (None, 500):
            label = "own key each" if keys is None else f"{keys} keys"
            times = {"hermes": [], "emit": [], "sql": [], "own": [], "steps": [], "held": [], "plain": []}
            # the server's time executing them (microseconds a change)
            server = {"hermes": [], "own": [], "plain": []}
            for _ in range(rounds):
                outbox_sql.fill(cur, rows, keys)
                self.timed(times, server, "plain", lambda: outbox_sql.drain_plain(cur, rows), rows)
                times["sql"].append(outbox_sql.drain_hermes(cur, rows))
                times["steps"].append(outbox_sql.drain_two_steps(cur, rows))
                times["emit"].append(self.emit(cur, rows, keys))
                self.timed(times, server, "hermes", lambda: self.drain_twistd(dsn, cur, rows), rows)
                outbox_sql.fill_table(cur, "hermes.outbox", rows, keys)
                times["held"].append(outbox_sql.drain_held(cur, rows))
                outbox_sql.fill_table(cur, "hermes.outbox", rows, keys)
                self.timed(times, server, "own", lambda: outbox_sql.drain_consumer(cur, rows), rows)
                print("    round: " + ", ".join(f"{k} {rows / v[-1]:,.0f}/s" for k, v in times.items())
                      + "; server " + ", ".join(f"{k} {v[-1]:.1f} us" for k, v in server.items()),
                      flush=True)
            rate = {k: rows / statistics.median(v) for k, v in times.items()}
            spent = {k: statistics.median(v) for k, v in server.items()}
            results[label] = rate
            self.add(f"drain {rows:,}, {label}: twistd hermes --outbox, no-op processor",
                     f"{rate['hermes']:,.0f}/s ({rate['hermes'] / rate['plain']:.2f}x);"
                     f" server {spent['hermes']:.1f} us a change",
                     ">= 0.7x the loop (issue 15)")
            self.add(f"drain {rows:,}, {label}: hand-written DELETE ... SKIP LOCKED loop",
                     f"{rate['plain']:,.0f}/s (1x); server {spent['plain']:.1f} us a change")
            self.add(f"drain {rows:,}, {label}: claim(500) + ack, blocking loop (SQL alone)",
                     f"{rate['sql']:,.0f}/s ({rate['sql'] / rate['plain']:.2f}x)")
            self.add(f"drain {rows:,}, {label}: the consumer's claim_within(500) + ack, claiming ahead,"
                     " blocking loop (its statements alone)",
                     f"{rate['own']:,.0f}/s ({rate['own'] / rate['plain']:.2f}x);"
                     f" server {spent['own']:.1f} us a change")
            self.add(f"drain {rows:,}, {label}: claim + ack with no per-key order, claiming ahead (two steps alone)",
                     f"{rate['steps']:,.0f}/s ({rate['steps'] / rate['plain']:.2f}x)")
            self.add(f"drain {rows:,}, {label}: a claim deleted in a transaction held over the delivery"
                     " (another protocol, per-key order kept)",
                     f"{rate['held']:,.0f}/s ({rate['held'] / rate['plain']:.2f}x)")
            self.add(f"enqueue {rows:,}, {label}: hermes.emit, 1,000 per transaction",
                     f"{rate['emit']:,.0f}/s")
        conn.close()
        self.peers(rows, results["own key each"]["hermes"])

    def timed(self, times, server, name, drain, rows):
        """
        Run C{drain} (returning its seconds) and add its seconds to
        C{times[name]} and the server's time executing the drain database's
        statements meanwhile, in microseconds a change, to C{server[name]}
        (C{pg_stat_statements}: top-level statements, the bench's own
        polling left out).
        """
        self.cluster.execute("SELECT pg_stat_statements_reset()")
        times[name].append(drain())
        spent = self.cluster.execute(
            "SELECT coalesce(sum(total_exec_time), 0) FROM pg_stat_statements"
            " WHERE toplevel AND dbid = (SELECT oid FROM pg_database WHERE datname = 'drain')"
            " AND query NOT LIKE 'SELECT EXISTS%%'")[0][0]
        server[name].append(spent * 1000 / rows)

    def emit(self, cur, rows, keys, truncate=True):
        """Empty the outbox and emit C{rows} changes; @return: seconds."""
        if truncate:
            cur.execute("TRUNCATE hermes.outbox")
        key = outbox_sql.key_expression(keys)
        start = time.perf_counter()
        for first in range(1, rows + 1, 1000):
            cur.execute("BEGIN")
            cur.execute(f"SELECT count(hermes.emit(%s, {key}, {outbox_sql.PAYLOAD}))"
                        " FROM generate_series(%s, %s) g", (outbox_sql.TOPIC, first, min(first + 999, rows)))
            cur.execute("COMMIT")
        elapsed = time.perf_counter() - start
        cur.execute("ANALYZE hermes.outbox")
        return elapsed

    def drain_twistd(self, dsn, cur, rows):
        """Start twistd on the filled outbox; @return: seconds from consuming to empty."""
        return self.timed_drain(self.fleet("drain", dsn, outbox_sql.TOPIC, processor=NOOP), cur)

    def timed_drain(self, fleet, cur, count=1, load=None, interval=0.005):
        """
        Start C{count} instances of C{fleet}, wait until they consume, call
        C{load} (if any), wait until the outbox is empty, stop them.

        @return: seconds from consuming (before C{load}) to empty.
        """
        try:
            for _ in range(count):
                fleet.start()
            wait_for(fleet.consuming, 60, f"{count} instance(s) consuming", interval=0.002)
            start = time.perf_counter()
            if load is not None:
                load()
            while True:
                cur.execute("SELECT EXISTS (SELECT 1 FROM hermes.outbox)")
                if not cur.fetchone()[0]:
                    break
                time.sleep(interval)
            elapsed = time.perf_counter() - start
            fleet.stop()
            wait_for(fleet.stopped, 30, "twistd stopped")
            return elapsed
        finally:
            fleet.kill_all()

    def peers(self, rows, hermes_rate):
        versions = outbox_peers.versions()
        self.cluster.execute("CREATE DATABASE pgq")
        self.cluster.execute("CREATE DATABASE procr")
        for batch in (10, 500):
            enqueued, processed, left = outbox_peers.pgqueuer_drain(self.cluster.uri("pgq"), rows, batch)
            self.add(f"drain {rows:,}: pgqueuer {versions['pgqueuer']}, batch_size={batch}"
                     + (" (default)" if batch == 10 else ""),
                     f"{rows / processed:,.0f}/s (hermes {hermes_rate * processed / rows:.1f}x);"
                     f" enqueue {rows / enqueued:,.0f}/s" + (f"; {left} left" if left else ""),
                     "hermes ahead")
        for concurrency in (1, 10):
            enqueued, processed, left = outbox_peers.procrastinate_drain(self.cluster.dsn("procr"), rows,
                                                                         concurrency)
            self.add(f"drain {rows:,}: procrastinate {versions['procrastinate']}, concurrency={concurrency}"
                     + (" (default)" if concurrency == 1 else ""),
                     f"{rows / processed:,.0f}/s (hermes {hermes_rate * processed / rows:.0f}x);"
                     f" enqueue {rows / enqueued:,.0f}/s" + (f"; {left} left" if left else ""),
                     "hermes ahead")

    # -- scale -------------------------------------------------------------------

    def scale(self):
        rows = 1000 if self.quick else 4000
        print(f"scale: {rows} changes over 500 keys, 5 ms per change, 1/2/4 instances", flush=True)
        dsn = self.database("scale")
        conn, cur = self.connect(dsn)
        rates = {}
        for count in (1, 2, 4):
            cur.execute("TRUNCATE hermes.outbox")
            fleet = self.fleet(f"scale-{count}", dsn, outbox_sql.TOPIC, execute_delay=0.005)
            elapsed = self.timed_drain(fleet, cur, count, lambda: self.emit(cur, rows, 500, truncate=False),
                                       interval=0.01)
            lines = read_lines(fleet.output)
            pids = {line["pid"] for line in lines}
            rates[count] = rows / elapsed
            self.add(f"scale: {count} instance(s), 5 ms per change, {rows:,} changes",
                     f"{rates[count]:,.0f}/s ({rates[count] / rates[1]:.2f}x one); "
                     f"{len(lines):,} executed by {len(pids)} process(es)",
                     "grows with instances" if count > 1 else "")
        conn.close()

    # -- latency -----------------------------------------------------------------

    def latency(self):
        seconds = 8 if self.quick else 20
        print(f"latency: 500 changes/s for {seconds} s, --poll-interval 10", flush=True)
        dsn = self.database("latency")
        prepare_writer_tables(dsn, KEYS)
        fleet = self.fleet("latency", dsn, "t", extra=["--poll-interval", "10"])
        try:
            fleet.start()
            wait_for(fleet.consuming, 60, "consuming")
            writer = Writer(dsn, KEYS, rate=500, threads=4).start()
            time.sleep(seconds)
            writer.stop()
            wait_for(lambda: self.depth(dsn) == 0, 60, "an empty outbox")
            fleet.stop()
            wait_for(fleet.stopped, 30, "twistd stopped")
        finally:
            fleet.kill_all()
        committed = {(k, n): t for k, n, _, t in writer.acknowledged}
        first = min(committed.values()) + 1.0  # leave out the first second
        executed = {}
        for d in read_lines(fleet.output):
            executed.setdefault((d["key"], d["n"]), d["t"])
        waits = sorted((executed[k] - t) * 1000 for k, t in committed.items() if t >= first and k in executed)
        p50, p99 = waits[len(waits) // 2], waits[int(len(waits) * 0.99)]
        rate = len(committed) / seconds
        self.add(f"commit -> execute at {rate:.0f} changes/s ({len(waits):,} changes)",
                 f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {waits[-1]:.1f} ms", "p99 <= 50 ms")

    # -- capture overhead -----------------------------------------------------------

    def capture_overhead(self):
        rounds = 1 if self.quick else self.args.rounds
        print(f"capture overhead (median of {rounds})", flush=True)
        dsn = self.database("capture")
        conn, cur = self.connect(dsn)
        outbox_sql.make_tables(cur)
        for single, label in ((True, "20,000 single-row UPDATEs"), (False, "one UPDATE of 10,000 rows")):
            without, with_ = [], []
            for _ in range(rounds):
                without.append(outbox_sql.update_workload(cur, None, single))
                capture(conn, "items", "items")
                with_.append(outbox_sql.update_workload(cur, None, single))
                uncapture(conn, "items")
            ratio = statistics.median(with_) / statistics.median(without)
            self.add(f"capture: {label}, captured / not", f"{ratio:.2f}x", "<= 2x" if single else "")
        conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fail-rate", type=float, default=0.0,
                        help="chaos: the share of changes whose first delivery fails (e.g. 0.03)")
    parser.add_argument("--only", nargs="*",
                        default=["chaos", "drain", "scale", "latency", "capture", "xmin"])
    args = parser.parse_args()
    bench = Bench(args)
    try:
        for section in args.only:
            {"chaos": bench.chaos, "drain": bench.drain, "scale": bench.scale, "latency": bench.latency,
             "capture": bench.capture_overhead,
             "xmin": lambda: outbox_xmin.xmin(bench, KEYS, NOOP)}[section]()
    finally:
        bench.close()
    width = max(len(r[0]) for r in bench.rows)
    result = max(len(r[1]) for r in bench.rows)
    goal = max(len(r[2]) for r in bench.rows)
    line = "=" * width + "  " + "=" * result + "  " + "=" * goal
    print("\n" + line)
    print("case".ljust(width) + "  " + "result".ljust(result) + "  goal")
    print(line)
    for case, res, g in bench.rows:
        print(case.ljust(width) + "  " + res.ljust(result) + "  " + g)
    print(line)
    for note in bench.notes:
        print(note)


if __name__ == "__main__":
    main()
