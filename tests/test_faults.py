"""
Fault injection on a real PostgreSQL server: a whole L{Client} (role checks,
a L{PostgresNotificationListener} on its own connection, a collecting
processor) survives terminated backends, fast and immediate restarts, a
hung backend, a server that is down at start, a wrong password or missing
database, undecodable payloads, a failing processor and a slow shutdown.

Every fault test checks four things: a C{resync} event followed the gap;
notifications sent after recovery arrive exactly (payloads and order); the
Client and its components still run; and nothing was logged as an unhandled
error or with a traceback (only the processor's own bug is, once).

Three tests pin bugs this suite found and that are fixed (their
docstrings say what went wrong): test_restart_during_stuck_item_keeps_one_loop,
test_connection_dropped_during_startup and
test_connect_raising_synchronously_does_not_wedge_connector.

Timings (kill -> resync, restart -> delivering again, SIGSTOP -> resync) go
to standard error; C{bench/resilience.py} measures them more thoroughly.
"""

import os
import signal
import statistics
import sys
import time

from twisted.internet import defer, protocol, reactor, task, threads
from twisted.logger import formatEvent
from twisted.trial import unittest

from hermes_tx.connectors import HermesConnection, PostgresConnector
from hermes_tx.exceptions import ConnectFailedError
from tests.support.fixtures import ClassFixtures
from tests.support.pgcluster import Cluster
from tests.support.faults import CHANNEL, SECRET, FaultHelpers, event_text, warnings_in
from tests.support.shared import Collector, capture_log, shared_primary, sleep, wait_until

class Boom(Exception):
    """The processor's bug in L{ClientFaultTests.test_processor_raises}."""


def report(what, value):
    sys.stderr.write(f"\n[test_faults] {what}: {value}\n")
    sys.stderr.flush()


