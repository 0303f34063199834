"""
The Client and its listener in memory: fake connections (tests/support/fakes)
and a L{task.Clock}, so every order of answers, losses and file events can be
played exactly: role flapping, overlapping checks, file-event bursts while
unreachable, back-to-back losses, components added after start, and a
multi-host DSN whose primary moves.
"""

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import LogLevel, formatEvent
from twisted.trial import unittest

from hermes_tx.client import Client
from hermes_tx.exceptions import ConnectionLostError
from hermes_tx.postgres.hosts import HostEntry
from hermes_tx.listeners import PostgresNotificationListener
from tests.support.fakes import FakeHosts, FakeListenConnector, FakeRoleConnector
from tests.support.shared import Collector, capture_log

DOWN = ConnectionLostError("Connection refused")


def client_lines(events, level=None):
    return [
        formatEvent(e) for e in events
        if e.get("log_namespace", "").startswith("hermes_tx")
        and (level is None or e.get("log_level") == level)
    ]


class _Memory:
    def make(self, dsn="host=db port=5432", role_answer="primary", hosts=None, collector=None,
             **kwargs):
        """
        A started Client on fakes: a listener on channel C{c} with a
        L{FakeListenConnector}, a L{Collector} (or C{collector}).

        @return: C{(client, listen_connector, collector)}.
        """
        self.clock = task.Clock()
        if hosts is None:
            self.role = FakeRoleConnector(role_answer)
            kwargs["connector"] = self.role
        else:
            kwargs["connector_factory"] = hosts
        client = Client(dsn, clock=self.clock, role_check_interval=1.0, **kwargs)
        entries = [p.entry for p in client.probes]
        listen = FakeListenConnector(entries)
        listener = PostgresNotificationListener(listen, "c", clock=self.clock,
                                                liveness_timeout=None)
        collector = collector or Collector()
        collector.clock = self.clock
        client.add_listener(listener)
        client.add_processor(collector)
        self.log = capture_log(self)
        client.startService()
        self.addCleanup(lambda: client.stopService() if client.running else None)
        return client, listen, collector


class UnansweredCheckTests(_Memory, unittest.TestCase):
    def test_one_check_without_an_answer_stops_nothing(self):
        """
        One role check that finds no host (a check timing out on a busy
        machine) is no change of role: the components keep running, the
        role stays primary and nothing is logged as a role change; two in
        a row stop them.
        """
        client, listen, collector = self.make()
        self.role.answer = DOWN
        self.clock.advance(1.0)
        self.assertEqual(client.role, "primary")
        self.assertTrue(client.listener.running and client.processor.running)
        self.role.answer = "primary"
        self.clock.advance(1.0)
        self.assertEqual(collector.kinds(), ["start"])
        self.assertEqual(client_lines(self.log, LogLevel.info).count("role: primary -> unknown"), 0)
        self.role.answer = DOWN
        self.clock.advance(1.0)
        self.assertTrue(client.processor.running)
        self.clock.advance(0.25)  # the next check comes within failover_interval
        self.assertEqual(client.role, "unknown")
        self.assertFalse(client.listener.running or client.processor.running)


class RoleFlappingTests(_Memory, unittest.TestCase):
    def test_primary_standby_primary(self):
        """
        Components run on a primary, stop on a standby, start again on a
        primary with a resync; each role change is one line.
        """
        client, listen, collector = self.make()
        self.assertEqual(client.role, "primary")
        self.assertEqual(collector.kinds(), ["start"])
        listen.current.deliver("a")
        self.assertEqual(collector.notifications(), ["a"])
        self.role.answer = "standby"
        self.clock.advance(1.0)
        self.assertEqual(client.role, "standby")
        self.assertFalse(client.listener.running)
        self.assertFalse(collector.running)
        self.assertFalse(listen.current.is_open)
        self.role.answer = "primary"
        self.clock.advance(1.0)
        self.assertEqual(collector.kinds(), ["start", "notification", "resync"])
        self.assertEqual(client_lines(self.log, LogLevel.info).count("role: primary -> standby"), 1)
        self.assertEqual(client_lines(self.log, LogLevel.info).count("role: standby -> primary"), 1)

    def test_flapping_every_check(self):
        """
        A role that flips at every check: never two runs of the listener at
        once, one resync per return, no timer left after stop.
        """
        client, listen, collector = self.make()
        for i in range(10):
            self.role.answer = "standby" if i % 2 == 0 else "primary"
            self.clock.advance(1.0)
            open_conns = [c for c in listen.connections if c.is_open]
            self.assertLessEqual(len(open_conns), 1)
        self.assertEqual(collector.kinds(), ["start"] + ["resync"] * 5)
        self.successResultOf(client.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])


