"""
Stalls (issue 15): what a stalled output and a CPU-heavy processor do to the
rest of a real C{twistd -n hermes}, on one throwaway server.

    .venv/bin/python bench/stalls.py [--seconds 20] [--only full-pipe cpu]

  full-pipe  the default processor's JSON lines on a pipe nobody reads for
             SECONDS while 1,000 notifications and 100 outbox changes a
             second keep coming, then read: the worst /health latency
             (polled every 100 ms, a request at a time), whether the role
             was kept (no "role:" log line after the first, /ready always
             says primary), and lines lost or duplicated once read
  cpu        a processor burning 20 ms of CPU per event
             (tests.support.cpu:BurnsCpu), 300 notifications queued at
             once: the worst /health latency and whether the role was kept

Goals: /health within 1 s with a full pipe, nothing lost or duplicated;
within 0.5 s with the CPU-heavy processor.  Each process's log is kept
under /tmp/hermes-bench-stalls-* (the path is printed).
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import psycopg2  # noqa: E402

from hermes_tx.outbox.schema import install  # noqa: E402
from tests.support.fleet import wait_for  # noqa: E402
from tests.support.pgcluster import Cluster  # noqa: E402
from tests.support.pipes import PipeReader  # noqa: E402
from tests.support.twistd import TWISTD, free_port  # noqa: E402

PAD = "x" * 200  # notifications of about 250 bytes a line


class Hermes:
    """
    One C{twistd -n hermes} with a status port, its standard output on
    C{stdout} (a descriptor, ours closed; C{None}: the log) and its log in
    C{log_path}.
    """

    def __init__(self, args, stdout, log_path):
        self.port = free_port()
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if k != "HERMES_DSN" and not k.startswith("PG")}
        env["PYTHONPATH"] = ROOT
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [TWISTD, "-n", "--pidfile=", "hermes", "--status-port", str(self.port)] + args,
                stdin=subprocess.DEVNULL, stdout=log if stdout is None else stdout, stderr=log,
                cwd=ROOT, env=env)
        if stdout is not None:
            os.close(stdout)

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def get(self, path, timeout=60.0):
        """@return: C{(status, body, seconds)}; status C{None} if no answer."""
        started = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        except OSError as e:
            status, body = None, str(e).encode()
        return status, body, time.monotonic() - started

    def wait_started(self, phrase):
        wait_for(lambda: phrase in self.log() or self.process.poll() is not None, 60, phrase)
        if self.process.poll() is not None:
            raise RuntimeError(f"twistd hermes ended:\n{self.log()[-3000:]}")

    def role_changes(self):
        """@return: the "role:" log lines after the first (unknown -> primary)."""
        return [line for line in self.log().splitlines() if "role: " in line][1:]

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


class Poller(threading.Thread):
    """
    GETs /health, then /ready, every C{interval} seconds (one request at a
    time), recording how long each /health took and what each /ready said.
    """

    def __init__(self, hermes, interval=0.1):
        super().__init__(daemon=True)
        self.hermes = hermes
        self.interval = interval
        self.done = threading.Event()
        self.health = []  # (monotonic start, seconds, status)
        self.not_primary = []  # /ready bodies whose role was not primary

    def run(self):
        while not self.done.is_set():
            started = time.monotonic()
            status, _, seconds = self.hermes.get("/health")
            self.health.append((started, seconds, status))
            _, body, _ = self.hermes.get("/ready")
            try:
                if json.loads(body).get("role") != "primary":
                    self.not_primary.append(body)
            except ValueError:
                self.not_primary.append(body)
            self.done.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def worst(self, since=0.0, until=float("inf")):
        samples = [s for t, s, _ in self.health if since <= t <= until]
        return max(samples) if samples else None

    def unanswered(self):
        return sum(1 for _, _, status in self.health if status != 200)


class Sender(threading.Thread):
    """
    Every 100 ms, 100 notifications on C{stall} and 10 outbox changes on
    topic C{t}, each numbered, until stopped.
    """

    def __init__(self, dsn):
        super().__init__(daemon=True)
        self.dsn = dsn
        self.done = threading.Event()
        self.notes = 0
        self.changes = 0

    def run(self):
        conn = psycopg2.connect(self.dsn, application_name="bench-sender")
        conn.autocommit = True
        cur = conn.cursor()
        while not self.done.is_set():
            started = time.monotonic()
            cur.execute("SELECT pg_notify('stall', g || ' ' || %s) FROM generate_series(%s, %s) g",
                        (PAD, self.notes + 1, self.notes + 100))
            self.notes += 100
            cur.execute("SELECT hermes.emit('t', 'k' || (g %% 50), jsonb_build_object('n', g))"
                        " FROM generate_series(%s, %s) g", (self.changes + 1, self.changes + 10))
            self.changes += 10
            self.done.wait(max(0.0, 0.1 - (time.monotonic() - started)))
        conn.close()


def counted(numbers, sent):
    """@return: C{(lost, duplicated)} of numbers 1..sent among C{numbers}."""
    seen = {}
    for n in numbers:
        seen[n] = seen.get(n, 0) + 1
    lost = sum(1 for n in range(1, sent + 1) if n not in seen)
    return lost, sum(c - 1 for c in seen.values())


class Bench:
    def __init__(self, args):
        self.args = args
        self.rows = []  # (case, result, goal, met)
        self.logs = tempfile.mkdtemp(prefix="hermes-bench-stalls-")
        print(f"logs: {self.logs}", flush=True)
        self.cluster = Cluster.create_primary()
        self.dsn = self.cluster.dsn()
        with psycopg2.connect(self.dsn) as conn:
            install(conn)
        conn.close()

    def add(self, case, result, goal, met):
        self.rows.append((case, result, goal, "yes" if met else "NO"))
        print(f"  {case}: {result}   (goal {goal})", flush=True)

    def close(self):
        self.cluster.destroy()

    def full_pipe(self):
        seconds = self.args.seconds
        print(f"full pipe: {seconds} s unread, 1,000 notifications and 100 changes a second",
              flush=True)
        rfd, wfd = os.pipe()
        hermes = Hermes(["--dsn", self.dsn, "-c", "stall", "--outbox", "t"], wfd,
                        os.path.join(self.logs, "full-pipe.log"))
        reader = PipeReader(rfd)
        try:
            hermes.wait_started("consuming outbox topics")
            hermes.wait_started("listening on")
            poller, sender = Poller(hermes), Sender(self.dsn)
            poller.start()
            sender.start()
            began = time.monotonic()
            time.sleep(seconds)
            sender.done.set()
            sender.join()
            _, metrics, _ = hermes.get("/metrics")
            read_at = time.monotonic()
            reader.start()
            expected = 1 + sender.notes + sender.changes  # and the start line
            wait_for(lambda: reader.lines() >= expected, 300, f"{expected} lines", 0.2)
            drained = time.monotonic() - read_at
            poller.done.set()
            poller.join()
        finally:
            status = hermes.stop()
        reader.join(30)
        received = re.search(rb'hermes_notifications_received_total\{channel="stall"\} ([0-9.e+]+)',
                             metrics)
        records = reader.records()
        notes = [int(r["payload"].split()[0]) for r in records if r["kind"] == "notification"]
        changes = [r["data"]["n"] for r in records if r["kind"] == "change"]
        note_lost, note_dup = counted(notes, sender.notes)
        change_lost, change_dup = counted(changes, sender.changes)
        worst, draining = poller.worst(began, read_at), poller.worst(read_at)
        kept = not hermes.role_changes() and not poller.not_primary
        self.add(f"full pipe {seconds:g} s: worst /health latency",
                 f"{worst:.3f} s unread, {draining:.3f} s draining ({len(poller.health)} polls,"
                 f" {poller.unanswered()} not 200)",
                 "<= 1 s", max(worst, draining) <= 1.0 and poller.unanswered() == 0)
        self.add("full pipe: role kept",
                 "yes" if kept else f"NO: {hermes.role_changes()[:3]} {poller.not_primary[:3]}",
                 "yes", kept)
        self.add("full pipe: lines lost / duplicated",
                 f"notifications {note_lost} / {note_dup} of {sender.notes}, "
                 f"changes {change_lost} / {change_dup} of {sender.changes}",
                 "0 / 0", note_lost == note_dup == change_lost == change_dup == 0)
        self.add("full pipe: back-pressure",
                 f"{float(received.group(1)) if received else 0:.0f} of {sender.notes} notifications"
                 f" read from PostgreSQL when the reader began; all lines {drained:.1f} s after",
                 "", True)
        self.add("full pipe: exit status after SIGTERM", str(status), "0", status == 0)

    def cpu(self):
        print("CPU-heavy processor: 300 notifications at 20 ms of CPU each", flush=True)
        hermes = Hermes(["--dsn", self.dsn, "-c", "cpu", "--processor", "tests.support.cpu:BurnsCpu"],
                        None, os.path.join(self.logs, "cpu.log"))
        try:
            hermes.wait_started("listening on")
            poller = Poller(hermes)
            poller.start()
            time.sleep(1.0)
            sent_at = time.monotonic()
            self.cluster.execute("SELECT pg_notify('cpu', g::text) FROM generate_series(1, 300) g")

            def processed():
                _, body, _ = hermes.get("/metrics")
                match = re.search(rb'hermes_notifications_processed_total\{channel="cpu"\} ([0-9.e+]+)',
                                  body)
                return match is not None and float(match.group(1)) >= 300

            wait_for(processed, 120, "300 events processed", 0.2)
            took = time.monotonic() - sent_at
            time.sleep(1.0)
            poller.done.set()
            poller.join()
        finally:
            status = hermes.stop()
        worst = poller.worst()
        kept = not hermes.role_changes() and not poller.not_primary
        self.add("CPU-heavy processor: worst /health latency",
                 f"{worst:.3f} s ({len(poller.health)} polls; 300 events in {took:.1f} s)",
                 "<= 0.5 s", worst <= 0.5 and poller.unanswered() == 0)
        self.add("CPU-heavy processor: role kept",
                 "yes" if kept else f"NO: {hermes.role_changes()[:3]} {poller.not_primary[:3]}",
                 "yes", kept)
        self.add("CPU-heavy processor: exit status after SIGTERM", str(status), "0", status == 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="how long the pipe stays unread (default 20)")
    parser.add_argument("--only", nargs="*", default=["full-pipe", "cpu"],
                        choices=["full-pipe", "cpu"])
    args = parser.parse_args()
    bench = Bench(args)
    try:
        for section in args.only:
            {"full-pipe": bench.full_pipe, "cpu": bench.cpu}[section]()
    finally:
        bench.close()
    widths = [max(len(r[i]) for r in bench.rows + [("case", "result", "goal", "met")])
              for i in range(4)]
    line = "  ".join("=" * w for w in widths)
    print("\n" + line)
    print("  ".join(h.ljust(w) for h, w in zip(("case", "result", "goal", "met"), widths)))
    print(line)
    for row in bench.rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print(line)


if __name__ == "__main__":
    main()