class ServerFaultTests(ClassFixtures, FaultHelpers, unittest.TestCase):
    """
    Faults of the server itself, on a primary of this class's own (it is
    stopped, restarted and has its backends killed and frozen).
    """

    @classmethod
    def setUpClass(cls):
        cls.cluster = Cluster.create_primary()
        try:
            # A role that must give a password (scram) over TCP, for the
            # wrong-password test; everybody else keeps trust.
            cls.cluster.execute("CREATE ROLE pwuser LOGIN PASSWORD 'right-pass'")
            hba = os.path.join(cls.cluster.data_dir, "pg_hba.conf")
            with open(hba) as f:
                rules = f.read()
            with open(hba, "w") as f:
                f.write("host all pwuser 127.0.0.1/32 scram-sha-256\n" + rules)
            cls.cluster.execute("SELECT pg_reload_conf()")
        except BaseException:
            cls.cluster.destroy()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.cluster.destroy()

    def setUp(self):
        super().setUp()
        # A test that fails while the server is down must not take the
        # class's other tests with it.
        self.addCleanup(lambda: None if self.cluster.is_running() else self.cluster.start())

    @defer.inlineCallbacks
    def test_terminate_backend_20_times(self):
        """
        pg_terminate_backend on the listener's backend, 20 times in a row:
        each time one resync, then delivery resumes.  A connection that was
        LISTENing is a success, so every reconnect waits the first delay
        (0.1 s), however close together the kills come.
        """
        log = capture_log(self)
        client, processor, app = self.start_client(self.cluster, "terminate")
        yield self.wait_listening(client, processor)
        self.assertEqual(processor.kinds(), ["start"])
        pids = set(self.cluster.backend_pids(app))
        durations = []
        for i in range(20):
            index = len(processor.events)
            t0 = time.monotonic()
            self.assertEqual(self.cluster.terminate_backends(app), 1)
            yield wait_until(lambda: len(processor.events) > index, timeout=5,
                             what=f"resync after kill {i}")
            durations.append(processor.times[index] - t0)
            self.assert_resync_after(processor, index)
            yield self.send_and_check(self.cluster, processor, [f"after kill {i}"])
            pids.update(self.cluster.backend_pids(app))
        yield self.send_and_check(self.cluster, processor, ["a", "b", "", "ü ☃", "last"])
        self.assertEqual(processor.kinds(), ["start"] + ["resync", "notification"] * 20
                         + ["notification"] * 5)
        self.assertEqual(len(pids), 21)  # a new backend every time
        self.assertEqual(client.listener.resyncs, 20)
        self.assertLess(max(durations[-5:]), 1.0, durations)  # no growing backoff
        self.assert_running(client)
        self.assert_clean_log(log)
        report("kill -> resync, median of 20 (s)",
               f"{statistics.median(durations):.3f} (max {max(durations):.3f})")

    @defer.inlineCallbacks
    def _restart(self, mode):
        log = capture_log(self)
        client, processor, app = self.start_client(self.cluster, f"restart-{mode}")
        yield self.wait_listening(client, processor)
        yield self.send_and_check(self.cluster, processor, ["before"])
        index = len(processor.events)
        yield threads.deferToThread(self.cluster.stop, mode)
        yield threads.deferToThread(self.cluster.start)
        accepting = time.monotonic()
        # Probe in a loop (every 10 ms) until one is delivered again.
        sent = 0
        while not processor.notifications(index):
            self.assertLess(time.monotonic() - accepting, 15, "not delivering again")
            self.cluster.notify(CHANNEL, f"probe {sent}")
            sent += 1
            yield sleep(0.01)
        delivering = processor.times[-1] - accepting
        self.assert_resync_after(processor, index)
        # Probes sent during the gap are lost; the ones after it arrive in
        # order.
        probes = processor.notifications(index)
        numbers = [int(p.split()[1]) for p in probes]
        self.assertEqual(numbers, list(range(numbers[0], sent)))
        yield self.send_and_check(self.cluster, processor, [f"{mode} {i}" for i in range(10)])
        self.assert_running(client)
        self.assert_clean_log(log)
        report(f"restart -m {mode}: accepting -> delivering again (s)", f"{delivering:.3f}")
        return delivering

    def test_restart_fast(self):
        """
        pg_ctl restart -m fast: one resync, then delivery resumes.
        """
        return self._restart("fast")

    def test_restart_immediate(self):
        """
        pg_ctl restart -m immediate (crash recovery at start): one resync,
        then delivery resumes.
        """
        return self._restart("immediate")

    @defer.inlineCallbacks
    def test_hung_backend(self):
        """
        The listener's backend is frozen (SIGSTOP): the liveness probe
        declares the connection dead within liveness_timeout, the listener
        reconnects to a new backend and queues a resync; notifications flow
        on the new connection.
        """
        log = capture_log(self)
        timeout = 2.0
        client, processor, app = self.start_client(
            self.cluster, "hung", listener_kwargs={"liveness_timeout": timeout})
        yield self.wait_listening(client, processor)
        (old,) = self.cluster.backend_pids(app)
        index = len(processor.events)
        t0 = time.monotonic()
        os.kill(old, signal.SIGSTOP)

        def resume():
            try:
                os.kill(old, signal.SIGCONT)
            except ProcessLookupError:
                pass

        self.addCleanup(resume)
        yield wait_until(lambda: len(processor.events) > index, timeout=timeout + 2,
                         what="resync after SIGSTOP")
        elapsed = processor.times[index] - t0
        self.assert_resync_after(processor, index)
        new = [p for p in self.cluster.backend_pids(app) if p != old]
        self.assertEqual(len(new), 1, new)
        yield self.send_and_check(self.cluster, processor, [f"hung {i}" for i in range(5)])
        self.assert_running(client)
        self.assert_clean_log(log)
        report(f"SIGSTOP -> resync, liveness_timeout={timeout:g} (s)", f"{elapsed:.3f}")

    @defer.inlineCallbacks
    def test_restart_during_stuck_item_keeps_one_loop(self):
        """
        The processor is stuck on an item when the server restarts: the
        Client stops it, stopService gives up on the item after
        shutdown_timeout, and the server comes back, so the Client starts it
        again.  When the stuck item finally completes, the processor must
        still handle one event at a time.

        Fails today: the abandoned run loop resumes next to the new one
        (Component._run only checks self._stopping, which startService reset
        to False), so two events are processed at once, and after a later
        stop the orphan loop still takes items from the queue.
        """

        class Tracked(Collector):
            def __init__(self):
                super().__init__()
                self.shutdown_timeout = 0.3
                self.stuck = defer.Deferred()
                self.active = 0
                self.max_active = 0
                self.completed = []

            def execute(self, event):
                Collector.execute(self, event)
                if event.kind != "notification":
                    return None
                if event.payload == "stuck":
                    return self.stuck
                self.active += 1
                self.max_active = max(self.max_active, self.active)

                def done():
                    self.active -= 1
                    self.completed.append(event.payload)

                return task.deferLater(reactor, 0.2, done)

        processor = Tracked()
        self.addCleanup(lambda: processor.stuck.called or processor.stuck.callback(None))
        client, processor, app = self.start_client(self.cluster, "stuck-restart",
                                                   processor=processor)
        yield self.wait_listening(client, processor)
        self.cluster.notify(CHANNEL, "stuck")
        yield wait_until(lambda: len(processor.events) == 2, timeout=5, what="stuck item")
        yield threads.deferToThread(self.cluster.stop, "fast")
        yield wait_until(lambda: processor.torn_down and not processor.running, timeout=5,
                         what="processor stopped, giving up on the stuck item")
        yield threads.deferToThread(self.cluster.start)
        yield wait_until(lambda: processor.kinds().count("resync") == 1, timeout=10,
                         what="resync after the restart")
        self.assertTrue(processor.is_alive())
        processor.stuck.callback(None)
        # One at a time, so that each arrives in a socket read of its own
        # while the one before may still be in progress.
        for p in ["x", "y", "z"]:
            self.cluster.notify(CHANNEL, p)
            yield wait_until(lambda: p in processor.notifications(), timeout=5,
                             what=f"{p} started")
        yield wait_until(lambda: len(processor.completed) == 3, timeout=5, what="x, y, z")
        self.assertEqual(processor.completed, ["x", "y", "z"])
        self.assertEqual(processor.max_active, 1, "events processed concurrently")

    @defer.inlineCallbacks
    def test_server_down_at_start(self):
        """
        Started while the server is down, the Client keeps its components
        stopped, keeps checking (backing off up to max_backoff) but logs the
        failure once and no traceback; once the server is up it becomes
        primary, listens and delivers.
        """
        yield threads.deferToThread(self.cluster.stop, "fast")
        log = capture_log(self)
        client, processor, app = self.start_client(self.cluster, "down")
        attempts = []
        connector = client.probes[0].connector
        check = connector.is_server_master
        connector.is_server_master = lambda: (attempts.append(1), check())[1]
        yield sleep(1.5)
        self.assertEqual(client.role, "unknown")
        self.assertTrue(client.running)
        self.assertFalse(client.listener.running)
        self.assertFalse(client.processor.running)
        self.assertEqual(processor.events, [])
        warnings = warnings_in(log)
        self.assertGreaterEqual(len(attempts), 3)  # 0.1, 0.25, 0.475, 0.81 ... s
        self.assertEqual(len(warnings), 1, [formatEvent(e) for e in warnings])
        for e in warnings:
            self.assertEqual(e.get("log_namespace"), "hermes_tx.client.Client", formatEvent(e))
        self.assert_clean_log(log)
        yield threads.deferToThread(self.cluster.start)
        yield wait_until(lambda: client.role == "primary", timeout=10, what="primary")
        yield self.wait_listening(client, processor)
        self.assertIn(processor.kinds(), (["start"], ["resync"]))
        yield self.send_and_check(self.cluster, processor, [f"up {i}" for i in range(5)])
        self.assert_running(client)
        self.assert_clean_log(log)

    @defer.inlineCallbacks
    def test_wrong_password(self):
        """
        A wrong password: the Client stays up with role unknown, logs the
        failure once, no traceback, and never the password.
        """
        log = capture_log(self)
        dsn = self.cluster.dsn(user="pwuser", password=SECRET)
        client, processor, app = self.start_client(self.cluster, "password", client_dsn=dsn,
                                                   listener_dsn=dsn)
        yield sleep(1.5)
        self.assert_unreachable(client, log, "password authentication failed")
        self.assertNotIn(SECRET, repr(client))
        self.assertNotIn(SECRET, repr(client.listener.pg_connector))

