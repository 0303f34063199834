"""
Issue 15 on real servers: a listener's listen check
(L{hermes_tx.sources.listencheck}) against a throwaway PostgreSQL, directly
(heard), through a real pgbouncer in session pooling (heard) and in
transaction pooling (deaf: one line, not ready), as a library and as the
real C{twistd hermes} process.  pgbouncer must be installed (C{.ci/run}
installs it): without it these tests fail, they are not skipped.
"""

import json
import time

from twisted.internet import defer, threads
from twisted.logger import LogLevel, formatEvent
from twisted.trial import unittest

from hermes_tx.connectors import PostgresConnector
from hermes_tx.listeners import PostgresNotificationListener
from hermes_tx.runtime.queue import EventQueue
from hermes_tx.sources.listencheck import new_connection_sender
from tests.support.fixtures import ClassFixtures
from tests.support.hermesproc import HermesProcess
from tests.support.pgbouncer import PgBouncer
from tests.support.pgcluster import Cluster
from tests.support.shared import capture_log, sleep, wait_until
from tests.support.twistd import free_port

CHANNEL = "Check-Chan"


class _Servers(ClassFixtures):
    """
    One cluster per class, and a pgbouncer in front of it in each pooling
    mode.
    """

    @classmethod
    def setUpClass(cls):
        cls.cluster = Cluster.create_primary()
        cls.bouncers = {}
        try:
            for mode in ("transaction", "session"):
                bouncer = cls.bouncers[mode] = PgBouncer(cls.cluster, mode)
                bouncer.start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for bouncer in cls.bouncers.values():
            bouncer.destroy()
        cls.cluster.destroy()

    def dsn(self, way):
        return self.cluster.dsn() if way == "direct" else self.bouncers[way].dsn()


class ListenCheckTests(_Servers, unittest.TestCase):
    """
    A listener (real reactor, real connections) directly and through
    pgbouncer, with a 2 s probe timeout.
    """

    def setUp(self):
        super().setUp()
        self.log = capture_log(self)

    def start(self, dsn, **kwargs):
        self.queue = EventQueue()
        kwargs.setdefault("listen_check_timeout", 2.0)
        listener = PostgresNotificationListener(
            PostgresConnector(dsn, application_name="hermes-listencheck-test"), CHANNEL,
            notif_queue=self.queue, **kwargs)
        listener.startService()
        self.addCleanup(listener.stopService)
        return listener

    def lines(self, text):
        return [formatEvent(e) for e in self.log
                if e.get("log_namespace", "").startswith("hermes_tx")
                and text in formatEvent(e)]

    @defer.inlineCallbacks
    def assert_hears(self, way):
        listener = self.start(self.dsn(way))
        yield wait_until(lambda: listener.listen_probes["heard"], timeout=10,
                         what=f"a probe heard ({way})")
        self.assertIsNone(listener.deaf)
        self.assertTrue(listener.hears)
        # A forged probe and a user's notification: only the user's is queued.
        yield threads.deferToThread(self.cluster.notify, listener.check_channel, "forged")
        yield threads.deferToThread(self.cluster.notify, CHANNEL, "user")
        yield wait_until(lambda: any(e.payload == "user" for e in self.queue.pending),
                         what="the user's notification")
        self.assertEqual([(e.kind, e.payload) for e in self.queue.pending],
                         [("start", None), ("notification", "user")])
        self.assertEqual(self.lines("hears nothing"), [])

    def test_direct_hears(self):
        return self.assert_hears("direct")

    def test_session_pooling_hears(self):
        return self.assert_hears("session")

    @defer.inlineCallbacks
    def test_transaction_pooling_is_deaf(self):
        """
        Through transaction pooling LISTEN succeeds and hears nothing: the
        probe does not come back, one line says so and names the cause, the
        listener does not hear (and indeed, a user's notification is lost).
        """
        started = time.monotonic()
        listener = self.start(self.dsn("transaction"))
        yield wait_until(lambda: listener.deaf is not None, timeout=10, what="deaf")
        took = time.monotonic() - started
        self.assertLess(took, 5.0)
        self.assertTrue(listener.is_listening)
        self.assertFalse(listener.hears)
        yield threads.deferToThread(self.cluster.notify, CHANNEL, "lost")
        yield sleep(0.5)
        self.assertEqual([e.kind for e in self.queue.pending], ["start"])
        lines = self.lines("hears nothing")
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("pool_mode=transaction", lines[0])
        self.assertIn("did not come back within 2 s", lines[0])
        self.assertIn("got packet 'A' from server when not linked",
                      self.bouncers["transaction"].read_log())

    @defer.inlineCallbacks
    def test_probe_that_cannot_connect_is_not_deaf(self):
        """
        A probe whose connection is refused: one line saying the check could
        not be made and why; the listener is not called deaf.
        """
        dead = PostgresConnector(f"host=127.0.0.1 port={free_port()} user=postgres")
        listener = self.start(self.dsn("direct"),
                              listen_probe=new_connection_sender(dead, 2.0))
        yield wait_until(lambda: listener.listen_probes["failed"], what="a failed probe")
        self.assertIsNone(listener.deaf)
        self.assertTrue(listener.hears)
        lines = self.lines("could not check that LISTEN hears")
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("Connection refused", lines[0])
        self.assertEqual([e for e in self.log if e.get("log_level") == LogLevel.critical], [])

    @defer.inlineCallbacks
    def test_probe_connection_is_short_lived(self):
        """
        Each probe's connection is closed once it answered: after a heard
        probe, only the listening connection is left.
        """
        listener = self.start(self.dsn("direct"))
        yield wait_until(lambda: listener.listen_probes["heard"], what="a probe heard")
        yield wait_until(lambda: not self.cluster.backend_pids(
            "hermes-listencheck-test-listencheck"), what="the probe's connection closed")
        self.assertEqual(len(self.cluster.backend_pids("hermes-listencheck-test")), 1)


