"""
Tests for L{hermes_tx.runtime.supervisor.Supervisor}, in memory: a fake component
whose runs the tests end by hand, and a L{task.Clock} for the backoff.
"""

from twisted.internet import defer, task
from twisted.logger import Logger, formatEvent
from twisted.trial import unittest

from hermes_tx.runtime.backoff import Backoff, backoff_policy
from hermes_tx.runtime.supervisor import (
    LOST,
    STOPPED,
    TERMINATED,
    ComponentError,
    Outcome,
    Supervisor,
    SupervisorObserver,
)


class FakeRun:
    """
    A run the test drives: L{ready}, L{lose}, L{terminate}, L{finish}.
    C{on_start}/C{on_stop}, when set, run inside C{start()}/C{stop()}.
    """

    def __init__(self, number):
        self.number = number
        self.started = 0
        self.stops = 0
        self.on_start = None
        self.on_stop = None

    def start(self):
        self.started += 1
        if self.on_start is not None:
            self.on_start(self)

    def stop(self):
        self.stops += 1
        if self.on_stop is not None:
            self.on_stop(self)

    def ready(self):
        self.on_ready()

    def lose(self, error=None):
        outcome = Outcome(LOST, error or ConnectionError(f"run {self.number} lost"))
        self.on_end(outcome)
        return outcome

    def terminate(self, error=None):
        error = error or ValueError(f"run {self.number} failed")
        outcome = Outcome(TERMINATED, error, ComponentError(False, "terminate", None, error))
        self.on_end(outcome)
        return outcome

    def finish(self):
        self.on_end(Outcome(STOPPED))

    def __repr__(self):
        return f"<FakeRun {self.number}>"


class FakeComponent:
    def __init__(self):
        self.runs = []
        self.prepare = None  # called with each new run before it is handed over

    def new_run(self):
        run = FakeRun(len(self.runs) + 1)
        if self.prepare is not None:
            self.prepare(run)
        self.runs.append(run)
        return run


class Recorder(SupervisorObserver):
    def __init__(self):
        self.calls = []

    def run_ready(self, component):
        self.calls.append(("ready", component))

    def run_lost(self, component, error, delay):
        self.calls.append(("lost", component, error, delay))

    def run_terminated(self, component, error):
        self.calls.append(("terminated", component, error))


class SupervisorTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.component = FakeComponent()
        self.backoff = Backoff(backoff_policy(initial=1, factor=2, max_delay=8, jitter=None))
        self.logged = []
        self.sup = Supervisor(self.component, self.clock, self.backoff,
                              log=Logger(observer=self.logged.append))
        self.recorder = Recorder()
        self.sup.add_observer(self.recorder)

    @property
    def runs(self):
        return self.component.runs

    def assertNoTimer(self):
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def assertIdle(self):
        self.assertEqual(self.sup.state, "idle")
        self.assertIsNone(self.sup.run)
        self.assertNoTimer()

    def lose_and_wait(self, expected_delay):
        """
        Lose the current run; the next one starts exactly C{expected_delay}
        seconds later.
        """
        run = self.sup.run
        count = len(self.runs)
        run.lose()
        self.assertEqual(self.sup.state, "waiting")
        self.assertIsNone(self.sup.run)
        self.assertEqual([c.getTime() - self.clock.seconds() for c in self.clock.getDelayedCalls()],
                         [expected_delay])
        # Halves keep the clock's sums exact (every delay here is >= 1 s).
        self.clock.advance(expected_delay - 0.5)
        self.assertEqual(len(self.runs), count)
        self.clock.advance(0.5)
        self.assertEqual(len(self.runs), count + 1)
        self.assertEqual(self.sup.state, "running")
        return self.sup.run

    # -- starting and restarting -------------------------------------------

    def test_initially_idle(self):
        self.assertIdle()
        self.assertEqual(self.runs, [])
        self.assertIsNone(self.sup.last_outcome)
        self.assertIs(self.sup.backoff, self.backoff)

    def test_start_begins_a_run(self):
        self.sup.start()
        self.assertEqual(self.sup.state, "running")
        self.assertEqual(len(self.runs), 1)
        self.assertIs(self.sup.run, self.runs[0])
        self.assertEqual(self.runs[0].started, 1)
        self.assertNoTimer()

    def test_start_again_changes_nothing(self):
        self.sup.start()
        self.sup.start()
        self.assertEqual(len(self.runs), 1)
        self.runs[0].lose()
        self.sup.start()
        self.assertEqual(self.sup.state, "waiting")
        self.assertEqual(len(self.runs), 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_lost_runs_follow_the_backoff(self):
        self.sup.start()
        for delay in [1, 2, 4, 8, 8]:
            self.lose_and_wait(delay)
        self.assertEqual(self.backoff.attempts, 5)
        self.assertEqual([r.started for r in self.runs], [1] * 6)

    def test_lost_tells_observers_and_keeps_the_outcome(self):
        self.sup.start()
        outcome = self.runs[0].lose()
        self.assertEqual(self.recorder.calls, [("lost", self.component, outcome.error, 1)])
        self.assertIs(self.sup.last_outcome, outcome)

    def test_ready_resets_the_backoff(self):
        """
        A run that became ready was a success: back-to-back losses after
        ready each wait the first delay (issue 8 item 5).
        """
        self.sup.start()
        self.lose_and_wait(1)
        self.lose_and_wait(2)
        self.lose_and_wait(4)
        for _ in range(5):
            self.sup.run.ready()
            self.assertEqual(self.backoff.attempts, 0)
            self.lose_and_wait(1)
        self.assertEqual(self.recorder.calls.count(("ready", self.component)), 5)

    def test_ready_twice(self):
        self.sup.start()
        self.sup.run.ready()
        self.sup.run.ready()
        self.assertEqual(self.recorder.calls, [("ready", self.component)] * 2)
        self.assertEqual(self.sup.state, "running")

    def test_terminated(self):
        """
        The error strategy said stop: no other run, however long one
        waits; observers are told; the outcome is kept.
        """
        self.sup.start()
        self.sup.run.ready()
        outcome = self.runs[0].terminate()
        self.assertEqual(self.sup.state, "terminated")
        self.assertIsNone(self.sup.run)
        self.assertIs(self.sup.last_outcome, outcome)
        self.assertEqual(self.recorder.calls[-1], ("terminated", self.component, outcome.error))
        self.assertNoTimer()
        self.clock.advance(1000)
        self.assertEqual(len(self.runs), 1)

    def test_start_after_terminated(self):
        self.sup.start()
        self.runs[0].terminate()
        self.sup.start()
        self.assertEqual(self.sup.state, "running")
        self.assertEqual(len(self.runs), 2)
        self.assertIs(self.sup.run, self.runs[1])

    def test_terminated_after_losses_keeps_the_backoff_count(self):
        self.sup.start()
        self.lose_and_wait(1)
        self.sup.run.terminate()
        self.sup.start()
        self.lose_and_wait(2)

    # -- stop, in every state ----------------------------------------------

    def test_stop_when_idle(self):
        d = self.sup.stop()
        self.assertIsNone(self.successResultOf(d))
        self.assertIdle()
        self.assertEqual(self.runs, [])

    def test_stop_while_running(self):
        """
        The run is asked to stop once; the Deferred fires when it has ended.
        """
        self.sup.start()
        run = self.sup.run
        d = self.sup.stop()
        self.assertEqual(run.stops, 1)
        self.assertEqual(self.sup.state, "stopping")
        self.assertIs(self.sup.run, run)
        self.assertNoResult(d)
        run.finish()
        self.assertIsNone(self.successResultOf(d))
        self.assertIdle()
        self.assertEqual(self.recorder.calls, [])

    def test_run_lost_while_stopping(self):
        """
        The connection went while stopping: stopped all the same, no
        restart, nobody told of a loss.
        """
        self.sup.start()
        d = self.sup.stop()
        self.sup.run.lose()
        self.successResultOf(d)
        self.assertIdle()
        self.clock.advance(100)
        self.assertEqual(len(self.runs), 1)
        self.assertEqual(self.recorder.calls, [])

    def test_run_terminated_while_stopping(self):
        self.sup.start()
        d = self.sup.stop()
        self.sup.run.terminate()
        self.successResultOf(d)
        self.assertIdle()

    def test_stop_while_waiting(self):
        self.sup.start()
        self.runs[0].lose()
        d = self.sup.stop()
        self.assertIsNone(self.successResultOf(d))
        self.assertIdle()
        self.clock.advance(100)
        self.assertEqual(len(self.runs), 1)

    def test_stop_while_stopping(self):
        self.sup.start()
        run = self.sup.run
        first = self.sup.stop()
        second = self.sup.stop()
        self.assertEqual(run.stops, 1)
        self.assertNoResult(first)
        self.assertNoResult(second)
        run.finish()
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertIdle()

    def test_stop_when_terminated(self):
        self.sup.start()
        outcome = self.runs[0].terminate()
        d = self.sup.stop()
        self.assertIsNone(self.successResultOf(d))
        self.assertIdle()
        self.assertIs(self.sup.last_outcome, outcome)
        self.assertEqual(self.runs[0].stops, 0)

    def test_start_during_stopping(self):
        """
        Started again while stopping: the stop Deferred fires when the run
        has ended, then a new run begins (at once, no backoff).
        """
        self.sup.start()
        old = self.sup.run
        d = self.sup.stop()
        self.sup.start()
        self.sup.start()
        self.assertEqual(self.sup.state, "stopping")
        self.assertNoResult(d)
        runs_when_stopped = []
        d.addCallback(lambda _: runs_when_stopped.append(len(self.runs)))
        old.finish()
        self.assertEqual(runs_when_stopped, [1])
        self.assertEqual(len(self.runs), 2)
        self.assertEqual(self.sup.state, "running")
        self.assertIs(self.sup.run, self.runs[1])
        self.assertNoTimer()

    def test_start_then_stop_during_stopping(self):
        self.sup.start()
        old = self.sup.run
        first = self.sup.stop()
        self.sup.start()
        second = self.sup.stop()
        self.assertEqual(old.stops, 1)
        old.lose()
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertIdle()
        self.assertEqual(len(self.runs), 1)

    def test_stop_and_start_again(self):
        self.sup.start()
        self.lose_and_wait(1)
        d = self.sup.stop()
        self.sup.run.finish()
        self.successResultOf(d)
        self.sup.start()
        self.assertEqual(len(self.runs), 3)
        self.lose_and_wait(2)

    def test_run_that_ends_by_itself(self):
        """
        A run reporting C{STOPPED} though nobody asked (a consumer loop
        that failed) is over: the supervisor does not keep it as current,
        and a stop afterwards fires at once rather than waiting for a run
        that will never end again.
        """
        self.sup.start()
        run = self.sup.run
        run.finish()
        self.assertEqual(self.sup.state, "idle")
        self.assertIsNone(self.sup.run)
        [warning] = self.logged
        self.assertEqual(warning["log_level"].name, "warn")
        self.assertIn("no stop was asked", formatEvent(warning))
        d = self.sup.stop()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(run.stops, 0)
        self.sup.start()
        self.assertEqual(len(self.runs), 2)

    # -- late news from old runs -------------------------------------------

    def test_late_news_while_waiting(self):
        self.sup.start()
        old = self.sup.run
        old.lose()
        calls = list(self.recorder.calls)
        old.ready()
        old.lose()
        old.terminate()
        old.finish()
        self.assertEqual(self.sup.state, "waiting")
        self.assertEqual(self.recorder.calls, calls)
        self.assertEqual(self.backoff.attempts, 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_late_news_from_an_old_run(self):
        """
        The old run's on_ready/on_end after a new run began change nothing:
        no backoff reset, no end of the new run.
        """
        self.sup.start()
        old = self.sup.run
        new = self.lose_and_wait(1)
        self.lose_and_wait(2)
        current = self.sup.run
        calls = list(self.recorder.calls)
        for stale in (old, new):
            stale.ready()
            stale.lose()
            stale.terminate()
            stale.finish()
        self.assertEqual(self.sup.state, "running")
        self.assertIs(self.sup.run, current)
        self.assertEqual(self.backoff.attempts, 2)
        self.assertEqual(self.recorder.calls, calls)
        self.assertNoTimer()

    def test_late_news_after_stop(self):
        self.sup.start()
        old = self.sup.run
        d = self.sup.stop()
        old.finish()
        self.successResultOf(d)
        old.ready()
        old.lose()
        old.terminate()
        self.assertIdle()
        self.assertEqual(self.recorder.calls, [])
        self.assertIsNone(self.sup.last_outcome)

    def test_late_news_from_the_run_stopped_for_a_restart(self):
        self.sup.start()
        old = self.sup.run
        self.sup.stop()
        self.sup.start()
        old.finish()
        old.lose()
        old.ready()
        self.assertEqual(self.sup.state, "running")
        self.assertIs(self.sup.run, self.runs[1])
        self.assertEqual(self.recorder.calls, [])

    def test_late_news_while_terminated(self):
        self.sup.start()
        old = self.sup.run
        outcome = old.terminate()
        old.lose()
        old.ready()
        self.assertEqual(self.sup.state, "terminated")
        self.assertIs(self.sup.last_outcome, outcome)
        self.assertNoTimer()

    # -- observers ---------------------------------------------------------

    def test_observers_that_raise_are_logged(self):
        class Broken:
            def run_ready(self, component):
                raise RuntimeError("ready observer broke")

            def run_lost(self, component, error, delay):
                raise RuntimeError("lost observer broke")

            def run_terminated(self, component, error):
                raise RuntimeError("terminated observer broke")

        sup = Supervisor(self.component, self.clock, self.backoff,
                         log=Logger(observer=self.logged.append))
        sup.add_observer(Broken())
        after = Recorder()
        sup.add_observer(after)
        sup.start()
        sup.run.ready()
        sup.run.lose()
        self.assertEqual(sup.state, "waiting")
        self.clock.advance(1)
        self.assertEqual(sup.state, "running")
        sup.run.terminate()
        self.assertEqual(sup.state, "terminated")
        self.assertEqual([c[0] for c in after.calls], ["ready", "lost", "terminated"])
        failures = [e["log_failure"].value for e in self.logged if "log_failure" in e]
        self.assertEqual([str(f) for f in failures],
                         ["ready observer broke", "lost observer broke", "terminated observer broke"])

    def test_observers_with_some_methods(self):
        class OnlyLost:
            def __init__(self):
                self.delays = []

            def run_lost(self, component, error, delay):
                self.delays.append(delay)

        only = OnlyLost()
        self.sup.add_observer(only)
        self.sup.start()
        self.sup.run.ready()
        self.sup.run.lose()
        self.clock.advance(1)
        self.sup.run.terminate()
        self.assertEqual(only.delays, [1])
        self.assertEqual(self.logged, [])

    # -- reentrancy --------------------------------------------------------

    def test_run_lost_inside_start(self):
        self.component.prepare = lambda run: setattr(run, "on_start", lambda r: r.lose())
        self.sup.start()
        self.assertEqual(self.sup.state, "waiting")
        self.clock.advance(1)
        self.assertEqual(len(self.runs), 2)
        self.assertEqual(self.sup.state, "waiting")
        self.assertEqual(self.backoff.attempts, 2)

    def test_ready_inside_start(self):
        self.backoff.attempts = 3
        self.component.prepare = lambda run: setattr(run, "on_start", lambda r: r.ready())
        self.sup.start()
        self.assertEqual(self.sup.state, "running")
        self.assertEqual(self.backoff.attempts, 0)

    def test_run_ends_inside_stop(self):
        self.component.prepare = lambda run: setattr(run, "on_stop", lambda r: r.finish())
        self.sup.start()
        d = self.sup.stop()
        self.assertIsNone(self.successResultOf(d))
        self.assertIdle()

    def test_start_from_the_stop_deferred(self):
        """
        C{stop().addCallback(lambda _: start())}, as a restart is written.
        """
        self.sup.start()
        d = self.sup.stop()
        d.addCallback(lambda _: self.sup.start())
        self.sup.run.finish()
        self.assertEqual(self.sup.state, "running")
        self.assertEqual(len(self.runs), 2)
        self.assertIs(self.sup.run, self.runs[1])

    def test_stop_from_the_stop_deferred_during_a_restart(self):
        self.sup.start()
        old = self.sup.run
        again = []
        d = self.sup.stop()
        d.addCallback(lambda _: again.append(self.sup.stop()))
        self.sup.start()
        old.finish()
        # The restart went ahead, then the second stop asked the new run.
        self.assertEqual(len(self.runs), 2)
        self.assertEqual(self.runs[1].stops, 1)
        self.assertEqual(self.sup.state, "stopping")
        self.runs[1].finish()
        self.successResultOf(again[0])
        self.assertIdle()

    def test_stop_from_a_lost_observer(self):
        class StopOnLoss:
            def run_lost(inner, component, error, delay):
                inner.stopped = self.sup.stop()

        observer = StopOnLoss()
        self.sup.add_observer(observer)
        self.sup.start()
        self.sup.run.lose()
        self.successResultOf(observer.stopped)
        self.assertIdle()
        self.clock.advance(100)
        self.assertEqual(len(self.runs), 1)

    def test_start_from_a_terminated_observer(self):
        class Restart:
            def run_terminated(inner, component, error):
                self.sup.start()

        self.sup.add_observer(Restart())
        self.sup.start()
        self.sup.run.terminate()
        self.assertEqual(self.sup.state, "running")
        self.assertEqual(len(self.runs), 2)

    def test_stop_from_a_ready_observer(self):
        class StopWhenReady:
            def run_ready(inner, component):
                inner.stopped = self.sup.stop()

        observer = StopWhenReady()
        self.sup.add_observer(observer)
        self.sup.start()
        run = self.sup.run
        run.ready()
        self.assertEqual(run.stops, 1)
        self.assertEqual(self.sup.state, "stopping")
        run.finish()
        self.successResultOf(observer.stopped)
        self.assertIdle()

    def test_state_names(self):
        seen = [self.sup.state]
        self.sup.start()
        seen.append(self.sup.state)
        self.sup.run.lose()
        seen.append(self.sup.state)
        self.clock.advance(1)
        self.sup.stop()
        seen.append(self.sup.state)
        self.sup.run.finish()
        seen.append(self.sup.state)
        self.sup.start()
        self.sup.run.terminate()
        seen.append(self.sup.state)
        self.assertEqual(seen, ["idle", "running", "waiting", "stopping", "idle", "terminated"])


class BrokenRunTests(unittest.TestCase):
    def test_a_run_that_cannot_start_terminates(self):
        """
        A new_run or run.start that raises (a bug) ends the component for
        good, logged with its traceback, observers told: the supervisor
        does not sit "running" with nothing running.
        """
        for broken in ("new", "start"):
            component = FakeComponent()
            if broken == "new":
                component.new_run = lambda: 1 / 0
            else:
                component.prepare = lambda run: setattr(run, "start", lambda: 1 / 0)
            logged = []
            sup = Supervisor(component, task.Clock(), Backoff(backoff_policy()),
                             log=Logger(observer=logged.append))
            recorder = Recorder()
            sup.add_observer(recorder)
            sup.start()
            self.assertEqual(sup.state, "terminated", broken)
            self.assertEqual([c[0] for c in recorder.calls], ["terminated"])
            self.assertIsInstance(sup.last_outcome.error, ZeroDivisionError)
            self.assertEqual(sup.last_outcome.report.action, "TERMINATE")
            self.assertEqual(len([e for e in logged if e.get("log_failure")]), 1)
            self.successResultOf(sup.stop())
            self.assertEqual(sup.state, "idle")


class RealClockDefaultsTests(unittest.TestCase):
    def test_stop_returns_a_deferred(self):
        sup = Supervisor(FakeComponent(), task.Clock(), Backoff(backoff_policy()))
        d = sup.stop()
        self.assertIsInstance(d, defer.Deferred)
        self.successResultOf(d)
