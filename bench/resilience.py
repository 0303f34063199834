"""
How fast does hermes_tx deliver again after a fault?  A Client (role
checks, a listener on its own connection, a recording processor) on a
throwaway primary, while a sender thread sends one notification every 10 ms
on its own connection.  "Delivering again" is the processor receiving the
first notification after the fault's resync event (so over the new
connection; with one sent every 10 ms it comes at most ~10 ms after LISTEN).

  terminated    pg_terminate_backend of the listener's backend, 20 kills;
                seconds from the kill.  Each kill comes after the
                connection has been stable (stable_after=0.5 s here; the
                default is 10 s), so every reconnect is a first retry.
  back-to-back  6 kills in a row with the default stable_after (10 s), each
                as soon as delivery resumed: the reconnect backoff doubles.
  restart fast / restart immediate
                pg_ctl stop -m MODE, then start: seconds from the server
                accepting connections again (pg_ctl start -w returned) to
                delivering again; 3 rounds each.  Also the whole outage,
                from the stop request.
  hung          SIGSTOP of the listener's backend, liveness_timeout=10 s:
                seconds from the SIGSTOP to the resync and to delivering.

Run:  .venv/bin/python bench/resilience.py
"""

import os
import signal
import statistics
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import psycopg2  # noqa: E402
from twisted.internet import defer, reactor, task, threads  # noqa: E402

from hermes_tx.client import Client  # noqa: E402
from hermes_tx.components import Component  # noqa: E402
from hermes_tx.connectors import PostgresConnector  # noqa: E402
from hermes_tx.listeners import PostgresNotificationListener  # noqa: E402
from tests.support.pgcluster import Cluster  # noqa: E402

CHANNEL = "bench"
LISTENER_APP = "bench-listener"


class Recorder(Component):
    """Records when each notification and each resync arrive."""

    def __init__(self):
        super().__init__()
        self.received = []  # monotonic seconds of each notification
        self.resyncs = []  # (monotonic seconds, len(received) at that moment)

    def execute(self, event):
        now = time.monotonic()
        if event.kind == "notification":
            self.received.append(now)
        elif event.kind == "resync":
            self.resyncs.append((now, len(self.received)))


