"""
Tests for L{hermes_tx.runtime.run.Run}'s state machine, in memory: a fake
component whose C{set_up} and C{tear_down} answer when the test says, a run
whose work ends when the test says, and a L{task.Clock} for the shutdown
deadline.  Every transition: set-up (at once, later, failing), a stop or a
termination while setting up, work that ends on its own, a stop while
working, the deadline in each state, inputs after the end.
"""

import psycopg2
from twisted.internet import defer, task
from twisted.logger import LogLevel, Logger, formatEvent
from twisted.trial import unittest

from hermes_tx import strategies
from hermes_tx.exceptions import ConnectionLostError
from hermes_tx.runtime.run import Run
from hermes_tx.runtime.supervisor import LOST, STOPPED, TERMINATED, ComponentError, Outcome


class FakeComponent:
    """
    What a run uses of a component.  C{set_up_with} and C{tear_down_with}
    say what those return: C{None} (done at once), a Deferred (done when it
    fires) or an exception (raised).
    """

    ident = "fake"

    def __init__(self, clock, shutdown_timeout=None):
        self.clock = clock
        self.shutdown_timeout = shutdown_timeout
        self.logged = []
        self.log = Logger(observer=self.logged.append)
        self.calls = []
        self.set_up_with = None
        self.tear_down_with = None

    def _answer(self, name, result):
        self.calls.append(name)
        if isinstance(result, BaseException):
            raise result
        return result

    def set_up(self):
        return self._answer("set_up", self.set_up_with)

    def tear_down(self):
        return self._answer("tear_down", self.tear_down_with)

    def lines(self, level=None):
        return [formatEvent(e) for e in self.logged if level is None or e["log_level"] == level]


class ScriptedRun(Run):
    """
    A run whose work is a name in the component's calls; it ends when the
    test calls L{work_ended} (or at once when asked to, if C{ends_at_once}).
    """

    ends_at_once = False

    def __init__(self, component):
        Run.__init__(self, component)
        self.outcomes = []
        self.on_end = self.outcomes.append

    def begin_work(self):
        self.component.calls.append("work")

    def end_work(self):
        self.component.calls.append("end_work")
        if self.ends_at_once:
            self.work_ended(Outcome(STOPPED))


def report(error=None):
    error = error or ValueError("for good")
    return ComponentError(False, strategies.TERMINATE, None, error)


class _RunCase(unittest.TestCase):
    timeout = None  # the component's shutdown_timeout

    def setUp(self):
        self.clock = task.Clock()
        self.component = FakeComponent(self.clock, self.timeout)
        self.run = ScriptedRun(self.component)
        self.ended = self.run.when_ended()

    @property
    def calls(self):
        return self.component.calls

    def assertEnded(self, kind, error=None):
        """
        The run reported once, with C{kind} (and C{error}), and left no
        timer behind.
        """
        self.assertEqual([o.kind for o in self.run.outcomes], [kind])
        if error is not None:
            self.assertIs(self.run.outcomes[0].error, error)
        self.assertIsNone(self.successResultOf(self.ended))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        return self.run.outcomes[0]

    def assertGoingOn(self):
        self.assertEqual(self.run.outcomes, [])
        self.assertNoResult(self.ended)

    def working(self):
        self.run.start()
        self.assertEqual(self.calls, ["set_up", "work"])