class TwistdListenCheckTests(_Servers, unittest.TestCase):
    """
    The issue's goal, with the real process and its default settings:
    C{twistd hermes --channel X --status-port P} through pgbouncer in
    transaction mode logs one clear line and answers C{/ready} 503 within
    30 s; directly and through session pooling it keeps answering 200.
    """

    @defer.inlineCallbacks
    def test_ready_follows_the_listen_check(self):
        processes = {way: HermesProcess(way, self.dsn(way))
                     for way in ("direct", "session", "transaction")}
        self.addCleanup(lambda: defer.gatherResults(
            [p.finish() for p in processes.values() if p.ended is None]))
        started = time.monotonic()
        for p in processes.values():
            yield p.wait_serving()
        deaf = processes["transaction"]
        answers = {way: [] for way in processes}
        reason = None
        while time.monotonic() - started < 30:
            for way, p in processes.items():
                code, body = yield p.get("/ready")
                answers[way].append(code)
                if way == "transaction" and code == 503:
                    reason = json.loads(body)["reason"]
            if reason is not None and "hears nothing" in reason:
                break
            yield sleep(0.25)
        took = time.monotonic() - started
        self.assertIsNotNone(reason, f"transaction pooling: /ready {answers['transaction']}")
        self.assertIn("LISTEN hears nothing", reason)
        self.assertLess(took, 30.0)
        # The others keep answering 200 past a probe's timeout, and later.
        for _ in range(12):
            for way in ("direct", "session"):
                code, body = yield processes[way].get("/ready")
                answers[way].append(code)
            yield sleep(0.5)
        for way in ("direct", "session"):
            self.assertEqual(set(answers[way][answers[way].index(200):]), {200},
                             f"{way}: /ready {answers[way]}")
        code, body = yield deaf.get("/metrics")
        self.assertIn(b'hermes_listen_deaf{source="listener"} 1.0', body)
        self.assertIn(b"hermes_listening 0.0", body)
        for p in processes.values():
            yield p.finish()
            self.assertEqual(p.problems, [])
        err = deaf.proto.err.decode("utf-8", "replace")
        lines = [line for line in err.splitlines() if "hears nothing" in line]
        self.assertEqual(len(lines), 1, err[-3000:])
        self.assertIn("pool_mode=transaction", lines[0])
        for way in ("direct", "session"):
            self.assertNotIn("hears nothing", processes[way].proto.err.decode())


class OutboxListenCheckTests(_Servers, unittest.TestCase):
    """
    The outbox consumer's wake-up LISTEN, checked the same way: through
    transaction pooling it still delivers, by polling, and says so once;
    /ready stays 200 and names it.
    """

    @defer.inlineCallbacks
    def test_transaction_pooling_polls_only(self):
        import psycopg2

        from hermes_tx.client import Client
        from hermes_tx.components import Component
        from hermes_tx.outbox.consumer import OutboxConsumer
        from hermes_tx.outbox.schema import install
        from hermes_tx.status.readiness import readiness

        log = capture_log(self)
        conn = psycopg2.connect(self.cluster.dsn())
        try:
            install(conn)
        finally:
            conn.close()

        class Seen(Component):
            def __init__(self):
                super().__init__()
                self.keys = []

            def execute(self, event):
                if event.kind == "change":
                    self.keys.append(event.key)

        dsn = self.dsn("transaction")
        client = Client(self.cluster.dsn(), role_check_interval=0.5)
        # A probe that could not be sent in time (connecting through the
        # proxy on a loaded machine) proves nothing: the next comes after
        # the interval, short here so that one such probe does not outlast
        # the wait below.
        consumer = OutboxConsumer(PostgresConnector(dsn, application_name="hermes-outbox-check"),
                                  "polled", poll_interval=0.5, listen_check_timeout=2.0,
                                  listen_check_interval=1.0)
        seen = Seen()
        client.add_outbox(consumer)
        client.add_processor(seen)
        client.startService()
        self.addCleanup(client.stopService)
        try:
            yield wait_until(lambda: consumer.hearing.deaf is not None, timeout=10, what="deaf")
        except AssertionError as error:
            self.fail(f"{error}; probes {dict(consumer.hearing.probes)};"
                      f" log: {[formatEvent(e) for e in log][-10:]}")
        self.cluster.execute("SELECT hermes.emit('polled', 'k', '{}')")
        yield wait_until(lambda: seen.keys, timeout=5, what="the change, by polling")
        lines = [formatEvent(e) for e in log if "not heard" in formatEvent(e)]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("wake-ups are not heard, polling only (every 0.5 s)", lines[0])
        self.assertIn("pool_mode=transaction", lines[0])
        ready, details = readiness(client)
        self.assertTrue(ready, details)
        self.assertIn("polling only", details["outbox"])