class Sender(threading.Thread):
    """Sends a sequence number on CHANNEL every 10 ms, reconnecting as needed."""

    def __init__(self, dsn):
        super().__init__(daemon=True)
        self.dsn = dsn
        self.done = threading.Event()
        self.sent = 0

    def run(self):
        conn = None
        while not self.done.is_set():
            try:
                if conn is None:
                    conn = psycopg2.connect(self.dsn)
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(self.sent)))
                self.sent += 1
            except psycopg2.Error:
                if conn is not None:
                    conn.close()
                conn = None
            self.done.wait(0.01)
        if conn is not None:
            conn.close()


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def delivering_again(recorder, resyncs_before, timeout=60.0):
    """
    Wait for the resync that follows a fault (the one after the first
    C{resyncs_before}) and the first notification after it.  (A notification
    sent just after the fault may still reach the old connection before the
    fault takes effect, so "sent after the fault" is not a safe criterion;
    every notification after the resync came over the new connection.)

    @return: C{(resync time, delivery time)}, monotonic seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        if len(recorder.resyncs) > resyncs_before:
            at, index = recorder.resyncs[resyncs_before]
            if len(recorder.received) > index:
                return at, recorder.received[index]
        if time.monotonic() > deadline:
            raise RuntimeError(f"not delivering again within {timeout} s")
        yield sleep(0.001)


@defer.inlineCallbacks
def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        yield sleep(0.005)


@defer.inlineCallbacks
def with_client(cluster, body, **listener_kwargs):
    """Run C{body(client, recorder)} with a started Client and the sender."""
    client = Client(cluster.dsn())
    recorder = Recorder()
    client.add_listener(PostgresNotificationListener(
        PostgresConnector(cluster.dsn(application_name=LISTENER_APP)), CHANNEL, **listener_kwargs))
    client.add_processor(recorder)
    sender = Sender(cluster.dsn(application_name="bench-sender", connect_timeout=2))
    client.startService()
    sender.start()
    try:
        yield wait_for(lambda: client.listener.is_listening and recorder.received)
        return (yield body(client, recorder))
    finally:
        sender.done.set()
        yield threads.deferToThread(sender.join)
        yield client.stopService()


def kills(cluster, rounds, pause):
    @defer.inlineCallbacks
    def body(client, recorder):
        results = []
        for i in range(rounds):
            yield sleep(pause)
            before = len(recorder.resyncs)
            t0 = time.monotonic()
            killed = yield threads.deferToThread(cluster.terminate_backends, LISTENER_APP)
            assert killed == 1, killed
            _, delivered = yield delivering_again(recorder, before)
            results.append(delivered - t0)
        return results
    return body


@defer.inlineCallbacks
def restarts(cluster, mode, rounds):
    @defer.inlineCallbacks
    def body(client, recorder):
        after_start, outage = [], []
        for i in range(rounds):
            yield sleep(1.0)
            before = len(recorder.resyncs)
            t_stop = time.monotonic()
            yield threads.deferToThread(cluster.stop, mode)
            yield threads.deferToThread(cluster.start)
            t_accept = time.monotonic()
            _, t_delivered = yield delivering_again(recorder, before)
            after_start.append(t_delivered - t_accept)
            outage.append(t_delivered - t_stop)
            print(f"  restart -m {mode} round {i + 1}: {after_start[-1]:.3f} s after start"
                  f" (outage {outage[-1]:.3f} s)", flush=True)
            yield wait_for(lambda: client.listener.is_listening)
        return after_start, outage
    return (yield with_client(cluster, body))


def hung(cluster):
    @defer.inlineCallbacks
    def body(client, recorder):
        (pid,) = cluster.backend_pids(LISTENER_APP)
        yield sleep(0.5)
        before = len(recorder.resyncs)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:
            resync, delivered = yield delivering_again(recorder, before)
        finally:
            os.kill(pid, signal.SIGCONT)
        return resync - t0, delivered - t0
    return body


@defer.inlineCallbacks
def main():
    cluster = yield threads.deferToThread(Cluster.create_primary)
    rows = []
    try:
        print("terminated: 20 kills ...", flush=True)
        times = yield with_client(cluster, kills(cluster, 20, pause=0.6), stable_after=0.5)
        rows.append(("backend terminated -> delivering", "kill", times))
        print("back-to-back: 6 kills, default stable_after ...", flush=True)
        times = yield with_client(cluster, kills(cluster, 6, pause=0.0))
        print("  " + ", ".join(f"{t:.3f}" for t in times), flush=True)
        rows.append(("back-to-back kills (default backoff)", "kill", times))
        for mode in ("fast", "immediate"):
            print(f"restart -m {mode}: 3 rounds ...", flush=True)
            after_start, outage = yield restarts(cluster, mode, 3)
            rows.append((f"restart -m {mode} -> delivering", "accepting", after_start))
            rows.append((f"restart -m {mode}, whole outage", "stop request", outage))
        print("hung backend (SIGSTOP), liveness_timeout=10 ...", flush=True)
        resync, delivered = yield with_client(cluster, hung(cluster), liveness_timeout=10.0)
        rows.append(("SIGSTOP -> resync (liveness 10 s)", "SIGSTOP", [resync]))
        rows.append(("SIGSTOP -> delivering (liveness 10 s)", "SIGSTOP", [delivered]))
    finally:
        yield threads.deferToThread(cluster.destroy)
    print()
    print("seconds until the processor receives notifications again")
    print(f"  {'fault':40} {'from':13} {'n':>3} {'median':>7} {'max':>7}")
    for name, since, times in rows:
        print(f"  {name:40} {since:13} {len(times):3d} {statistics.median(times):7.3f}"
              f" {max(times):7.3f}")


if __name__ == "__main__":
    task.react(lambda _: main())
