"""
Back-pressure on a real server: a slow processor makes the listener stop
reading instead of queueing without bound, and nothing is lost.
"""

from twisted.internet import defer, reactor
from twisted.trial import unittest

from hermes_tx.client import Client
from hermes_tx.components import Component
from hermes_tx.connectors import PostgresConnector
from hermes_tx.listeners import PostgresNotificationListener
from tests.support.shared import shared_primary, sleep, wait_until


class Gate(Component):
    """
    A processor that holds every event until the gate opens.
    """

    def __init__(self):
        super().__init__()
        self.gate = defer.Deferred()
        self.events = []

    def execute(self, event):
        self.events.append(event)
        if not self.gate.called:
            d = defer.Deferred()
            self.gate.addBoth(lambda r: (reactor.callLater(0, d.callback, None), r)[1])
            return d


class BackPressureTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_full_queue_pauses_reading_and_loses_nothing(self):
        cluster = shared_primary()
        dsn = cluster.dsn(application_name="hermes-backpressure")
        client = Client(dsn, queue_size=50)
        processor = Gate()
        listener = PostgresNotificationListener(PostgresConnector(dsn), "Pressure")
        client.add_listener(listener)
        client.add_processor(processor)
        client.startService()
        self.addCleanup(client.stopService)
        yield wait_until(lambda: processor.events, what="start event")
        total = 20000
        cluster.execute("SELECT count(pg_notify('Pressure', g::text)) FROM generate_series(1, %s) g",
                        (total,))
        yield wait_until(lambda: listener.pauses, what="reading paused")
        yield sleep(0.5)
        queued = len(client.notification_queue)
        # The bound is soft by at most one socket read's worth of events.
        self.assertTrue(50 <= queued < 2000, queued)
        self.assertLess(sum(listener.received.values()), total)
        self.assertTrue(listener.is_listening)
        processor.gate.callback(None)
        yield wait_until(lambda: len(processor.events) == total + 1, timeout=30,
                         what="every notification")
        kinds = [e.kind for e in processor.events]
        self.assertEqual(kinds, ["start"] + ["notification"] * total)
        self.assertEqual([e.payload for e in processor.events[1:]],
                         [str(i) for i in range(1, total + 1)])
        self.assertGreaterEqual(listener.pauses, 1)
        self.assertEqual(listener.resyncs, 0)