class ClientFaultTests(FaultHelpers, unittest.TestCase):
    """
    Faults that leave the server alone, on the shared primary.
    """

    def setUp(self):
        self.cluster = shared_primary()

    @defer.inlineCallbacks
    def test_missing_database(self):
        """
        A database that does not exist: the Client stays up with role
        unknown, logs the failure once and never the password.
        """
        log = capture_log(self)
        dsn = self.cluster.dsn(dbname="no_such_db", password=SECRET)
        client, processor, app = self.start_client(self.cluster, "nodb", client_dsn=dsn,
                                                   listener_dsn=dsn)
        yield sleep(1.5)
        self.assert_unreachable(client, log, 'database "no_such_db" does not exist')

    @defer.inlineCallbacks
    def test_processor_raises(self):
        """
        A processor that raises on one payload: the error is logged once with
        its traceback, the processor backs off 1 s and goes on with the next
        item; it stays alive and later notifications arrive.
        """

        class Picky(Collector):
            def execute(self, event):
                if event.payload == "poison":
                    raise Boom("cannot digest 'poison'")
                Collector.execute(self, event)

        log = capture_log(self)
        client, processor, app = self.start_client(self.cluster, "raises", processor=Picky())
        yield self.wait_listening(client, processor)
        for p in ["one", "poison", "two", "three"]:
            self.cluster.notify(CHANNEL, p)
        yield wait_until(lambda: len(processor.events) == 4, timeout=5, what="three notifications")
        self.assertEqual(processor.notifications(), ["one", "two", "three"])
        # The backoff: 1 s between "one" and "two" (the poison in between).
        self.assertGreaterEqual(processor.times[2] - processor.times[1], 0.95)
        self.assertLess(processor.times[3] - processor.times[2], 0.5)
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)
        failures = [e for e in log if e.get("log_failure") is not None]
        self.assertEqual(len(failures), 1)
        text = event_text(failures[0])
        self.assertIn("Traceback", text)
        self.assertIn("cannot digest 'poison'", text)
        self.assertIn("backing off 1 s", text)
        self.assertIn(repr(CHANNEL), text)
        yield self.send_and_check(self.cluster, processor, ["four", "five"])
        self.assertTrue(processor.is_alive())
        self.assertEqual(processor.failures, 1)
        self.assertEqual(processor.kinds().count("resync"), 0)
        self.assert_running(client)

    @defer.inlineCallbacks
    def test_json_payloads(self):
        """
        payload_format="json": JSON payloads arrive decoded in event.data;
        one that is not JSON arrives verbatim with event.decode_error set,
        logged as one warning line, and the listener goes on.
        """
        log = capture_log(self)
        client, processor, app = self.start_client(
            self.cluster, "json", listener_kwargs={"payload_format": "json"})
        yield self.wait_listening(client, processor)
        payloads = ['{"id": 1, "name": "ü"}', "not json{", "[2, null]"]
        yield self.send_and_check(self.cluster, processor, payloads)
        first, bad, last = processor.events[1:]
        self.assertEqual(first.data, {"id": 1, "name": "ü"})
        self.assertFalse(hasattr(first, "decode_error"))
        self.assertEqual(bad.payload, "not json{")
        self.assertFalse(hasattr(bad, "data"))
        self.assertIn("JSONDecodeError", bad.decode_error)
        self.assertEqual(last.data, [2, None])
        warnings = warnings_in(log)
        self.assertEqual(len(warnings), 1)
        self.assertIn("is not JSON", formatEvent(warnings[0]))
        self.assertIn(repr(CHANNEL), formatEvent(warnings[0]))
        yield self.send_and_check(self.cluster, processor, ['"still"'])
        self.assertEqual(processor.events[-1].data, "still")
        self.assert_running(client)
        self.assert_clean_log(log)

    @defer.inlineCallbacks
    def test_graceful_stop_waits_for_item(self):
        """
        stopService() during an item whose Deferred fires 0.5 s later waits
        for it: the item completes, then tear_down runs.
        """

        class Slow(Collector):
            def __init__(self):
                super().__init__()
                self.started = []
                self.completed = []

            def execute(self, event):
                if event.kind != "notification":
                    return Collector.execute(self, event)
                self.started.append(time.monotonic())
                return task.deferLater(reactor, 0.5, self.completed.append, event.payload)

        client, processor, app = self.start_client(self.cluster, "slow", processor=Slow())
        yield self.wait_listening(client, processor)
        self.cluster.notify(CHANNEL, "slow")
        yield wait_until(lambda: processor.started, timeout=5, what="item started")
        t0 = time.monotonic()
        stopped = client.stopService()
        self.assertFalse(stopped.called)
        seen = []
        stopped.addCallback(lambda _: seen.append((list(processor.completed), processor.torn_down)))
        yield stopped
        elapsed = time.monotonic() - t0
        self.assertEqual(seen, [(["slow"], True)])
        self.assertGreaterEqual(time.monotonic() - processor.started[0], 0.5)
        self.assertLess(elapsed, 1.0)
        self.assertFalse(processor.is_alive())
        self.assertFalse(client.listener.is_alive())

    @defer.inlineCallbacks
    def test_graceful_stop_gives_up_after_timeout(self):
        """
        With shutdown_timeout=0.3, stopService() during an item that never
        completes returns after about 0.3 s, and tear_down ran.
        """
        log = capture_log(self)
        never = defer.Deferred()

        class Stuck(Collector):
            def __init__(self):
                super().__init__()
                self.shutdown_timeout = 0.3

            def execute(self, event):
                if event.kind != "notification":
                    return Collector.execute(self, event)
                self.events.append(event)
                return never

        # Fire it after the test: the component's loop then ends quietly.
        self.addCleanup(lambda: never.called or never.callback(None))
        client, processor, app = self.start_client(self.cluster, "stuck", processor=Stuck())
        yield self.wait_listening(client, processor)
        self.cluster.notify(CHANNEL, "stuck")
        yield wait_until(lambda: len(processor.events) == 2, timeout=5, what="item started")
        t0 = time.monotonic()
        yield client.stopService()
        elapsed = time.monotonic() - t0
        self.assertTrue(0.25 <= elapsed < 0.6, elapsed)
        self.assertTrue(processor.torn_down)
        self.assertFalse(processor.is_alive())
        self.assertFalse(never.called)
        warnings = warnings_in(log)
        self.assertEqual(len(warnings), 1, [formatEvent(e) for e in warnings])
        self.assertIn("did not finish within 0.3 s", formatEvent(warnings[0]))
        self.assert_clean_log(log)


