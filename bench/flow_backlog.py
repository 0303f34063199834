"""
The sections of bench/flow.py about big backlogs: what C{hermes-tx
status} and C{/metrics} cost on a 1,000,000-change backlog and whether a
scrape slows the consumer (C{figures}), and the memory of a consumer
draining changes of 1 MB (C{memory}).
"""

import base64
import os
import re
import subprocess
import sys
import threading
import time

from stalls import Hermes
from tests.support.deliveries import read_lines
from tests.support.fleet import Writer, prepare_writer_tables, wait_for

RECORDER = "tests.support.deliveries:AppendRecorder"
NOOP = "tests.support.deliveries:NoOp"
HERMES_TX = os.path.join(os.path.dirname(sys.executable), "hermes-tx")
LIVE_KEYS = [f"live-{i}" for i in range(100)]
MIB = 1 << 20


def timed(args):
    """@return: C{(seconds, completed process)} of running C{args}."""
    started = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    return time.perf_counter() - started, proc


def percentile(values, share):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * share))] if values else float("nan")


def figures(bench):
    """
    A 1,000,000-change backlog (100,000 keys) on topic C{backlog}: time
    C{hermes-tx status} twice; then, on copies of that database, a consumer
    of C{backlog} and C{live} (with a status port) for a while, 50 changes
    a second committed on C{live}, once without scrapes and once with a
    C{/metrics} scrape every second (the first scrape timed, and the
    first that shows the backlog): the live changes' commit -> execute
    latency, the backlog's drain rate and the server's time in the claim
    and figures statements (pg_stat_statements) in each run.
    """
    count, seconds = 1000000, (10 if bench.quick else 20)
    print(f"figures: {count:,} pending changes, runs of {seconds} s", flush=True)
    dsn = bench.database("figures")
    bench.query(dsn, "INSERT INTO hermes.outbox (topic, key, payload)"
                     f" SELECT 'backlog', 'k' || (g % 100000), jsonb_build_object('n', g)"
                     f" FROM generate_series(1, {count}) g")
    # Autovacuum would do it at a time of its choosing: before or during
    # the runs, which then differ (an unvacuumed backlog drains slower).
    bench.query(dsn, "VACUUM ANALYZE hermes.outbox")
    prepare_writer_tables(dsn, LIVE_KEYS)
    runs = [timed([HERMES_TX, "status", "--dsn", dsn]) for _ in range(2)]
    for _, proc in runs:
        if proc.returncode != 0:
            bench.note(f"figures: hermes-tx status exited {proc.returncode}: {proc.stderr[-500:]}")
    bench.add(f"figures: hermes-tx status, {count:,} pending",
              f"{runs[0][0]:.2f} s, then {runs[1][0]:.2f} s", "measured", all(p.returncode == 0 for _, p in runs))
    results = {False: [], True: []}
    for r in range(bench.rounds):
        for scrape in ((False, True) if r % 2 == 0 else (True, False)):
            results[scrape].append(_figures_run(bench, dsn, seconds, scrape))
    first = results[True][0]["first"]
    bench.add("figures: /metrics, first scrape on the backlog",
              f"{first[0]:.3f} s, showing {first[1]:,.0f} pending", "measured", True)
    shown = results[True][0]["shown"]
    bench.add("figures: /metrics, first scrape with the figures",
              f"{shown[0]:.3f} s, {shown[2]:.2f} s after the first; {shown[1]:,.0f} pending" if shown
              else "no figures within the run", "measured", bool(shown))
    medians = {}
    for scrape, label in ((False, "no scrapes"), (True, "a /metrics scrape every second")):
        median = medians[scrape] = {k: sorted(r[k] for r in results[scrape])[len(results[scrape]) // 2]
                                    for k in ("p50", "p99", "rate")}
        worst = max((r["scrapes"] for r in results[scrape]), default=0.0)
        bench.add(f"figures: commit -> execute of new changes, {label}",
                  f"p50 {median['p50']:.1f} ms, p99 {median['p99']:.1f} ms; backlog drained at"
                  f" {median['rate']:,.0f}/s" + (f"; scrapes {worst:.3f} s at worst" if scrape else ""),
                  "p50 and p99 <= 1.25x without + 5 ms" if scrape else "",
                  not scrape or all(median[k] <= 1.25 * medians[False][k] + 5 for k in ("p50", "p99")))


def _figures_run(bench, template, seconds, scrape):
    """
    One run on a copy of the database at C{template}.

    @return: a dict: C{p50}, C{p99} (ms), C{rate} (backlog changes a
        second), C{scrapes} (the slowest scrape, s), C{first} (the first
        scrape's seconds and pending) and C{shown} (the first scrape
        showing the backlog: seconds, pending, seconds after the first;
        or C{None}).
    """
    dsn = bench.copy_database(template)
    path = bench.workdir(f"figures-{bench._databases}")
    out = os.path.join(path, "deliveries.jsonl")
    bench.reset_statements()
    hermes = Hermes(["--dsn", dsn, "--outbox", "backlog", "--outbox", "live", "--processor", RECORDER,
                     "-o", out], None, os.path.join(path, "twistd.log"))
    writer = None
    took, first, shown = [], None, None
    try:
        hermes.wait_started("consuming outbox topics")
        writer = Writer(dsn, LIVE_KEYS, topic="live", rate=50, threads=1).start()
        began = time.time()
        while time.time() - began < seconds:
            if scrape:
                _, body, spent = hermes.get("/metrics")
                took.append(spent)
                if first is None:
                    first = (spent, _pending(body))
                elif shown is None and _pending(body):
                    # Until the figures are read, the backlog shows as 0 pending.
                    shown = (spent, _pending(body), time.time() - began)
            time.sleep(max(0.0, 1.0 - (time.time() - began) % 1.0))
        ended = time.time()
        writer.stop()
        wait_for(lambda: _executed(out, writer), 120, "the live changes executed")
        statements = bench.statements(dsn)
    finally:
        if writer is not None:
            writer.stop()
        status = hermes.stop()
    lines = read_lines(out)
    executed = {}
    for line in lines:
        executed.setdefault((line["key"], line["n"]), line["t"])
    waits = [(executed[(k, n)] - t) * 1000 for k, n, _, t in writer.acknowledged
             if began <= t < ended and (k, n) in executed]
    per_second = [0] * (int(ended - began) + 1)
    for line in lines:
        if not line["key"].startswith("live-") and began <= line["t"] < ended:
            per_second[int(line["t"] - began)] += 1
    print(f"    {'scrape every second' if scrape else 'no scrapes'}: backlog changes executed per second"
          f" {' '.join(f'{n / 1000:.1f}k' for n in per_second)}; server time: {statements}", flush=True)
    if status != 0:
        bench.note(f"figures: exit status {status} ({hermes.log_path})")
    return {"p50": percentile(waits, 0.5), "p99": percentile(waits, 0.99),
            "rate": sum(per_second) / (ended - began), "scrapes": max(took, default=0.0),
            "first": first, "shown": shown}


def _pending(body):
    match = re.search(rb'hermes_outbox_pending\{topic="backlog"\} ([0-9.e+]+)', body or b"")
    return None if match is None else float(match.group(1))


def _executed(path, writer):
    done = {(line["key"], line["n"]) for line in read_lines(path)}
    return all((k, n) in done for k, n, _, _ in writer.acknowledged)


def rss(pid, field="VmRSS"):
    """@return: the process's C{field} of C{/proc/PID/status}, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def byte_bound_option():
    """@return: the C{twistd hermes --help} lines about a bound in bytes."""
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "twistd"), "hermes", "--help"],
                          capture_output=True, text=True)
    return [line.strip() for line in proc.stdout.splitlines() if re.search(r"bytes|MiB", line)]


def memory(bench, changes=300, size=MIB):
    """
    One twistd hermes --outbox with a no-op processor (and the
    --memory-arg arguments), idle, then 300 changes of 1 MB of
    incompressible JSON string committed in one transaction: its RSS
    before, and its peak (VmHWM) by the time the outbox is empty, against
    the bound in bytes (--max-in-flight-bytes, 64 MiB unless the
    --memory-arg arguments say otherwise).
    """
    extra = list(bench.args.memory_arg)
    bound = _bound(extra)
    print(f"memory: {changes} changes of {size // 1024} KiB, twistd hermes {' '.join(extra)}", flush=True)
    options = byte_bound_option()
    dsn = bench.database("memory")
    path = bench.workdir("memory")
    hermes = Hermes(["--dsn", dsn, "--outbox", "big", "--processor", NOOP] + extra, None,
                    os.path.join(path, "twistd.log"))
    conn, cur = bench.connect(dsn)
    try:
        hermes.wait_started("consuming outbox topics")
        time.sleep(1.0)
        idle = rss(hermes.process.pid)
        sampled = Sampler(hermes.process.pid).start()
        cur.execute("BEGIN")
        for i in range(changes):
            text = base64.b64encode(os.urandom(size * 3 // 4)).decode()
            cur.execute("SELECT hermes.emit('big', %s, jsonb_build_object('s', %s::text))", (f"k{i}", text))
        cur.execute("COMMIT")
        committed = time.monotonic()
        wait_for(lambda: not bench.query(dsn, "SELECT EXISTS (SELECT 1 FROM hermes.outbox)")[0][0],
                 300, "an empty outbox", interval=0.1)
        took = time.monotonic() - committed
        sampled.done.set()
        peak = rss(hermes.process.pid, "VmHWM")
    finally:
        conn.close()
        status = hermes.stop()
    bench.add(f"memory: twistd hermes {' '.join(extra) or '(defaults)'}, {changes} changes of 1 MB",
              f"peak RSS {peak / MIB:.0f} MiB (idle {idle / MIB:.0f} MiB, highest sample"
              f" {sampled.highest / MIB:.0f} MiB); drained in {took:.1f} s", "< 300 MB (286 MiB)",
              peak < 300e6)
    bench.add(f"memory: a bound on in-flight bytes of {bound / MIB:g} MiB",
              f"peak RSS {peak / bound:.2f}x the bound, {(peak - idle) / bound:.2f}x above idle"
              if options else "no option in twistd hermes --help",
              f"RSS <= about 2x the bound ({2 * bound / MIB:g} MiB)", bool(options) and peak <= 2 * bound)
    if status != 0:
        bench.note(f"memory: exit status {status} ({hermes.log_path})")


def _bound(args):
    """
    @return: the bytes of C{--max-in-flight-bytes} among C{args}
        (C{--name value} or C{--name=value}), or its default.
    """
    from hermes_tx.outbox.budget import DEFAULT_MAX_BYTES
    from hermes_tx.twistd.options import byte_count

    name = "--max-in-flight-bytes"
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return DEFAULT_MAX_BYTES if value is None else byte_count(name.lstrip("-"))(value)


class Sampler(threading.Thread):
    """The highest VmRSS of a process, sampled every 10 ms."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.highest = 0
        self.done = threading.Event()

    def start(self):
        threading.Thread.start(self)
        return self

    def run(self):
        while not self.done.is_set():
            try:
                self.highest = max(self.highest, rss(self.pid))
            except OSError:
                return
            self.done.wait(0.01)
