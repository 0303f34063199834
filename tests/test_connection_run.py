"""
Tests for L{hermes_tx.sources.run.ConnectionRun}'s connection machine, in
memory: a source whose runs record what the machine asks of them, a fake
connector and L{ScriptedConnection}, and a L{task.Clock} for the query
deadlines.  Connecting, the standby refusal and how the error strategy
classifies it, a stop or a termination in each state, draining, a missed
query deadline, and the state names as callbacks fired by transitions read
them.
"""

import psycopg2
from twisted.internet import defer, task
from twisted.logger import LogLevel, formatEvent
from twisted.trial import unittest

from hermes_tx import strategies
from hermes_tx.exceptions import ConnectionLostError, StandbyServerError
from hermes_tx.runtime.supervisor import LOST, STOPPED, TERMINATED, ComponentError
from hermes_tx.sources.component import ConnectedComponent
from hermes_tx.sources.run import ConnectionRun
from tests.support.fakes import FakeListenConnector, Notify, ScriptedConnection
from tests.support.shared import capture_log


class RecordingRun(ConnectionRun):
    """
    Records what the connection machine asks of it, with the state the run
    says at that moment; its drain waits for C{source.drain_with} (a
    Deferred, or C{None}: done at once).
    """

    purpose = "testing"
    working_state = "testing"

    def __init__(self, source):
        ConnectionRun.__init__(self, source)
        self.events = []
        self.outcomes = []

    def _note(self, what, *more):
        self.events.append((what, self.state, self.is_working) + more)

    def listen_statement(self):
        return "LISTEN test"

    def start_working(self, session):
        self._note("working", session is self.session)
        self.on_ready()

    def stop_working(self):
        self._note("closing")

    def drain(self):
        self._note("drain")
        return self.component.drain_with

    def notifies(self, batch):
        self._note("notifies", [n.payload for n in batch])

    def ended(self, outcome):
        self._note("ended")
        self.outcomes.append(outcome)
        ConnectionRun.ended(self, outcome)


class Source(ConnectedComponent):
    drain_with = None

    def __init__(self, connector, clock, liveness_timeout=10.0, **kwargs):
        ConnectedComponent.__init__(self, connector, clock=clock, **kwargs)
        self.liveness_timeout = liveness_timeout
        self.runs = []

    def new_run(self):
        run = RecordingRun(self)
        self.runs.append(run)
        return run


class Seen:
    """
    A supervisor observer noting the source's state when told.
    """

    def __init__(self):
        self.calls = []

    def run_ready(self, component):
        self.calls.append(("ready", component.state))

    def run_lost(self, component, error, delay):
        self.calls.append(("lost", component.state, error))

    def run_terminated(self, component, error):
        self.calls.append(("terminated", component.state, error))


class Fatal(strategies.AbstractErrorStrategy):
    def handle_exception(self, error):
        return True, strategies.TERMINATE