class _DropOnStartup(protocol.Protocol):
    """
    Accepts the TCP connection, reads the client's first packet and closes
    without a word, as PostgreSQL does while it crashes or restarts with
    -m immediate.
    """

    def dataReceived(self, data):
        self.transport.loseConnection()


class ConnectionSetupFaultTests(FaultHelpers, unittest.TestCase):
    """
    Faults while a connection is being set up.  On a real server they come
    from races (a connection attempt while it restarts with -m immediate:
    see the test docstrings); here they are made to happen every time.
    """

    @defer.inlineCallbacks
    def test_connection_dropped_during_startup(self):
        """
        A server that accepts the TCP connection and closes it before
        answering: the Client stays up with role unknown, one warning line
        per attempt, and no "Unhandled Error".

        Fails today: libpq closes the socket of the failed attempt
        (fileno() -1) while psycopg2 still says closed == 0, so
        txpostgres's Connection.doRead re-adds the reader and the epoll
        reactor raises "ValueError: file descriptor cannot be a negative
        integer (-1)" out of doRead, logged as "Unhandled Error" once per
        attempt.  HermesConnection.doRead only catches psycopg2.Error.
        """
        log = capture_log(self)
        port = reactor.listenTCP(0, protocol.Factory.forProtocol(_DropOnStartup),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        dsn = f"host=127.0.0.1 port={port.getHost().port} user=postgres dbname=postgres"
        client, processor, app = self.start_client(None, "dropped", client_dsn=dsn,
                                                   listener_dsn=dsn)
        yield sleep(1.5)
        self.assert_unreachable(client, log, "server closed the connection unexpectedly")

    @defer.inlineCallbacks
    def test_connect_raising_synchronously_does_not_wedge_connector(self):
        """
        A connection attempt whose start raises at once (as txpostgres does
        when the epoll reactor still holds a stale registration of a
        socket number libpq closed and reused: "FileNotFoundError: [Errno
        2]" from epoll.modify, seen during -m immediate restarts) must fail
        that attempt only: the next connect() connects.

        (It wedged the connector once: the exception escaped after the
        waiter was queued and the timeout timer started, so every later
        connect() waited for ever.)
        """
        cluster = shared_primary()
        real = HermesConnection.connect
        calls = []

        def flaky(conn, *args, **kwargs):
            calls.append(1)
            if len(calls) == 1:
                raise FileNotFoundError(2, "No such file or directory")
            return real(conn, *args, **kwargs)

        self.patch(HermesConnection, "connect", flaky)
        connector = PostgresConnector(cluster.dsn(), application_name="hermes-faults-wedge",
                                      connect_timeout=1.0)
        self.addCleanup(connector.disconnect)
        error = yield self.assertFailure(connector.connect(), ConnectFailedError)
        self.assertIn("No such file or directory", str(error))
        second = connector.connect()
        yield sleep(2.0)  # twice connect_timeout
        self.assertTrue(second.called, "the connector is wedged: connect() never fires")
        conn = yield second
        rows = yield conn.runQuery("SELECT 1")
        self.assertEqual(rows[0][0], 1)
        self.assertEqual(len(calls), 2)
