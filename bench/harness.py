"""
What bench/failover.py and bench/resilience.py share: a Client under test
with a recording processor, a sender notifying every 10 ms, the log
counters (Unhandled Error lines, busiest second of hermes_tx lines), and
running each scenario round in a child process of its own.

Every round runs in a fresh Python process (the script itself, with
C{--child SPEC}): a Client that wedged, or a reactor left holding a file
descriptor libpq closed, cannot spoil the next round's figures.  The child
prints one JSON line; the parent collects them into one table per script
(L{print_table}) with the goal next to each median and maximum.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import psycopg2  # noqa: E402
from twisted.internet import defer, reactor, task  # noqa: E402
from twisted.logger import eventAsText, globalLogPublisher  # noqa: E402

from hermes_tx.client import Client  # noqa: E402
from hermes_tx.components import Component  # noqa: E402
from hermes_tx.connectors import PostgresConnector  # noqa: E402
from hermes_tx.listeners import PostgresNotificationListener  # noqa: E402
from tests.support.logcheck import UNHANDLED, hermes_times, max_per_second  # noqa: E402

CHANNEL = "bench"
LISTENER_APP = "bench-listener"


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        yield sleep(0.005)


class Recorder(Component):
    """
    Records when each event arrives: C{gaps} lists C{(monotonic seconds,
    kind, notifications so far)} for each start and resync.
    """

    def __init__(self):
        super().__init__()
        self.received = []  # monotonic seconds of each notification
        self.gaps = []

    def execute(self, event):
        now = time.monotonic()
        if event.kind == "notification":
            self.received.append(now)
        else:
            self.gaps.append((now, event.kind, len(self.received)))


class Sender(threading.Thread):
    """
    Sends a sequence number on C{channel} (L{CHANNEL}) every 10 ms from its
    own thread, reconnecting as needed (give it a multi-host DSN with
    C{target_session_attrs=read-write} to follow the primary).
    """

    def __init__(self, dsn, channel=CHANNEL):
        super().__init__(daemon=True)
        self.dsn = dsn
        self.channel = channel
        self.done = threading.Event()
        self.sent = 0

    def run(self):
        conn = None
        while not self.done.is_set():
            try:
                if conn is None:
                    conn = psycopg2.connect(self.dsn, connect_timeout=1,
                                            application_name="bench-sender")
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_notify(%s, %s)", (self.channel, str(self.sent)))
                self.sent += 1
            except psycopg2.Error:
                if conn is not None:
                    conn.close()
                conn = None
            self.done.wait(0.01)
        if conn is not None:
            conn.close()


class LogWatch(object):
    """
    Every log event of this process: written as text to C{path}, with the
    hermes_tx events' times and the "Unhandled Error" count kept.
    """

    def __init__(self, path):
        self.path = path
        self.events = []
        self.unhandled = 0
        self._file = open(path, "w")
        globalLogPublisher.addObserver(self)

    def __call__(self, event):
        text = eventAsText(event)
        self._file.write(text + "\n")
        self.unhandled += UNHANDLED in text
        self.events.append(event)

    def summary(self):
        globalLogPublisher.removeObserver(self)
        self._file.close()
        return {"unhandled": self.unhandled,
                "worst_lps": max_per_second(hermes_times(self.events)), "log": self.path}


def start_client(dsn, listener_kwargs=None, **client_kwargs):
    """
    @param listener_kwargs: for the L{PostgresNotificationListener}.
    @param client_kwargs: for the L{Client}.
    @return: C{(client, recorder)}, started; the listener's connection is
        C{application_name=bench-listener}.
    """
    client = Client(dsn, **client_kwargs)
    recorder = Recorder()
    client.add_listener(PostgresNotificationListener(
        PostgresConnector(dsn, application_name=LISTENER_APP), CHANNEL,
        **(listener_kwargs or {})))
    client.add_processor(recorder)
    client.startService()
    return client, recorder


@defer.inlineCallbacks
def delivering_again(recorder, gaps_before, timeout):
    """
    Wait for the start or resync after the first C{gaps_before} and the
    first notification after it.  (A notification sent just after a fault
    may still reach the old connection, so "sent after the fault" is not a
    safe criterion; every notification after the resync came over the new
    connection.)

    @return: a Deferred firing with C{(gap time, delivery time)}
        (monotonic seconds), or C{None} after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(recorder.gaps) > gaps_before:
            at, _, index = recorder.gaps[gaps_before]
            if len(recorder.received) > index:
                return at, recorder.received[index]
        yield sleep(0.001)
    return None


