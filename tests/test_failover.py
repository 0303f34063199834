"""
Tests for the L{hermes_tx.client.Client}'s role-based behaviour on real
primary/standby pairs: components run only on a primary, promotion starts
them (with and without a watched data directory), a multi-host DSN follows a
failover and a demotion, an unreachable server is retried with backoff (the
failover-file watcher's own tests are in tests.test_failover_files).

Each class that promotes or stops a server has its own pair (made once per
class, about 2 s).  Servers are stopped and promoted from a worker thread,
as an operator would from outside, so the reactor keeps running meanwhile.

Measured delays are written to standard error and to the test log, as lines
starting with C{hermes_tx failover timing:}.
"""

import os
import sys
import time

from twisted.internet import defer, reactor, task, threads
from twisted.logger import Logger, formatEvent
from twisted.trial import unittest

from hermes_tx.client import Client
from hermes_tx.connectors import PostgresConnector
from hermes_tx.listeners import PostgresNotificationListener
from tests.support.fixtures import PrimaryStandbyFixtures
from tests.support.shared import Collector, capture_log, shared_primary, sleep, wait_until

CHANNEL = "Fail-Over"

_log = Logger(namespace="tests.test_failover")


def report_timing(what, seconds):
    """
    Write a measured delay to standard error and to the test log.
    """
    line = f"hermes_tx failover timing: {what}: {seconds:.3f} s"
    sys.stderr.write(line + "\n")
    _log.info("{line}", line=line)