class SetUpTests(_RunCase):
    def test_at_once(self):
        self.run.start()
        self.assertEqual(self.calls, ["set_up", "work"])
        self.assertGoingOn()

    def test_later(self):
        self.component.set_up_with = d = defer.Deferred()
        self.run.start()
        self.assertEqual(self.calls, ["set_up"])
        d.callback(None)
        self.assertEqual(self.calls, ["set_up", "work"])
        self.assertGoingOn()

    def test_refused_is_one_line(self):
        """
        A database's refusal ends the run terminated, without tear_down,
        with one error line and no traceback.
        """
        error = psycopg2.OperationalError("FATAL:  no pg_hba.conf entry\nDETAIL: more")
        self.component.set_up_with = error
        self.run.start()
        outcome = self.assertEnded(TERMINATED, error)
        self.assertEqual(self.calls, ["set_up"])
        self.assertEqual(outcome.report, ComponentError(False, strategies.TERMINATE,
                                                        self.component, error))
        errors = [e for e in self.component.logged if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertNotIn("log_failure", errors[0])
        self.assertEqual(len(self.component.lines()[0].splitlines()), 1)

    def test_bug_has_its_traceback(self):
        error = KeyError("oops")
        self.component.set_up_with = error
        self.run.start()
        self.assertEnded(TERMINATED, error)
        [event] = self.component.logged
        self.assertIs(event["log_failure"].value, error)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 0)  # a log event, not an error

    def test_fails_later(self):
        self.component.set_up_with = d = defer.Deferred()
        self.run.start()
        error = ConnectionLostError("gone")
        d.errback(error)
        self.assertEnded(TERMINATED, error)
        self.assertEqual(self.calls, ["set_up"])


class EndDuringSetUpTests(_RunCase):
    def setUp(self):
        _RunCase.setUp(self)
        self.component.set_up_with = self.set_up = defer.Deferred()
        self.run.start()

    def test_stop(self):
        """
        A stop while set_up runs: no work; tear_down once set_up is done,
        then stopped.
        """
        self.run.stop()
        self.assertGoingOn()
        self.set_up.callback(None)
        self.assertEqual(self.calls, ["set_up", "tear_down"])
        self.assertEnded(STOPPED)

    def test_stop_then_set_up_fails(self):
        error = ConnectionLostError("gone")
        self.run.stop()
        self.set_up.errback(error)
        self.assertEqual(self.calls, ["set_up"])
        self.assertEnded(TERMINATED, error)

    def test_terminate(self):
        """
        A termination while set_up runs: no work; tear_down once set_up is
        done; reported with the termination's report.
        """
        ended = report()
        self.run.terminate(ended)
        self.assertGoingOn()
        self.set_up.callback(None)
        self.assertEqual(self.calls, ["set_up", "tear_down"])
        outcome = self.assertEnded(TERMINATED, ended.error)
        self.assertIs(outcome.report, ended)

    def test_terminate_then_stop(self):
        ended = report()
        self.run.terminate(ended)
        self.run.stop()
        self.run.terminate(report())
        self.set_up.callback(None)
        self.assertIs(self.assertEnded(TERMINATED).report, ended)


class WorkEndsTests(_RunCase):
    def test_lost(self):
        """
        Work that ends on its own (a lost connection): tear_down, then the
        outcome the work gave.
        """
        self.working()
        error = ConnectionLostError("gone")
        self.run.work_ended(Outcome(LOST, error))
        self.assertEqual(self.calls, ["set_up", "work", "tear_down"])
        self.assertEnded(LOST, error)

    def test_terminated_on_its_own(self):
        self.working()
        ended = report()
        self.run.work_ended(Outcome(TERMINATED, ended.error, ended))
        self.assertIs(self.assertEnded(TERMINATED).report, ended)

    def test_terminate(self):
        """
        Run.terminate while working: the default terminate_work ends the
        work at once with the report.
        """
        self.working()
        ended = report()
        self.run.terminate(ended)
        self.assertEqual(self.calls, ["set_up", "work", "tear_down"])
        self.assertIs(self.assertEnded(TERMINATED).report, ended)

    def test_only_the_first_end_counts(self):
        self.working()
        self.run.work_ended(Outcome(LOST, ConnectionLostError("gone")))
        self.run.work_ended(Outcome(STOPPED))
        self.run.terminate(report())
        self.assertEqual(self.calls, ["set_up", "work", "tear_down"])
        self.assertEnded(LOST)

    def test_tear_down_later(self):
        self.component.tear_down_with = d = defer.Deferred()
        self.working()
        self.run.work_ended(Outcome(LOST, ConnectionLostError("gone")))
        self.assertGoingOn()
        d.callback(None)
        self.assertEnded(LOST)

    def test_tear_down_failing_is_logged(self):
        self.component.tear_down_with = ValueError("tear_down bug")
        self.working()
        self.run.work_ended(Outcome(LOST, ConnectionLostError("gone")))
        self.assertEnded(LOST)
        [event] = self.component.logged
        self.assertEqual(formatEvent(event), "fake: tear_down failed")
        self.assertIsInstance(event["log_failure"].value, ValueError)