class FailoverModeTests(_Memory, unittest.TestCase):
    def test_look_often_while_a_promotion_is_due(self):
        """
        For a minute after the primary was last seen, a standby is asked
        every 0.25 s (a promotion is coming); then every role_check_interval
        again.  A standby that never was primary is asked every interval.
        """
        client, listen, collector = self.make()
        self.role.answer = "standby"
        self.clock.advance(1.0)  # the periodic check finds a standby
        checks = self.role.checks
        self.clock.pump([0.125] * 8)
        self.assertEqual(self.role.checks - checks, 4)
        self.clock.pump([1.0] * 60)
        checks = self.role.checks
        self.clock.pump([0.25] * 12)
        self.assertEqual(self.role.checks - checks, 3)

    def test_never_primary(self):
        client, listen, collector = self.make(role_answer="standby")
        checks = self.role.checks
        self.clock.pump([0.25] * 12)
        self.assertEqual(self.role.checks - checks, 3)


class OverlappingCheckTests(_Memory, unittest.TestCase):
    def test_asking_during_a_check(self):
        """
        execute_role_based_procedure during a check returns the role of the
        follow-up check, which begins after the one in flight (item 12).
        """
        client, listen, collector = self.make(role_answer=None)
        first = self.role.pending.pop()  # the start-up check
        asked = client.execute_role_based_procedure()
        first.callback(False)  # standby, as of before the question
        self.assertNoResult(asked)
        self.assertEqual(client.role, "standby")
        self.assertEqual(self.role.checks, 2)  # the follow-up began
        self.role.pending.pop().callback(True)
        self.assertEqual(self.successResultOf(asked), "primary")
        self.assertEqual(client.role, "primary")
        self.assertEqual(collector.kinds(), ["start"])


class FileEventTests(_Memory, unittest.TestCase):
    def test_burst_while_unreachable(self):
        """
        Failover-file events while the server is down: no 10 ms loop of
        failing checks, one warning, and the scheduled backoff is not
        stretched: the server coming back is found within max_backoff.
        """
        client, listen, collector = self.make(role_answer=DOWN)
        for _ in range(50):
            client._failover_file_changed("deleted", "standby.signal")
            self.clock.advance(0.01)
        self.assertLess(self.role.checks, 60)
        self.assertEqual(client.monitor.backoff.attempts, 1)
        warnings = client_lines(self.log, LogLevel.warn)
        self.assertEqual(len(warnings), 1, warnings)
        self.clock.advance(30)
        checks = self.role.checks
        self.role.answer = "primary"
        self.clock.advance(2.0)
        self.assertEqual(client.role, "primary")
        self.assertGreater(self.role.checks, checks)
        self.assertEqual(collector.kinds(), ["start"])

    def test_window_until_the_role_changes(self):
        """
        After a failover-file event on a reachable standby the Client checks
        every 10 ms until the role changes (here after 50 ms), then goes
        back to its interval.
        """
        client, listen, collector = self.make(role_answer="standby")
        client._failover_file_changed("deleted", "standby.signal")
        for _ in range(5):
            self.clock.advance(0.01)
        self.assertEqual(self.role.checks, 7)  # start, the event, 5 re-checks
        self.role.answer = "primary"
        self.clock.advance(0.01)
        self.assertEqual(client.role, "primary")
        checks = self.role.checks
        self.clock.advance(0.5)
        self.assertEqual(self.role.checks, checks)


