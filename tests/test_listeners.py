"""
Tests for L{hermes_tx.listeners} against a real PostgreSQL server.
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from hermes_tx import strategies
from hermes_tx.connectors import PostgresConnector
from hermes_tx.exceptions import InvalidConfigurationException
from hermes_tx.postgres.channels import validate_channels
from hermes_tx.listeners import LISTENING, PostgresNotificationListener
from tests.support.shared import shared_primary, take, wait_until

ODD_CHANNELS = ["MyChan", "my-chan", 'Mixed-Case "q"', "ünïcødé ☃", "x\"; DROP TABLE t; --"]


class ChannelValidationTests(unittest.TestCase):
    def test_one_or_many(self):
        self.assertEqual(validate_channels("a"), ["a"])
        self.assertEqual(validate_channels(["a", "B", "a"]), ["a", "B"])

    def test_refused(self):
        for bad in ["", [], ["ok", ""], "a" * 64, "é" * 32, "nul\x00", [None]]:
            self.assertRaises(InvalidConfigurationException, validate_channels, bad)

    def test_63_bytes_is_fine(self):
        self.assertEqual(validate_channels("a" * 63), ["a" * 63])
        self.assertEqual(validate_channels("é" * 31 + "a"), ["é" * 31 + "a"])

    def test_listener_refuses_at_construction(self):
        self.assertRaises(
            InvalidConfigurationException,
            PostgresNotificationListener, PostgresConnector(""), "a" * 64,
            defer.DeferredQueue(), None, None,
        )


class ListenerTests(unittest.TestCase):
    """
    A listener on a real primary.
    """

    def setUp(self):
        self.cluster = shared_primary()
        self.app_name = f"hermes-test-{self.id().rsplit('.', 1)[-1]}"[:63]
        self.connector = PostgresConnector(self.cluster.dsn(), application_name=self.app_name)
        self.queue = defer.DeferredQueue()
        self.errors = defer.DeferredQueue()

    def start(self, channels, **kwargs):
        listener = PostgresNotificationListener(
            self.connector, channels, self.queue, strategies.CommonErrorStrategy(),
            self.errors, **kwargs
        )
        listener.startService()
        self.addCleanup(listener.stopService)
        return listener

    @defer.inlineCallbacks
    def test_exact_delivery_odd_channels_and_payloads(self):
        """
        Every notification arrives once, in order, on exactly the channel it
        was sent to (case, hyphens, quotes, unicode, SQL-looking names), with
        its payload verbatim; the start event comes first.
        """
        self.start(ODD_CHANNELS)
        (start,) = yield take(self.queue, 1)
        self.assertEqual((start.kind, start.channel, start.payload), ("start", None, None))
        payloads = ["", "plain", "ünïcødé ☃ \U0001F600", "quotes ' \" \\ ;", "x" * 7999]
        sent = []
        for channel in ODD_CHANNELS:
            for payload in payloads:
                self.cluster.notify(channel, payload)
                sent.append((channel, payload))
        # Not listened to: lower-cased and unquoted lookalikes.
        self.cluster.notify("mychan", "wrong")
        self.cluster.notify("Mixed-Case", "wrong")
        self.cluster.notify(ODD_CHANNELS[0], "last")
        sent.append((ODD_CHANNELS[0], "last"))
        events = yield take(self.queue, len(sent))
        self.assertEqual([(e.channel, e.payload) for e in events], sent)
        self.assertEqual({e.kind for e in events}, {"notification"})
        for e in events:
            self.assertIsInstance(e.pid, int)
            self.assertIsInstance(e.received_at, float)
        self.assertEqual(self.queue.pending, [])
        self.assertEqual(self.cluster.execute("SELECT 1"), [(1,)])

    @defer.inlineCallbacks
    def test_no_start_event_when_not_asked(self):
        listener = self.start("quiet", fire_on_start=False)
        yield wait_until(lambda: listener.is_listening, what="listening")
        self.cluster.notify("quiet", "only")
        (event,) = yield take(self.queue, 1)
        self.assertEqual((event.kind, event.payload), ("notification", "only"))

    @defer.inlineCallbacks
    def test_terminated_backend_reconnects_with_resync(self):
        """
        pg_terminate_backend: the listener notices at once, reconnects,
        LISTENs again, queues a resync event, and delivers what is sent
        after; nothing is logged as an unhandled error.
        """
        listener = self.start(["Term-Chan"])
        yield take(self.queue, 1)
        for round_ in range(3):
            self.assertEqual(self.cluster.terminate_backends(self.app_name), 1)
            (resync,) = yield take(self.queue, 1)
            self.assertEqual(resync.kind, "resync")
            self.assertEqual(listener.state, LISTENING)
            self.cluster.notify("Term-Chan", f"after {round_}")
            (event,) = yield take(self.queue, 1)
            self.assertEqual((event.kind, event.payload), ("notification", f"after {round_}"))
        self.assertTrue(listener.is_alive())
        self.assertEqual(self.errors.pending, [])

    @defer.inlineCallbacks
    def test_stop_closes_connection(self):
        listener = self.start("stopping")
        yield take(self.queue, 1)
        self.assertEqual(len(self.cluster.backend_pids(self.app_name)), 1)
        yield listener.stopService()
        yield wait_until(lambda: not self.cluster.backend_pids(self.app_name), what="backend gone")
        self.assertFalse(listener.is_alive())


class ListenerUnreachableTests(unittest.TestCase):
    """
    A server that refuses connections, on a clock.
    """

    @defer.inlineCallbacks
    def test_backoff_and_one_line_per_attempt(self):
        """
        Connection refused: retries come after 0.1, 0.2, 0.4 ... seconds
        (within the jitter), capped at backoff_limit, one warning each, and
        no traceback.
        """
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock = task.Clock()
        connector = PostgresConnector("host=127.0.0.1 port=1 connect_timeout=2")
        queue = defer.DeferredQueue()
        listener = PostgresNotificationListener(
            connector, "x", queue, None, None, clock=clock, backoff_limit=1
        )
        listener.startService()
        self.addCleanup(listener.stopService)
        delays = []
        for _ in range(6):
            yield wait_until(lambda: clock.getDelayedCalls(), what="a retry timer")
            (call,) = clock.getDelayedCalls()
            delays.append(call.getTime() - clock.seconds())
            clock.advance(delays[-1])
        exact = [0.1, 0.2, 0.4, 0.8, 1, 1]
        for got, want in zip(delays, exact):
            self.assertTrue(want * 0.9 <= got <= want, (delays, exact))
        self.assertEqual(queue.pending, [])
        self.assertEqual(self.flushLoggedErrors(), [])
        mine = [e for e in events if e.get("log_namespace", "").startswith("hermes_tx")]
        # One line per failed attempt (six advanced, a seventh under way).
        self.assertIn(len(mine), (6, 7))
        for e in mine:
            self.assertIsNone(e.get("log_failure"))
            self.assertIn("Connection refused", e["error"])