@defer.inlineCallbacks
def first_gap(recorder, gaps_before, timeout):
    """
    @return: a Deferred firing with the monotonic time of the start or
        resync after the first C{gaps_before}, or C{None} after C{timeout}.
    """
    deadline = time.monotonic() + timeout
    while len(recorder.gaps) <= gaps_before:
        if time.monotonic() > deadline:
            return None
        yield sleep(0.001)
    return recorder.gaps[gaps_before][0]


# -- one round per child process -------------------------------------------


def child_main(scenarios, spec):
    """
    Run the scenario C{spec["scenario"]} (a function of C{spec} returning a
    Deferred firing with a dict of results) with a L{LogWatch}; print the
    results and the log summary as one JSON line.
    """
    spec = json.loads(spec)
    watch = LogWatch(spec["log"])

    @defer.inlineCallbacks
    def run(_):
        result = yield scenarios[spec["scenario"]](spec)
        result.update(watch.summary())
        sys.stdout.write("RESULT " + json.dumps(result) + "\n")
        sys.stdout.flush()

    task.react(run)


def run_child(script, spec, timeout=600):
    """
    Run one round of C{script} in a child process.

    @return: its result dict (with C{"error"} if it failed).
    """
    proc = subprocess.run([sys.executable, script, "--child", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stdout + proc.stderr)[-1500:]
    return {"error": f"exit {proc.returncode}: {tail}", "log": spec["log"]}


def run_round(script, logs, label, spec, row):
    """
    Run one round (L{run_child}) with its log in C{logs}, add its samples
    to C{row} and print a progress line.

    @return: the child's result dict.
    """
    spec = dict(spec, log=os.path.join(logs, label.replace(" ", "_") + ".log"))
    started = time.monotonic()
    result = run_child(script, spec)
    row.add(result.get("samples", []), result)
    shown = ", ".join("-" if v is None else f"{v:.3f}" for v in result.get("samples", []))
    print(f"{label}: [{shown}] s, {result.get('unhandled')} Unhandled,"
          f" {result.get('worst_lps')} lines/s ({time.monotonic() - started:.0f} s)", flush=True)
    return result


def log_dir(name):
    """@return: a fresh directory for this run's child logs."""
    return tempfile.mkdtemp(prefix=f"hermes-bench-{name}-")


# -- the table --------------------------------------------------------------


class Row(object):
    """
    One line of the table: samples (C{None} for a round that never
    delivered again within its timeout), the goal, log counters.
    """

    def __init__(self, name, since, goal_median=None, goal_max=None, timeout=None):
        self.name = name
        self.since = since
        self.goal_median = goal_median
        self.goal_max = goal_max
        self.timeout = timeout
        self.samples = []
        self.unhandled = 0
        self.worst_lps = 0
        self.errors = []

    def add(self, samples, result):
        self.samples += samples
        self.unhandled += result.get("unhandled", 0)
        self.worst_lps = max(self.worst_lps, result.get("worst_lps", 0))
        if "error" in result:
            self.errors.append(result["error"])

    def _fmt(self, value):
        if value is None:
            return "-"
        if value == float("inf"):
            return f">{self.timeout:g}"
        return f"{value:.3f}"

    def cells(self):
        values = [float("inf") if s is None else s for s in self.samples]
        median = statistics.median(values) if values else None
        worst = max(values) if values else None
        met = bool(values) and self.unhandled == 0 and self.worst_lps <= 10
        if self.goal_median is not None:
            met = met and median <= self.goal_median
        if self.goal_max is not None:
            met = met and worst <= self.goal_max
        goal = " / ".join(f"{g:g}" if g is not None else "-"
                          for g in (self.goal_median, self.goal_max))
        stuck = sum(v == float("inf") for v in values)
        return [self.name, self.since, str(len(values)), str(stuck), self._fmt(median),
                self._fmt(worst), goal, str(self.unhandled), str(self.worst_lps),
                "yes" if met else "NO"]


def print_table(title, rows):
    """Print the rows with their goals (median / max, seconds)."""
    header = ["scenario", "from", "n", "stuck", "median", "max", "goal med/max", "Unhandled",
              "lines/s", "met"]
    table = [header] + [row.cells() for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    print()
    print(title)
    for i, r in enumerate(table):
        print("  " + "  ".join(c.ljust(w) if j < 2 else c.rjust(w)
                               for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))
    print("  (goals: every median/max within its goal, 0 Unhandled Error lines, at most"
          " 10 hermes_tx lines in any second; stuck, >T: not delivering within T s)")
    for row in rows:
        for error in row.errors:
            print(f"  {row.name}: a round failed: {error}")
