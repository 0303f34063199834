"""
How fast a consumer drains a backlog that per-key order holds back: with
few keys, a claim gets one change per key, and the next change of each key
becomes claimable only once the one before is acknowledged.
"""

from twisted.internet import defer
from twisted.trial import unittest

from hermes_tx.components import Component
from tests.support.outbox import OutboxDatabase
from tests.support.shared import wait_until


class Counter(Component):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.changes = 0

    def execute(self, event):
        if event.kind == "change":
            self.changes += 1


class _Draining(OutboxDatabase):
    def start(self, topic, **kwargs):
        counter = Counter()
        client, consumer = self.start_consumer([topic], counter, **kwargs)
        return client, consumer, counter


class FewKeysTests(_Draining, unittest.TestCase):
    @defer.inlineCallbacks
    def test_backlog_of_few_keys_drains_without_waiting_for_polls(self):
        """
        200 changes over 10 keys, nothing written meanwhile (no wake-up):
        the consumer claims the next changes of a key as soon as it has
        acknowledged the one before, not one claim per poll interval (20
        polls of 10 s here).
        """
        self.query(
            "INSERT INTO hermes.outbox (topic, key, payload)"
            " SELECT 'few', (g % 10)::text, '{}' FROM generate_series(1, 200) g"
        )
        client, consumer, counter = self.start("few", poll_interval=10.0)
        try:
            yield wait_until(lambda: consumer.ledger.counts["acked"] >= 200, timeout=8,
                             what="200 acknowledgements")
        except AssertionError as e:
            self.fail(f"{e}: {consumer.ledger.counts['acked']} acknowledged")
        self.assertEqual(counter.changes, 200)


class StopAfterDrainTests(_Draining, unittest.TestCase):
    @defer.inlineCallbacks
    def test_stops_promptly_after_a_large_drain(self):
        """
        After draining 5000 changes with a processor that does nothing
        (acknowledgements settle far faster than they are written), the
        consumer still stops at once.
        """
        self.query(
            "INSERT INTO hermes.outbox (topic, key, payload)"
            " SELECT 'many', g::text, '{}' FROM generate_series(1, 5000) g"
        )
        client, consumer, counter = self.start("many")
        yield wait_until(lambda: consumer.ledger.counts["acked"] >= 5000, timeout=30,
                         what="5000 acknowledgements")
        stopped = client.stopService()
        try:
            yield wait_until(lambda: stopped.called, timeout=5, what="the stop")
        except AssertionError as e:
            self.fail(f"{e}: the consumer is {consumer.state}")
        self.assertEqual(counter.changes, 5000)