class _Case(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.connector = FakeListenConnector(connection_factory=ScriptedConnection)
        self.log = capture_log(self)
        self.seen = Seen()

    def start(self, hold=False, **kwargs):
        self.connector.hold = hold
        self.source = Source(self.connector, self.clock, **kwargs)
        self.source.supervisor.add_observer(self.seen)
        self.source.startService()
        self.addCleanup(self.cleanup)
        return self.source.runs[-1]

    def cleanup(self):
        if self.source.running:
            self.source.stopService()

    @property
    def conn(self):
        return self.connector.current

    def working(self, **kwargs):
        run = self.start(**kwargs)
        self.assertEqual(run.events, [("working", "testing", True, True)])
        self.assertEqual(self.seen.calls, [("ready", "testing")])
        return run

    def assertEnded(self, run, kind, error=None):
        """
        The run reported once, with C{kind}; its connection was given back
        and no query of it waits.
        """
        self.assertEqual([o.kind for o in run.outcomes], [kind])
        if error is not None:
            self.assertIs(run.outcomes[0].error, error)
        self.assertEqual(run.state, "ended")
        self.assertFalse(run.is_working)
        self.assertIsNone(self.connector.connection)
        if run.session is not None:
            self.assertEqual(run.session.in_flight, 0)
        return run.outcomes[0]

    def warnings(self):
        return [formatEvent(e) for e in self.log if e.get("log_level") == LogLevel.warn]


class ConnectTests(_Case):
    def test_connect_check_listen_work(self):
        """
        Connect, ask the role on that connection, LISTEN, then work: the
        notification sink is set before LISTEN.
        """
        run = self.working()
        self.assertEqual(self.conn.queries, ["SELECT pg_is_in_recovery()", "LISTEN test"])
        self.assertEqual(self.conn.notify_sink, run.notified)
        self.assertEqual(run.outcomes, [])
        self.assertEqual(self.source.state, "testing")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_standby_refused(self):
        """
        A standby is never LISTENed on: the run ends lost (the default
        strategy retries after a backoff), its connection given back.
        """
        self.connector.in_recovery = True
        run = self.start()
        self.assertEqual(self.conn.queries, ["SELECT pg_is_in_recovery()"])
        outcome = self.assertEnded(run, LOST)
        self.assertIsInstance(outcome.error, StandbyServerError)
        self.assertEqual(str(outcome.error), "the server is a standby; not testing there")
        self.assertEqual([e[0] for e in run.events], ["ended"])
        self.assertEqual(self.source.state, "waiting")
        self.assertEqual(self.seen.calls, [("lost", "waiting", outcome.error)])
        [line] = self.warnings()
        self.assertRegex(line, r"^Source: StandbyServerError: the server is a standby; "
                               r"not testing there; reconnecting in 0\.(09|10) s$")

    def test_standby_terminates_when_the_strategy_says(self):
        self.connector.in_recovery = True
        queue = defer.DeferredQueue()
        run = self.start(error_strategy=Fatal(), error_queue=queue)
        outcome = self.assertEnded(run, TERMINATED)
        self.assertIsInstance(outcome.error, StandbyServerError)
        self.assertEqual(outcome.report, ComponentError(True, strategies.TERMINATE, self.source,
                                                        outcome.error))
        self.assertIs(self.successResultOf(queue.get()), outcome.report)
        self.assertEqual(self.source.state, "stopped")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connect_fails(self):
        error = psycopg2.OperationalError("could not connect to server: Connection refused")
        self.connector.refuse = error
        run = self.start()
        self.assertEnded(run, LOST, error)
        self.assertEqual(self.connector.disconnects, 1)
        self.assertEqual([e[0] for e in run.events], ["ended"])
        # The next run after the backoff, which grows while none works.
        self.clock.advance(0.1)
        self.assertEqual(len(self.source.runs), 2)
        self.clock.advance(0.1)
        self.assertEqual(len(self.source.runs), 2)
        self.clock.advance(0.1)
        self.assertEqual(len(self.source.runs), 3)


class PreparingTests(_Case):
    """
    The role check and LISTEN wait for the test.
    """

    def setUp(self):
        _Case.setUp(self)
        self.connector.connection_factory = (
            lambda **kw: ScriptedConnection(prepare_at_once=False, **kw))

    def test_prepared(self):
        run = self.start()
        self.assertEqual(run.state, "connecting")
        self.conn.one().answer([(False,)])
        self.assertEqual(run.state, "connecting")
        self.assertEqual(self.conn.one().statement, "LISTEN test")
        self.conn.one().answer()
        self.assertEqual(run.state, "testing")
        self.assertEqual(self.seen.calls, [("ready", "testing")])

    def test_role_check_refused(self):
        run = self.start()
        error = psycopg2.ProgrammingError("permission denied for function pg_is_in_recovery")
        self.conn.one().fail(error)
        self.assertEnded(run, LOST, error)
        self.assertEqual(self.conn.queries, ["SELECT pg_is_in_recovery()"])

    def test_listen_refused_terminates_when_the_strategy_says(self):
        run = self.start(error_strategy=Fatal())
        self.conn.one().answer([(False,)])
        error = psycopg2.errors.ReadOnlySqlTransaction("cannot execute LISTEN during recovery")
        self.conn.one().fail(error)
        self.assertEnded(run, TERMINATED, error)

    def test_deadline_while_preparing(self):
        run = self.start()
        self.clock.advance(10)
        outcome = self.assertEnded(run, LOST)
        self.assertEqual(str(outcome.error), "no answer from the server within 10 s")

    def test_lost_while_preparing(self):
        run = self.start()
        error = ConnectionLostError("server closed the connection unexpectedly")
        self.conn.lose(error)
        self.assertEnded(run, LOST, error)

    def test_notifications_while_preparing(self):
        """
        What arrives with LISTEN's reply reaches the run (the sink is set
        first) and counts as a sign of life.
        """
        run = self.start()
        self.conn.one().answer([(False,)])
        self.clock.advance(3)
        self.conn.deliver("early")
        self.assertEqual(run.events, [("notifies", "connecting", False, ["early"])])
        self.assertEqual(run.session.last_activity, 3)

    def test_stop(self):
        """
        A stop while the role check waits: closed at once, no LISTEN, and
        the late answer changes nothing.
        """
        run = self.start()
        query = self.conn.one()
        stopped = self.source.stopService()
        self.successResultOf(stopped)
        self.assertEnded(run, STOPPED)
        self.assertEqual([e[0] for e in run.events], ["ended"])
        query.answer([(False,)])
        self.assertEqual(self.conn.queries, ["SELECT pg_is_in_recovery()"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.source.state, "stopped")

    def test_terminate(self):
        queue = defer.DeferredQueue()
        run = self.start(error_queue=queue)
        self.conn.one().answer([(False,)])
        report = ComponentError(False, strategies.TERMINATE, self.source, ValueError("no"))
        self.source.terminate(report)
        self.assertIs(self.assertEnded(run, TERMINATED).report, report)
        self.assertIs(self.successResultOf(queue.get()), report)
        self.conn.asked[-1].answer()  # LISTEN's late reply
        self.assertEqual(len(run.outcomes), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ConnectingTests(_Case):
    def test_stop(self):
        run = self.start(hold=True)
        self.assertEqual((run.state, self.source.state), ("connecting", "connecting"))
        self.successResultOf(self.source.stopService())
        self.assertEnded(run, STOPPED)
        self.connector.release()  # the connection arrives after the stop
        self.assertEqual(run.outcomes[0].kind, STOPPED)
        self.assertEqual(self.conn.queries, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_terminate(self):
        run = self.start(hold=True)
        report = ComponentError(False, strategies.TERMINATE, self.source, ValueError("no"))
        self.source.terminate(report)
        self.assertIs(self.assertEnded(run, TERMINATED).report, report)
        self.assertEqual(self.source.state, "stopped")


class WorkingTests(_Case):
    def test_stop_drains_first(self):
        """
        A stop while working lets the run drain (state "stopping"), then
        closes the connection: the working state ends (state "ended").
        """
        run = self.working()
        self.source.drain_with = drained = defer.Deferred()
        stopped = self.source.stopService()
        self.assertEqual(run.events[-1], ("drain", "stopping", False))
        self.assertEqual((run.state, self.source.state), ("stopping", "stopping"))
        self.assertNoResult(stopped)
        self.assertIsNotNone(self.connector.connection)
        drained.callback(None)
        self.successResultOf(stopped)
        self.assertEqual([e[:3] for e in run.events[1:]], [
            ("drain", "stopping", False), ("closing", "ended", False), ("ended", "ended", False)])
        self.assertEnded(run, STOPPED)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_drain_at_once(self):
        run = self.working()
        self.successResultOf(self.source.stopService())
        self.assertEqual([e[0] for e in run.events], ["working", "drain", "closing", "ended"])
        self.assertEnded(run, STOPPED)

    def test_drain_failing_still_stops(self):
        run = self.working()
        self.source.drain_with = defer.fail(ValueError("drain bug"))
        self.successResultOf(self.source.stopService())
        self.assertEnded(run, STOPPED)
        [failure] = [e for e in self.log if "log_failure" in e]
        self.assertEqual(formatEvent(failure), "Source: finishing before the stop failed")
        self.assertIsInstance(failure["log_failure"].value, ValueError)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_lost_while_draining_still_stops(self):
        """
        The connection goes while draining: the stop ends stopped (not
        lost: no retry), the working state ends once, and the drain's late
        end changes nothing.
        """
        run = self.working()
        self.source.drain_with = drained = defer.Deferred()
        stopped = self.source.stopService()
        self.conn.lose()
        self.successResultOf(stopped)
        self.assertEnded(run, STOPPED)
        drained.callback(None)
        self.assertEqual([e[0] for e in run.events], ["working", "drain", "closing", "ended"])
        self.assertEqual(self.seen.calls, [("ready", "testing")])

    def test_terminate_while_draining_changes_nothing(self):
        run = self.working()
        self.source.drain_with = drained = defer.Deferred()
        stopped = self.source.stopService()
        self.source.terminate(ComponentError(False, strategies.TERMINATE, self.source,
                                             ValueError("no")))
        self.assertEqual(run.outcomes, [])
        drained.callback(None)
        self.successResultOf(stopped)
        self.assertEnded(run, STOPPED)

    def test_terminate(self):
        run = self.working()
        report = ComponentError(False, strategies.TERMINATE, self.source, ValueError("no"))
        self.source.terminate(report)
        self.assertEqual([e[0] for e in run.events], ["working", "closing", "ended"])
        self.assertIs(self.assertEnded(run, TERMINATED).report, report)

    def test_lost(self):
        run = self.working()
        error = ConnectionLostError("server closed the connection unexpectedly")
        self.conn.lose(error)
        self.assertEqual([e[:3] for e in run.events[1:]], [
            ("closing", "ended", False), ("ended", "ended", False)])
        self.assertEnded(run, LOST, error)
        self.assertEqual(self.seen.calls[-1], ("lost", "waiting", error))
        self.clock.advance(0.1)  # the backoff was reset: the run had worked
        self.assertEqual(self.source.runs[-1].state, "testing")

    def test_query_deadline_missed(self):
        """
        A query of the working run that gets no answer within the
        liveness timeout: the connection is dead, the run ends lost.
        """
        run = self.working(liveness_timeout=5.0)
        d = run.session.query("SELECT slow()")
        self.clock.advance(4.9)
        self.assertEqual(run.outcomes, [])
        self.clock.advance(0.1)
        error = self.failureResultOf(d, ConnectionLostError).value
        outcome = self.assertEnded(run, LOST, error)
        self.assertEqual(str(outcome.error), "no answer from the server within 5 s")
        self.assertEqual([e[0] for e in run.events], ["working", "closing", "ended"])

    def test_no_deadline_without_a_liveness_timeout(self):
        run = self.working(liveness_timeout=None)
        d = run.session.query("SELECT slow()")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertNoResult(d)
        self.successResultOf(self.source.stopService())
        self.failureResultOf(d, ConnectionLostError)

    def test_the_subclass_loses_it(self):
        """
        lose() with a statement's error: the strategy decides (lost by
        default; terminated when it says so).
        """
        run = self.working()
        error = psycopg2.errors.InsufficientPrivilege("permission denied for table outbox")
        run.lose(error)
        self.assertEnded(run, LOST, error)

    def test_the_subclass_loses_it_for_good(self):
        run = self.working(error_strategy=Fatal())
        error = psycopg2.errors.InsufficientPrivilege("permission denied for table outbox")
        run.lose(error)
        self.assertEnded(run, TERMINATED, error)
        self.assertEqual(self.source.state, "stopped")

    def test_notifications(self):
        run = self.working()
        self.clock.advance(2)
        self.conn.notify_sink([Notify("test", "a", 1), Notify("test", "b", 1)])
        self.assertEqual(run.events[-1], ("notifies", "testing", True, ["a", "b"]))
        self.assertEqual(run.session.last_activity, 2)

    def test_late_inputs_change_nothing(self):
        run = self.working()
        self.successResultOf(self.source.stopService())
        run.lose(ConnectionLostError("late"))
        run.stop()
        self.conn.lose()
        self.assertEqual(len(run.outcomes), 1)
        self.assertEqual([e[0] for e in run.events], ["working", "drain", "closing", "ended"])


class ShutdownDeadlineTests(_Case):
    def test_drain_past_the_deadline(self):
        """
        A source with a shutdown_timeout whose drain outlasts it: reported
        stopped at the deadline with its connection closed then, so
        nothing of it touches the next run (the late drain's end does not
        close the next run's connection).
        """
        run = self.working()
        self.source.shutdown_timeout = 2.0
        self.source.drain_with = drained = defer.Deferred()
        old = self.conn
        stopped = self.source.stopService()
        self.clock.advance(2)
        self.successResultOf(stopped)
        self.assertEqual([o.kind for o in run.outcomes], [STOPPED])
        self.assertEqual((run.state, self.source.state), ("ended", "stopped"))
        self.assertFalse(old.is_open)
        # Reported first, closed right after.
        self.assertEqual([e[0] for e in run.events], ["working", "drain", "ended", "closing"])
        self.source.startService()
        new = self.connector.current
        self.assertIsNot(new, old)
        drained.callback(None)
        self.assertTrue(new.is_open)
        self.assertEqual(self.source.runs[-1].state, "testing")
        self.assertEqual(len(run.outcomes), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