class BackToBackLossTests(_Memory, unittest.TestCase):
    def test_each_loss_reconnects_after_the_first_delay(self):
        """
        A connection that was LISTENing is a success: ten losses in a row
        each reconnect after about 0.1 s (not 0.1, 0.2, 0.4 ...), each with
        one resync, and each asks the Client for a role check.
        """
        client, listen, collector = self.make()
        for i in range(10):
            checks = self.role.checks
            listen.current.lose()
            self.assertEqual(self.role.checks, checks + 1)  # checked at once
            self.assertEqual(client.listener.state, "waiting")
            self.clock.advance(0.09)
            self.assertEqual(client.listener.state, "waiting")
            self.clock.advance(0.01)
            self.assertEqual(client.listener.state, "listening", i)
        self.assertEqual(collector.kinds(), ["start"] + ["resync"] * 10)
        self.assertEqual(client.listener.reconnects, 10)

    def test_failed_reconnects_back_off(self):
        """
        Reconnects that fail before LISTENing double their delay; the first
        success resets it.
        """
        client, listen, collector = self.make()
        listen.refuse = DOWN
        listen.current.lose()
        delays = []
        for _ in range(4):
            call = client.listener.supervisor._core.timer
            delays.append(round(call.getTime() - self.clock.seconds(), 3))
            self.clock.advance(call.getTime() - self.clock.seconds())
        for got, want in zip(delays, [0.1, 0.2, 0.4, 0.8]):
            self.assertTrue(0.9 * want - 0.001 <= got <= want + 0.001, delays)
        listen.refuse = None
        self.clock.advance(1.6)
        self.assertEqual(client.listener.state, "listening")
        listen.current.lose()
        self.clock.advance(0.1)
        self.assertEqual(client.listener.state, "listening")


class AddedAfterStartTests(_Memory, unittest.TestCase):
    def test_child_added_on_a_standby_waits(self):
        """
        A service added to a running Client on a standby does not start
        until the server is the primary (item 6).
        """
        client, listen, collector = self.make(role_answer="standby")
        extra = service.Service()
        client.addService(extra)
        self.assertFalse(extra.running)
        self.role.answer = "primary"
        self.clock.advance(1.0)
        self.assertTrue(extra.running)
        self.role.answer = "standby"
        self.clock.advance(1.0)
        self.assertFalse(extra.running)

    def test_child_added_on_a_primary_starts(self):
        client, listen, collector = self.make()
        extra = service.Service()
        client.addService(extra)
        self.assertTrue(extra.running)


class _Holding(Collector):
    """A Collector whose notifications wait for C{self.hold} (a Deferred)."""

    hold = None

    def execute(self, event):
        Collector.execute(self, event)
        if event.kind == "notification" and self.hold is not None:
            return self.hold
        return None


class StopOrderTests(_Memory, unittest.TestCase):
    def make_holding(self):
        processor = _Holding()
        processor.shutdown_timeout = 60
        client, listen, _ = self.make(collector=processor)
        processor.hold = defer.Deferred()
        listen.current.deliver("slow")
        self.clock.advance(0)
        self.assertEqual(processor.notifications(), ["slow"])
        return client, client.listener, processor

    def test_sources_wait_for_a_processor_still_stopping(self):
        """
        Two checks on a standby while the processor finishes its event:
        the listener stays until the processor has stopped (its event's
        outcome may still need a source's connection).
        """
        client, listener, processor = self.make_holding()
        self.role.answer = "standby"
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.assertFalse(processor.running)
        self.assertTrue(listener.running)
        processor.hold.callback(None)
        self.clock.advance(0)
        self.assertFalse(listener.running)

    def test_a_stop_overtaken_by_a_start_leaves_the_components_running(self):
        """
        The server is a standby for one check while the processor finishes
        its event, then primary again: once the event is done, the listener
        and the processor run.
        """
        client, listener, processor = self.make_holding()
        self.role.answer = "standby"
        self.clock.advance(1.0)
        self.assertFalse(processor.running)
        self.role.answer = "primary"
        self.clock.advance(1.0)
        self.assertTrue(processor.running)
        processor.hold.callback(None)
        self.clock.advance(0)
        self.assertTrue(listener.running)
        self.assertTrue(processor.running)