class CountingConnector(PostgresConnector):
    """
    A real connector counting role checks and how many overlap.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.checks = 0
        self.in_flight = 0
        self.max_in_flight = 0

    def is_server_master(self):
        self.checks += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

        def done(result):
            self.in_flight -= 1
            return result

        return super().is_server_master().addBoth(done)


def hermes_events(events):
    return [e for e in events if e.get("log_namespace", "").startswith("hermes_tx")]


class _ClientHelpers:
    def start_client(self, dsn, app_name, **client_kwargs):
        """
        Start a Client with a listener (on C{CHANNEL}, its connector
        identified as C{app_name}) and a L{Collector}; stopped at cleanup.

        @return: C{(client, collector)}.
        """
        client = Client(dsn, **client_kwargs)
        collector = Collector()
        client.add_listener(
            PostgresNotificationListener(PostgresConnector(dsn, application_name=app_name), CHANNEL)
        )
        client.add_processor(collector)
        client.startService()
        self.addCleanup(lambda: client.stopService() if client.running else None)
        return client, collector


class _PairFixture(PrimaryStandbyFixtures, _ClientHelpers):
    """
    A primary and a streaming standby of it, for the whole class.
    """

    def multi_host_dsn(self, **extra):
        dsn = (
            f"host=127.0.0.1,127.0.0.1 port={self.primary.port},{self.standby.port}"
            " user=postgres dbname=postgres"
        )
        return " ".join([dsn] + [f"{k}={v}" for k, v in extra.items()])


class StandbyTests(_PairFixture, unittest.TestCase):
    """
    A Client that finds (or ends up on) a standby keeps its components
    stopped and never LISTENs there.  Neither test needs the other's state:
    the standby stays a standby whether the primary runs or not.
    """

    @defer.inlineCallbacks
    def test_start_on_standby(self):
        """
        On a standby the role is "standby", listener and processor never
        start, LISTEN is never attempted, and frequent role checks log only
        the role change.
        """
        events = capture_log(self)
        dsn = self.standby.dsn()
        connector = CountingConnector(dsn, application_name="hermes-role")
        client, collector = self.start_client(
            dsn, "hermes-on-standby", role_check_interval=0.2, connector=connector
        )
        yield wait_until(lambda: client.role == "standby", timeout=5, what="role standby")
        yield sleep(2.5)
        self.assertEqual(client.role, "standby")
        self.assertFalse(collector.running)
        self.assertFalse(client.listener.running)
        self.assertEqual(collector.events, [])
        self.assertEqual(list(client.notification_queue.pending), [])
        # The checks did run (every 0.2 s), on one kept connection...
        self.assertGreaterEqual(connector.checks, 8)
        self.assertEqual(connector.max_in_flight, 1)
        self.assertEqual(len(self.standby.backend_pids("hermes-role")), 1)
        # ... while the listener never even connected.
        self.assertEqual(self.standby.backend_pids("hermes-on-standby"), [])
        self.assertNotIn("cannot execute LISTEN", self.standby.read_log())
        lines = [formatEvent(e) for e in hermes_events(events)]
        self.assertLessEqual(len(lines), 3, lines)
        self.assertEqual(lines.count("role: unknown -> standby"), 1, lines)

    @defer.inlineCallbacks
    def test_demotion_when_primary_stops(self):
        """
        A multi-host DSN without target_session_attrs lists the primary,
        then the standby.  When the primary stops, connections land on the
        standby: the components stop, the role becomes "standby", and
        nothing ever LISTENs on the standby.
        """
        client, collector = self.start_client(self.multi_host_dsn(), "hermes-demotion")
        yield wait_until(lambda: collector.events, timeout=10, what="start event")
        self.assertEqual(client.role, "primary")
        self.primary.notify(CHANNEL, "on the primary")
        yield wait_until(lambda: len(collector.events) == 2, what="notification")
        self.assertEqual(
            collector.seen(), [("start", None, None), ("notification", CHANNEL, "on the primary")]
        )
        stopping = time.monotonic()
        yield threads.deferToThread(self.primary.stop, "fast")
        yield wait_until(
            lambda: client.role == "standby"
            and not collector.running
            and not client.listener.running,
            timeout=5,
            what="components stopped on the standby",
        )
        report_timing("demotion (stop requested -> components stopped)", time.monotonic() - stopping)
        # It stays that way: no flapping, no resync, no LISTEN attempt.
        yield sleep(1.5)
        self.assertEqual(client.role, "standby")
        self.assertFalse(collector.running)
        self.assertFalse(client.listener.running)
        self.assertEqual(len(collector.events), 2)
        self.assertEqual(len(self.standby.backend_pids("hermes-role")), 1)
        yield wait_until(
            lambda: not self.standby.backend_pids("hermes-demotion"), what="no listener backend"
        )
        self.assertNotIn("cannot execute LISTEN", self.standby.read_log())


class PromotionTests(_PairFixture, unittest.TestCase):
    @defer.inlineCallbacks
    def test_promotion_without_watched_directory(self):
        """
        Started on a standby with the default role_check_interval (1 s),
        the Client starts its components soon after promotion, and a
        notification sent to the new primary arrives.
        """
        client, collector = self.start_client(self.standby.dsn(), "hermes-promotion")
        yield wait_until(lambda: client.role == "standby", timeout=5, what="role standby")
        self.assertFalse(collector.running)
        promoted = time.monotonic()
        yield threads.deferToThread(self.standby.promote)
        yield wait_until(lambda: collector.events, timeout=10, what="start event")
        elapsed = collector.times[0] - promoted
        report_timing("promotion, no watched directory (promote -> start)", elapsed)
        self.assertEqual(collector.seen(), [("start", None, None)])
        self.assertEqual(client.role, "primary")
        self.assertLessEqual(elapsed, 3.0)
        self.standby.notify(CHANNEL, "on the new primary")
        yield wait_until(lambda: len(collector.events) == 2, what="notification")
        self.assertEqual(collector.seen()[1], ("notification", CHANNEL, "on the new primary"))


class WatchedPromotionTests(_PairFixture, unittest.TestCase):
    @defer.inlineCallbacks
    def test_promotion_with_watched_directory(self):
        """
        With the standby's data directory watched and periodic checks every
        30 s, only the failover-file event can explain a start within 1.5 s
        of promotion.
        """
        events = capture_log(self)
        client, collector = self.start_client(
            self.standby.dsn(),
            "hermes-watched",
            watch_path=self.standby.data_dir,
            role_check_interval=30,
        )
        yield wait_until(lambda: client.role == "standby", timeout=5, what="role standby")
        self.assertFalse(collector.running)
        promoted = time.monotonic()
        yield threads.deferToThread(self.standby.promote)
        yield wait_until(lambda: collector.events, timeout=5, what="start event")
        elapsed = collector.times[0] - promoted
        report_timing("promotion, watched data directory (promote -> start)", elapsed)
        self.assertEqual(collector.seen(), [("start", None, None)])
        self.assertEqual(client.role, "primary")
        self.assertLessEqual(elapsed, 1.5)
        lines = [formatEvent(e) for e in hermes_events(events)]
        self.assertTrue([line for line in lines if line.startswith("failover file ")], lines)
        self.standby.notify(CHANNEL, "watched")
        yield wait_until(lambda: len(collector.events) == 2, what="notification")
        self.assertEqual(collector.seen()[1], ("notification", CHANNEL, "watched"))


class MultiHostFailoverTests(_PairFixture, unittest.TestCase):
    @defer.inlineCallbacks
    def test_failover_to_promoted_standby(self):
        """
        One multi-host read-write DSN for the Client and the listener:
        running on the primary, then the primary stops and the standby is
        promoted; processing resumes on the new primary with a new start (or
        resync) event and notifications sent there arrive.
        """
        dsn = self.multi_host_dsn(target_session_attrs="read-write")
        client, collector = self.start_client(dsn, "hermes-failover")
        yield wait_until(lambda: collector.events, timeout=10, what="start event")
        self.primary.notify(CHANNEL, "old primary")
        yield wait_until(lambda: len(collector.events) == 2, what="notification")
        self.assertEqual(
            collector.seen(), [("start", None, None), ("notification", CHANNEL, "old primary")]
        )
        self.assertEqual(client.role, "primary")
        yield threads.deferToThread(self.primary.stop, "fast")
        promoted = time.monotonic()
        yield threads.deferToThread(self.standby.promote)
        yield wait_until(lambda: len(collector.events) == 3, timeout=15, what="start or resync")
        elapsed = collector.times[2] - promoted
        report_timing(f"multi-host failover (promote -> {collector.events[2].kind})", elapsed)
        self.assertIn(collector.events[2].kind, ("start", "resync"))
        self.assertEqual(client.role, "primary")
        self.standby.notify(CHANNEL, "new primary")
        yield wait_until(lambda: len(collector.events) == 4, what="notification")
        self.assertEqual(collector.seen()[3], ("notification", CHANNEL, "new primary"))
        self.assertEqual(client.role, "primary")
        self.assertEqual(len(self.standby.backend_pids("hermes-failover")), 1)


class UnreachableServerTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_backoff_on_a_clock(self):
        """
        Connection refused (on the real reactor): role checks are retried
        after 0.1, 0.15, 0.225 ... seconds (x1.5) up to max_backoff on the
        Client's clock, less up to a tenth of jitter; one warning for all of
        them, no traceback, components never started.
        """
        events = capture_log(self)
        clock = task.Clock()
        dsn = "host=127.0.0.1 port=1 user=postgres"
        client = Client(dsn, clock=clock, max_backoff=2)
        collector = Collector()
        client.add_listener(PostgresNotificationListener(PostgresConnector(dsn), CHANNEL))
        client.add_processor(collector)
        client.startService()
        self.addCleanup(client.stopService)
        probe = client.probes[0]

        delays = []
        for attempt in range(10):
            # The check's timeout timer is cancelled when it fails: the next
            # check is then the only pending call.
            yield wait_until(lambda: not probe._waiters and len(clock.getDelayedCalls()) == 1,
                             timeout=5, what=f"retry timer {attempt + 1}")
            (call,) = clock.getDelayedCalls()
            delays.append(call.getTime() - clock.seconds())
            self.assertEqual(client.role, "unknown")
            self.assertFalse(collector.running)
            self.assertFalse(client.listener.running)
            clock.advance(delays[-1])
        exact = [min(0.1 * 1.5 ** i, 2) for i in range(10)]
        for got, want in zip(delays, exact):
            self.assertTrue(0.9 * want - 1e-9 <= got <= want + 1e-9, (delays, exact))
        warnings = hermes_events(events)
        self.assertEqual(len(warnings), 1, [formatEvent(e) for e in warnings])
        (e,) = warnings
        self.assertIsNone(e.get("log_failure"))
        self.assertEqual(e["log_level"].name, "warn")
        self.assertTrue(formatEvent(e).startswith("role check failed: "), formatEvent(e))
        self.assertIn("Connection refused", e["error"])
        self.assertEqual(collector.events, [])
        self.assertEqual(self.flushLoggedErrors(), [])


class ConcurrentRoleCheckTests(unittest.TestCase, _ClientHelpers):
    @defer.inlineCallbacks
    def test_checks_do_not_overlap(self):
        """
        Asking for a role check during one does not start a second query:
        exactly one more check follows it, and the callers who asked during
        the check get that follow-up check's role (it began after they
        asked), the first caller the role of the check it began.
        """
        cluster = shared_primary()
        connector = CountingConnector(cluster.dsn(), application_name="hermes-role")
        client, collector = self.start_client(
            cluster.dsn(), "hermes-concurrent", role_check_interval=30, connector=connector
        )
        yield wait_until(lambda: client.role == "primary" and connector.in_flight == 0,
                         what="first check")
        yield wait_until(lambda: collector.events, what="start event")
        self.assertEqual(connector.checks, 1)
        order = []
        checks = []
        for i in range(3):
            d = client.execute_role_based_procedure()
            d.addCallback(lambda role, i=i: (order.append((i, connector.checks)), role)[1])
            checks.append(d)
        self.assertEqual(len({id(d) for d in checks}), 3)
        # One query for the three calls so far.
        self.assertEqual((connector.checks, connector.in_flight), (2, 1))
        roles = yield defer.gatherResults(checks)
        self.assertEqual(roles, ["primary"] * 3)
        # The first fires when its check has finished (before the follow-up
        # began); the other two once the follow-up has finished.
        self.assertEqual(order, [(0, 2), (1, 3), (2, 3)])
        yield wait_until(lambda: connector.in_flight == 0, what="follow-up check")
        self.assertEqual(connector.checks, 3)
        self.assertEqual(connector.max_in_flight, 1)
        self.assertEqual(collector.seen(), [("start", None, None)])
        self.assertTrue(collector.running)


class MultiHostFallbackTests(unittest.TestCase, _ClientHelpers):
    @defer.inlineCallbacks
    def test_connections_after_falling_back_to_a_later_host(self):
        """
        A multi-host DSN whose first host refuses: the connection made to
        the second host is kept (one role-check backend however many checks
        run) and its loss is still noticed (the listener resyncs).
        """
        cluster = shared_primary()
        dsn = f"host=127.0.0.1,127.0.0.1 port=1,{cluster.port} user=postgres dbname=postgres"
        connector = CountingConnector(dsn, application_name="hermes-role-fallback")
        client, collector = self.start_client(
            dsn, "hermes-fallback", role_check_interval=0.1, connector=connector
        )
        yield wait_until(lambda: collector.events, what="start event")
        yield wait_until(lambda: connector.checks >= 6, what="role checks")
        self.assertEqual(len(cluster.backend_pids("hermes-role-fallback")), 1)
        self.assertEqual(len(cluster.backend_pids("hermes-fallback")), 1)
        self.assertEqual(cluster.terminate_backends("hermes-fallback"), 1)
        yield wait_until(lambda: len(collector.events) == 2, what="resync")
        self.assertEqual(collector.seen(), [("start", None, None), ("resync", None, None)])
        cluster.notify(CHANNEL, "after resync")
        yield wait_until(lambda: len(collector.events) == 3, what="notification")
        self.assertEqual(collector.seen()[2], ("notification", CHANNEL, "after resync"))


class FailoverFileBurstTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_stop_during_a_burst_of_checks(self):
        """
        A failover-file change starts a burst of role checks (every 10 ms
        for up to a second, until the role changes); stopping the Client in
        the middle of it ends the burst and leaves no timer behind.
        """
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        cluster = shared_primary()
        connector = CountingConnector(cluster.dsn(), application_name="hermes-role-burst")
        client = Client(cluster.dsn(), watch_path=path, role_check_interval=30, connector=connector)
        client.startService()
        self.addCleanup(lambda: client.stopService() if client.running else None)
        yield wait_until(lambda: client.role == "primary", what="role primary")
        before = set(reactor.getDelayedCalls())
        with open(os.path.join(path, "standby.signal"), "w"):
            pass
        yield wait_until(lambda: connector.checks >= 6, timeout=5, what="a burst of checks")
        self.assertEqual(client.role, "primary")
        yield client.stopService()
        left = [c for c in reactor.getDelayedCalls() if c not in before and c.active()]
        self.assertEqual(left, [])
        checks = connector.checks
        yield sleep(0.1)
        self.assertEqual(connector.checks, checks)