class StopTests(_RunCase):
    def test_stop_while_working(self):
        self.working()
        self.run.stop()
        self.assertEqual(self.calls[-1], "end_work")
        self.assertGoingOn()
        self.run.work_ended(Outcome(STOPPED))
        self.assertEqual(self.calls, ["set_up", "work", "end_work", "tear_down"])
        self.assertEnded(STOPPED)

    def test_work_ending_at_once(self):
        self.run.ends_at_once = True
        self.working()
        self.run.stop()
        self.assertEqual(self.calls, ["set_up", "work", "end_work", "tear_down"])
        self.assertEnded(STOPPED)

    def test_stop_twice(self):
        self.working()
        self.run.stop()
        self.run.stop()
        self.assertEqual(self.calls.count("end_work"), 1)
        self.run.work_ended(Outcome(STOPPED))
        self.assertEnded(STOPPED)

    def test_terminate_while_stopping_changes_nothing(self):
        self.working()
        self.run.stop()
        self.run.terminate(report())
        self.run.work_ended(Outcome(STOPPED))
        self.assertEnded(STOPPED)

    def test_work_reports_otherwise(self):
        """
        The outcome is the work's: a stop whose work ended lost reports
        lost.
        """
        self.working()
        self.run.stop()
        self.run.work_ended(Outcome(LOST, ConnectionLostError("gone")))
        self.assertEnded(LOST)

    def test_no_deadline_without_a_shutdown_timeout(self):
        self.working()
        self.run.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(3600)
        self.assertGoingOn()
        self.run.work_ended(Outcome(STOPPED))
        self.assertEnded(STOPPED)


