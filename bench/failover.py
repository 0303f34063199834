"""
How fast does hermes_tx follow a promotion?  Seconds from the promotion
request to the processor's "start" event, on throwaway clusters:

  watched     Client on the standby, its data directory watched
  polled      Client on the standby, no watched directory (1 s role checks)
  multi-host  multi-host DSN (target_session_attrs=read-write): the primary
              is stopped (fast), then the standby promoted

Run:  .venv/bin/python bench/failover.py [ROUNDS]      (default 5 rounds)
"""

import os
import random
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from twisted.internet import defer, reactor, task, threads  # noqa: E402

from hermes_tx.client import Client  # noqa: E402
from hermes_tx.components import Component  # noqa: E402
from hermes_tx.connectors import PostgresConnector  # noqa: E402
from hermes_tx.listeners import PostgresNotificationListener  # noqa: E402
from tests.support.pgcluster import Cluster  # noqa: E402


class StartTimer(Component):
    def __init__(self):
        super().__init__()
        self.starts = []

    def execute(self, event):
        if event.kind in ("start", "resync"):
            self.starts.append(time.monotonic())


@defer.inlineCallbacks
def one_round(mode):
    primary = yield threads.deferToThread(Cluster.create_primary)
    standby = yield threads.deferToThread(primary.create_standby)
    try:
        if mode == "multi-host":
            dsn = (f"host=127.0.0.1,127.0.0.1 port={primary.port},{standby.port} "
                   "user=postgres dbname=postgres target_session_attrs=read-write")
        else:
            dsn = standby.dsn()
        client = Client(dsn, watch_path=standby.data_dir if mode == "watched" else None)
        processor = StartTimer()
        client.add_listener(PostgresNotificationListener(PostgresConnector(dsn), "bench"))
        client.add_processor(processor)
        client.startService()
        expected_starts = 1 if mode == "multi-host" else 0
        while len(processor.starts) < expected_starts or client.role == "unknown":
            yield task.deferLater(reactor, 0.01, lambda: None)
        if mode == "multi-host":
            yield threads.deferToThread(primary.stop, "fast")
        # A random pause, so the promotion falls anywhere between two
        # periodic role checks.
        yield task.deferLater(reactor, random.uniform(0.3, 1.3), lambda: None)
        t0 = time.monotonic()
        yield threads.deferToThread(standby.promote)
        while len(processor.starts) <= expected_starts:
            if time.monotonic() - t0 > 30:
                raise RuntimeError(f"{mode}: no start event within 30 s")
            yield task.deferLater(reactor, 0.001, lambda: None)
        elapsed = processor.starts[expected_starts] - t0
        yield client.stopService()
        return elapsed
    finally:
        yield threads.deferToThread(standby.destroy)
        yield threads.deferToThread(primary.destroy)


@defer.inlineCallbacks
def main(rounds):
    results = {m: [] for m in ("watched", "polled", "multi-host")}
    for i in range(rounds):
        for mode in results:
            results[mode].append((yield one_round(mode)))
            print(f"round {i + 1} {mode}: {results[mode][-1]:.3f} s", flush=True)
    print()
    print("promotion request -> start event (seconds)")
    for mode, times in results.items():
        print(f"  {mode:10}  median {statistics.median(times):.3f}  max {max(times):.3f}"
              f"  (n={len(times)})")


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    task.react(lambda _: main(rounds))
