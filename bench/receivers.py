"""
One notification receiver per process, for bench/throughput.py.

    python bench/receivers.py MODE DSN CHANNEL COUNT [--latency]

MODE is hermes (the whole hermes_tx pipeline: listener -> queue -> a trivial
Component through pre_execute/execute/post_execute), hermes-batch (the same
in batch mode, max_batch=1000), psycopg2 (a plain
select/poll loop), asyncpg (add_listener) or txpostgres (stock
addNotifyObserver).  Each hands every payload to the same Recorder.record.
It prints one JSON line {"ready": true} once listening, and one JSON line of
results after COUNT notifications: the CLOCK_MONOTONIC time of the last one,
the resident set size after 100k and at the end, and with --latency the
p50/p99/max of (receive time - send time in the payload).
"""

import json
import os
import select
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Recorder:
    def __init__(self, count, latency, done):
        self.count = count
        self.latency = latency
        self.done = done
        self.seen = 0
        self.first = None
        self.rss = {}
        self.latencies = []

    def record(self, payload):
        self.seen += 1
        if self.latency:
            self.latencies.append(time.monotonic_ns() - int(payload))
        if self.seen == 100_000:
            self.rss["100k"] = rss_mb()
        if self.seen == self.count:
            last = time.monotonic()
            result = {"last": last, "seen": self.seen}
            self.rss["end"] = rss_mb()
            result["rss"] = self.rss
            if self.latency:
                lat = sorted(self.latencies)
                pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1e6
                result["latency_ms"] = {"p50": pick(0.5), "p99": pick(0.99), "max": lat[-1] / 1e6}
            print(json.dumps(result), flush=True)
            self.done()


def ready():
    print(json.dumps({"ready": True}), flush=True)


def run_psycopg2(dsn, channel, rec):
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    conn.cursor().execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    finished = []
    rec.done = lambda: finished.append(True)
    ready()
    record = rec.record
    while not finished:
        select.select([conn], [], [])
        conn.poll()
        notifies = conn.notifies
        if notifies:
            conn.notifies = []
            for n in notifies:
                record(n.payload)


def run_asyncpg(dsn, channel, rec):
    import asyncio

    import asyncpg

    from psycopg2.extensions import parse_dsn

    params = parse_dsn(dsn)  # asyncpg takes URIs or keywords, not key=value strings
    params["database"] = params.pop("dbname", None)
    params.pop("application_name", None)

    async def main():
        conn = await asyncpg.connect(**params)
        finished = asyncio.get_running_loop().create_future()
        rec.done = lambda: finished.done() or finished.set_result(None)
        record = rec.record
        await conn.add_listener(channel, lambda c, pid, ch, payload: record(payload))
        ready()
        await finished
        await conn.close()

    asyncio.run(main())


def run_txpostgres(dsn, channel, rec):
    from psycopg2 import sql
    from twisted.internet import reactor
    from txpostgres import txpostgres

    rec.done = reactor.stop
    conn = txpostgres.Connection()
    record = rec.record

    def listen(_):
        conn.addNotifyObserver(lambda n: record(n.payload))
        return conn.runOperation(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    conn.connect(dsn).addCallback(listen).addCallback(lambda _: ready())
    reactor.run()


def run_hermes(dsn, channel, rec, max_batch=None):
    from twisted.internet import reactor

    from hermes_tx.client import Client
    from hermes_tx.components import Component
    from hermes_tx.connectors import PostgresConnector
    from hermes_tx.listeners import PostgresNotificationListener

    record = rec.record

    class Trivial(Component):
        # The seed's chain with the default pre_execute and post_execute.
        def execute(self, event):
            if event.kind == "notification":
                record(event.payload)
            else:
                ready()

    class TrivialBatch(Component):
        # Batch mode: execute gets a list of the events queued at once.
        def execute(self, events):
            for event in events:
                if event.kind == "notification":
                    record(event.payload)
                else:
                    ready()

    rec.done = reactor.stop
    client = Client(dsn)
    client.add_listener(PostgresNotificationListener(PostgresConnector(dsn), channel))
    client.add_processor(TrivialBatch(max_batch=max_batch) if max_batch else Trivial())
    reactor.callWhenRunning(client.startService)
    reactor.run()


if __name__ == "__main__":
    mode, dsn, channel, count = sys.argv[1:5]
    recorder = Recorder(int(count), "--latency" in sys.argv, None)
    {"psycopg2": run_psycopg2, "asyncpg": run_asyncpg, "txpostgres": run_txpostgres,
     "hermes": run_hermes, "hermes-batch": lambda *a: run_hermes(*a, max_batch=1000),
     }[mode](dsn, channel, recorder)