class DeadlineTests(_RunCase):
    """
    The component's shutdown_timeout bounds a stop, whatever is pending.
    """

    timeout = 2.0

    def late_lines(self):
        return self.component.lines(LogLevel.warn)

    def test_in_time(self):
        """
        A stop that ends in time cancels the deadline.
        """
        self.working()
        self.run.stop()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1.9)
        self.run.work_ended(Outcome(STOPPED))
        self.assertEnded(STOPPED)
        self.assertEqual(self.late_lines(), [])

    def test_armed_only_by_a_stop(self):
        self.working()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.run.terminate(report())
        self.assertEnded(TERMINATED)

    def test_set_up_still_pending(self):
        """
        Reported stopped at the deadline; the late set_up is then torn down
        (nothing it made is left behind), and nothing more is reported.
        """
        self.component.set_up_with = d = defer.Deferred()
        self.run.start()
        self.run.stop()
        self.clock.advance(1.9)
        self.assertGoingOn()
        self.clock.advance(0.1)
        self.assertEnded(STOPPED)
        self.assertEqual(self.late_lines(),
                         ["fake: set_up did not finish within 2 s; stopped anyway"])
        self.assertEqual(self.calls, ["set_up"])
        d.callback(None)
        self.assertEqual(self.calls, ["set_up", "tear_down"])
        self.assertEnded(STOPPED)

    def test_set_up_pending_then_failing(self):
        """
        A late set_up that fails: nothing to tear down, nothing more
        reported, but its error is said (not dropped).
        """
        self.component.set_up_with = d = defer.Deferred()
        self.run.start()
        self.run.stop()
        self.clock.advance(2)
        d.errback(ConnectionLostError("gone"))
        self.assertEqual(self.calls, ["set_up"])
        self.assertEnded(STOPPED)
        self.assertEqual(self.component.lines(LogLevel.error),
                         ["fake: set_up failed: ConnectionLostError: gone"])

    def test_terminated_set_up_stopped_later(self):
        """
        A termination arms no deadline; a stop after it does.
        """
        self.component.set_up_with = defer.Deferred()
        self.run.start()
        self.run.terminate(report())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.run.stop()
        self.clock.advance(2)
        self.assertEnded(STOPPED)

    def test_item_stuck(self):
        """
        The work does not end in time: tear_down runs (before the report:
        one done at once is done before anyone hears of the end), and the
        run is reported stopped at the deadline; the work's late end
        changes nothing.
        """
        self.working()
        reported_after = []
        self.run.on_end = lambda o: (self.run.outcomes.append(o),
                                     reported_after.append(list(self.calls)))
        self.run.stop()
        self.clock.advance(2)
        self.assertEqual(reported_after, [["set_up", "work", "end_work", "tear_down"]])
        self.assertEnded(STOPPED)
        self.assertEqual(self.late_lines(),
                         ["fake: the item in progress did not finish within 2 s; stopped anyway"])
        self.run.work_ended(Outcome(STOPPED))
        self.run.stop()
        self.assertEqual(self.calls.count("tear_down"), 1)
        self.assertEnded(STOPPED)

    def test_item_and_tear_down_stuck(self):
        self.component.tear_down_with = d = defer.Deferred()
        self.working()
        self.run.stop()
        self.clock.advance(2)
        self.assertEnded(STOPPED)
        d.callback(None)
        self.run.work_ended(Outcome(STOPPED))
        self.assertEqual(self.calls.count("tear_down"), 1)
        self.assertEnded(STOPPED)

    def test_tear_down_stuck(self):
        self.component.tear_down_with = d = defer.Deferred()
        self.working()
        self.run.stop()
        self.run.work_ended(Outcome(STOPPED))
        self.clock.advance(2)
        self.assertEnded(STOPPED)
        self.assertEqual(self.late_lines(),
                         ["fake: tear_down did not finish within 2 s; stopped anyway"])
        d.callback(None)
        self.assertEnded(STOPPED)

    def test_stop_while_tearing_down(self):
        """
        Work that ended on its own (a lost connection), then a stop while
        its tear_down hangs: the stop is bounded all the same.
        """
        self.component.tear_down_with = d = defer.Deferred()
        self.working()
        self.run.work_ended(Outcome(LOST, ConnectionLostError("gone")))
        self.run.stop()
        self.clock.advance(2)
        self.assertEnded(STOPPED)
        self.assertEqual(self.late_lines(),
                         ["fake: tear_down did not finish within 2 s; stopped anyway"])
        d.callback(None)
        self.assertEnded(STOPPED)

    def test_deadline_counts_from_the_first_stop(self):
        self.working()
        self.run.stop()
        self.clock.advance(1.5)
        self.run.stop()
        self.clock.advance(0.5)
        self.assertEnded(STOPPED)


class AfterTheEndTests(_RunCase):
    timeout = 2.0

    def test_late_inputs_change_nothing(self):
        self.working()
        self.run.work_ended(Outcome(LOST, ConnectionLostError("gone")))
        self.assertEnded(LOST)
        self.run.stop()
        self.run.terminate(report())
        self.run.work_ended(Outcome(STOPPED))
        self.clock.advance(10)
        self.assertEqual(self.calls, ["set_up", "work", "tear_down"])
        self.assertEnded(LOST)

    def test_when_ended_after_the_end(self):
        self.working()
        self.run.work_ended(Outcome(STOPPED))
        self.assertIsNone(self.successResultOf(self.run.when_ended()))