class MultiHostTests(_Memory, unittest.TestCase):
    DSN = "host=a,b,c port=1,2,3"

    def test_standby_listed_first(self):
        """
        The primary is found whatever the order; the listener connects to
        that host alone.
        """
        hosts = FakeHosts(p1="standby", p2=DOWN, p3="primary")
        client, listen, collector = self.make(self.DSN, hosts=hosts)
        self.assertEqual(client.role, "primary")
        self.assertEqual(client.primary_host, HostEntry("c", "", "3"))
        self.assertEqual(listen.current.host, HostEntry("c", "", "3"))
        self.assertEqual(collector.kinds(), ["start"])

    def test_primary_moves(self):
        """
        The primary moves from a to b: the listener follows with a resync;
        while no host is primary the components are stopped and the hosts
        keep being asked every interval.
        """
        hosts = FakeHosts(p1="primary", p2="standby", p3="standby")
        client, listen, collector = self.make(self.DSN, hosts=hosts)
        self.assertEqual(listen.current.host.port, "1")
        hosts["1"].answer = DOWN
        listen.current.lose()
        self.assertEqual(client.role, "standby")
        self.assertFalse(client.listener.running)
        for _ in range(3):
            self.clock.advance(1.0)  # still asking, every interval
        self.assertGreaterEqual(hosts["2"].checks, 4)
        hosts["2"].answer = "primary"
        self.clock.advance(1.0)
        self.assertEqual(client.primary_host.port, "2")
        self.assertEqual(listen.current.host.port, "2")
        self.assertEqual(collector.kinds(), ["start", "resync"])

    def test_parked_on_standby_finds_the_old_primary_again(self):
        """
        Issue 8 item 2: the primary crashes and comes back as primary; the
        Client, meanwhile on the standby, goes back to it.
        """
        hosts = FakeHosts(p1="primary", p2="standby", p3="standby")
        client, listen, collector = self.make(self.DSN, hosts=hosts)
        hosts["1"].answer = DOWN
        listen.current.lose()
        self.clock.advance(3.5)
        self.assertEqual(client.role, "standby")
        hosts["1"].answer = "primary"
        self.clock.advance(1.0)
        self.assertEqual(client.role, "primary")
        self.assertEqual(listen.current.host.port, "1")
        self.assertEqual(collector.kinds(), ["start", "resync"])

    def test_split_brain_keeps_the_current_primary(self):
        """
        Two hosts claiming to be the primary: the Client stays with the one
        it follows.
        """
        hosts = FakeHosts(p1="standby", p2="primary", p3="standby")
        client, listen, collector = self.make(self.DSN, hosts=hosts)
        hosts["1"].answer = "primary"
        for _ in range(5):
            self.clock.advance(1.0)
        self.assertEqual(client.primary_host.port, "2")
        self.assertEqual(collector.kinds(), ["start"])

    def test_unreachable_host_is_one_line(self):
        hosts = FakeHosts(p1="primary", p2=DOWN, p3="standby")
        client, listen, collector = self.make(self.DSN, hosts=hosts)
        for _ in range(10):
            self.clock.advance(1.0)
        warnings = client_lines(self.log, LogLevel.warn)
        self.assertEqual(warnings, ["role check failed: b:2: ConnectionLostError: Connection refused"])
        hosts["2"].answer = "standby"
        self.clock.advance(1.0)
        self.assertIn("b:2 answers again (standby)", client_lines(self.log, LogLevel.info))


class ListenerRunTests(_Memory, unittest.TestCase):
    def test_standby_connection_is_never_listened_on(self):
        """
        The listener's own connection lands on a standby (the role check
        said primary a moment ago): no LISTEN, the run is lost and retried.
        """
        client, listen, collector = self.make()
        listen.in_recovery = True
        listen.current.lose()
        self.clock.advance(0.1)
        self.assertFalse(any("LISTEN" in q for q in listen.current.queries))
        self.assertEqual(client.listener.state, "waiting")

    def test_liveness_probe_declares_a_hung_connection_dead(self):
        clock = task.Clock()
        listen = FakeListenConnector()
        listener = PostgresNotificationListener(listen, "c", clock=clock, liveness_timeout=2.0,
                                                liveness_interval=1.0)
        listener.startService()
        self.addCleanup(listener.stopService)
        listen.current.hung = True
        clock.advance(1.0)  # probe sent
        clock.advance(2.0)  # unanswered
        self.assertEqual(listener.state, "waiting")
        clock.advance(0.1)
        self.assertEqual(listener.state, "listening")
        self.assertEqual([e.kind for e in listener.notif_queue.pending], ["start", "resync"])

    def test_backpressure_pauses_and_resumes(self):
        clock = task.Clock()
        listen = FakeListenConnector()
        from hermes_tx.runtime.queue import EventQueue

        queue = EventQueue(maxsize=4)
        listener = PostgresNotificationListener(listen, "c", notif_queue=queue, clock=clock,
                                                liveness_timeout=None)
        listener.startService()
        self.addCleanup(listener.stopService)
        listen.current.deliver("1", "2", "3", "4")
        self.assertTrue(listen.current.paused)
        queue.take(3)
        self.assertFalse(listen.current.paused)
        self.assertEqual(listener.pauses, 1)

    def test_undecodable_payloads_cannot_flood_the_log(self):
        """
        Anyone who may NOTIFY can send payloads that are not JSON: every one
        is delivered with decode_error, but the log gets one line, then at
        most one every 10 s with the count of the others.
        """
        clock = task.Clock()
        listen = FakeListenConnector()
        listener = PostgresNotificationListener(listen, "c", clock=clock, liveness_timeout=None,
                                                payload_format="json")
        log = capture_log(self)
        listener.startService()
        self.addCleanup(listener.stopService)
        for _ in range(1000):
            listen.current.deliver("not json{")
            clock.advance(0.001)
        clock.advance(10)
        listen.current.deliver("not json{")
        events = [e for e in listener.notif_queue.pending if e.kind == "notification"]
        self.assertEqual(len(events), 1001)
        self.assertTrue(all(e.decode_error for e in events))
        lines = client_lines(log, LogLevel.warn)
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("(999 more like it left out)", lines[1])

    def test_stop_while_connecting(self):
        clock = task.Clock()
        listen = FakeListenConnector()
        listen.hold = True
        listener = PostgresNotificationListener(listen, "c", clock=clock, liveness_timeout=None)
        listener.startService()
        self.assertEqual(listener.state, "connecting")
        stopped = listener.stopService()
        self.successResultOf(stopped)
        listen.release()  # the connection arrives after the stop
        self.assertEqual(listener.state, "stopped")
        self.assertEqual(list(listener.notif_queue.pending), [])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_terminate_strategy(self):
        class Fatal:
            def handle_exception(self, error):
                return True, "TERMINATE"

        clock = task.Clock()
        listen = FakeListenConnector()
        queue = defer.DeferredQueue()
        listener = PostgresNotificationListener(listen, "c", clock=clock, liveness_timeout=None,
                                                error_strategy=Fatal(), error_queue=queue)
        listener.startService()
        listen.current.lose()
        report = self.successResultOf(queue.get())
        self.assertEqual(report.action, "TERMINATE")
        self.assertFalse(listener.is_alive())
        self.assertEqual(listener.state, "stopped")
        self.assertEqual(clock.getDelayedCalls(), [])


class OneQueueTests(unittest.TestCase):
    """
    Every source and the processor share one queue: a component bringing a
    queue nobody else reads is a configuration error, not silence.
    """

    def client(self):
        return Client("host=db", clock=task.Clock(), connector=FakeRoleConnector())

    def listener(self, queue=None):
        return PostgresNotificationListener(FakeListenConnector(), "c", notif_queue=queue,
                                            liveness_timeout=None)

    def test_a_first_source_brings_the_queue(self):
        from hermes_tx.runtime.queue import EventQueue

        client = self.client()
        processor = Collector()
        client.add_processor(processor)
        mine = EventQueue()
        client.add_listener(self.listener(mine))
        self.assertIs(client.notification_queue, mine)
        self.assertIs(processor.notification_pipe, mine)

    def test_a_second_queue_is_refused(self):
        from hermes_tx.exceptions import InvalidConfigurationException
        from hermes_tx.runtime.queue import EventQueue

        client = self.client()
        client.add_listener(self.listener())
        consumer = PostgresNotificationListener(FakeListenConnector(), "d", notif_queue=EventQueue(),
                                                liveness_timeout=None)
        error = self.assertRaises(InvalidConfigurationException, client.add_outbox, consumer)
        self.assertIn("must share one queue", str(error))
        processor = Collector()
        processor.notification_pipe = EventQueue()
        error = self.assertRaises(InvalidConfigurationException, client.add_processor, processor)
        self.assertIn("this processor brings its own queue", str(error))
