"""
Tests for L{hermes_tx.components}: the pre/execute/post chain, error
strategies and backoff, all on a L{task.Clock}.
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from hermes_tx import strategies
from hermes_tx.components import Component, ComponentError
from hermes_tx.runtime.backoff import Backoff
from hermes_tx.runtime.breaker import Breaker


class Recorder(Component):
    """
    The seed's usage example: a zero-argument constructor calling super().
    """

    def __init__(self):
        super().__init__()
        self.calls = []

    def set_up(self):
        self.calls.append("set_up")

    def pre_execute(self):
        self.calls.append(("pre", self.current_item))
        return super().pre_execute()

    def execute(self, pre_exec_value):
        self.calls.append(("execute", pre_exec_value))
        return pre_exec_value * 10

    def post_execute(self, exec_value):
        self.calls.append(("post", exec_value))

    def tear_down(self):
        self.calls.append("tear_down")


class Scripted(Component):
    """
    A component whose execute follows a script: an exception instance is
    raised, a Deferred is returned, anything else is recorded.
    """

    def __init__(self, script, **kwargs):
        super().__init__(**kwargs)
        self.script = list(script)
        self.done = []

    def execute(self, item):
        step = self.script.pop(0) if self.script else None
        if isinstance(step, Exception):
            raise step
        if isinstance(step, defer.Deferred):
            return step.addCallback(lambda _: self.done.append(item))
        self.done.append(item)


class FixedStrategy(strategies.AbstractErrorStrategy):
    def __init__(self, expected, action):
        self.result = (expected, action)
        self.seen = []

    def handle_exception(self, error):
        self.seen.append(error)
        return self.result


class ComponentChainTests(unittest.TestCase):
    def test_seed_zero_argument_subclass(self):
        """
        The seed's C{class Processor(Component)} with C{super().__init__()}
        runs pre_execute -> execute -> post_execute per item, the item itself
        reaching execute, between set_up and tear_down.
        """
        c = Recorder()
        c.startService()
        c.notification_pipe.put(1)
        c.notification_pipe.put(2)
        d = c.stopService()
        self.assertEqual(
            c.calls,
            [
                "set_up",
                ("pre", 1), ("execute", 1), ("post", 10),
                ("pre", 2), ("execute", 2), ("post", 20),
                "tear_down",
            ],
        )
        self.assertIsNone(self.successResultOf(d))

    def test_deferred_results_are_waited_for(self):
        """
        When execute returns a Deferred the next item waits for it.
        """
        pending = defer.Deferred()
        c = Scripted([pending, None], clock=task.Clock())
        c.startService()
        c.notification_pipe.put("a")
        c.notification_pipe.put("b")
        self.assertEqual(c.done, [])
        self.assertEqual(c.current_item, "a")
        pending.callback(None)
        self.assertEqual(c.done, ["a", "b"])
        self.assertIsNone(c.current_item)

    def test_stop_waits_for_item_in_progress(self):
        """
        stopService's Deferred fires only after the item in progress ends, and
        queued items stay queued.
        """
        pending = defer.Deferred()
        c = Scripted([pending], clock=task.Clock())
        c.startService()
        c.notification_pipe.put("a")
        c.notification_pipe.put("b")
        stopped = c.stopService()
        self.assertNoResult(stopped)
        pending.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(c.done, ["a"])
        self.assertEqual(list(c.notification_pipe.pending), ["b"])

    def test_ident_is_alive_join(self):
        """
        ident is the service name (class name when unnamed); is_alive is true
        only while running; join fires when the run has ended.
        """
        c = Scripted([], clock=task.Clock())
        self.assertEqual(c.ident, "Scripted")
        c.setName("worker")
        self.assertEqual(c.ident, "worker")
        self.assertFalse(c.is_alive())
        self.successResultOf(c.join())
        c.startService()
        self.assertTrue(c.is_alive())
        joined = c.join()
        self.assertNoResult(joined)
        c.stopService()
        self.successResultOf(joined)
        self.assertFalse(c.is_alive())


class ComponentErrorTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()

    def test_backoff_doubles_up_to_limit_and_resets(self):
        """
        BACKOFF waits 1, 2, 4, 8, then stays at backoff_limit (8 here), on the
        clock; a success resets the next backoff to 1 s.  (The circuit
        breaker, which would open after five failures in a row, is out of
        the way: tests.test_breaker.)
        """
        errors = [ValueError(i) for i in range(6)]
        strategy = FixedStrategy(False, strategies.BACKOFF)
        c = Scripted(errors + [None, ValueError("again")], clock=self.clock,
                     error_strategy=strategy, backoff_limit=8)
        c.breaker = Breaker(self.clock, Backoff(lambda attempt: 1.0), threshold=100, span=1000)
        c.startService()
        for i in range(8):
            c.notification_pipe.put(i)
        waits = []
        for _ in range(7):
            self.assertEqual(len(self.clock.getDelayedCalls()), 1)
            delay = self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds()
            waits.append(delay)
            self.clock.advance(delay)
        self.assertEqual(waits, [1, 2, 4, 8, 8, 8, 1])
        self.assertEqual(c.done, [6])
        self.assertEqual(len(strategy.seen), 7)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 7)

    def test_backoff_is_cancelled_by_stop(self):
        """
        Stopping during a backoff ends the run at once and leaves no timer.
        """
        c = Scripted([ValueError("x")], clock=self.clock,
                     error_strategy=FixedStrategy(True, strategies.BACKOFF))
        c.startService()
        c.notification_pipe.put(1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.successResultOf(c.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_continue_goes_on_at_once(self):
        c = Scripted([ValueError("x"), None], clock=self.clock,
                     error_strategy=FixedStrategy(True, strategies.CONTINUE))
        c.startService()
        c.notification_pipe.put(1)
        c.notification_pipe.put(2)
        self.assertEqual(c.done, [2])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_terminate_reports_to_error_queue(self):
        """
        TERMINATE stops the component and puts (expected, action, component,
        error) on the error queue.
        """
        error = ValueError("fatal")
        queue = defer.DeferredQueue()
        c = Scripted([error, None], clock=self.clock, error_queue=queue,
                     error_strategy=FixedStrategy(True, strategies.TERMINATE))
        c.startService()
        c.notification_pipe.put(1)
        c.notification_pipe.put(2)
        report = self.successResultOf(queue.get())
        self.assertEqual(report, ComponentError(True, strategies.TERMINATE, c, error))
        self.assertEqual(report[:2], (True, strategies.TERMINATE))
        self.assertFalse(c.is_alive())
        self.assertEqual(c.done, [])
        self.assertEqual(list(c.notification_pipe.pending), [2])

    def test_default_strategy_backs_off_on_bugs(self):
        """
        With the default CommonErrorStrategy a processor that raises is
        logged with its traceback, backs off, and goes on with the next item.
        """
        c = Scripted([KeyError("bug"), None], clock=self.clock)
        c.startService()
        c.notification_pipe.put(1)
        c.notification_pipe.put(2)
        self.assertEqual(c.done, [])
        self.clock.advance(1)
        self.assertEqual(c.done, [2])
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_set_up_failure_terminates(self):
        class BadSetUp(Scripted):
            def set_up(self):
                raise RuntimeError("no")

        queue = defer.DeferredQueue()
        c = BadSetUp([], clock=self.clock, error_queue=queue)
        c.startService()
        report = self.successResultOf(queue.get())
        self.assertIsInstance(report.error, RuntimeError)
        self.assertFalse(c.is_alive())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ShutdownTimeoutTests(unittest.TestCase):
    def test_gives_up_on_a_stuck_item(self):
        """
        stopService waits at most shutdown_timeout seconds for the item in
        progress, then tears down; the item finishing later changes nothing.
        """
        clock = task.Clock()
        stuck = defer.Deferred()
        torn = []
        c = Scripted([stuck], clock=clock, shutdown_timeout=2)
        c.tear_down = lambda: torn.append(clock.seconds())
        c.startService()
        c.notification_pipe.put("a")
        stopped = c.stopService()
        clock.advance(1.9)
        self.assertNoResult(stopped)
        clock.advance(0.1)
        self.successResultOf(stopped)
        self.assertEqual(torn, [2.0])
        stuck.callback(None)
        self.assertEqual(torn, [2.0])
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_item_finishing_in_time_cancels_the_timer(self):
        clock = task.Clock()
        slow = defer.Deferred()
        c = Scripted([slow], clock=clock, shutdown_timeout=2)
        c.startService()
        c.notification_pipe.put("a")
        stopped = c.stopService()
        clock.advance(1)
        slow.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(c.done, ["a"])
        self.assertEqual(clock.getDelayedCalls(), [])


    def test_slow_tear_down_does_not_end_the_next_run(self):
        """
        shutdown_timeout bounds the whole stop: a run whose item and then
        tear_down hang is over when it expires; the next run starts at once,
        and the old tear_down finishing later ends nothing.
        """
        clock = task.Clock()
        stuck = defer.Deferred()
        slow_tear_down = defer.Deferred()
        tear_downs = [slow_tear_down, None]
        c = Scripted([stuck], clock=clock, shutdown_timeout=1)
        c.tear_down = lambda: tear_downs.pop(0)
        c.startService()
        c.notification_pipe.put("a")
        first = c.stopService()
        clock.advance(0.5)
        self.assertNoResult(first)
        clock.advance(0.5)  # gives up on "a" and on its hanging tear_down
        self.successResultOf(first)
        c.startService()
        joined = c.join()
        slow_tear_down.callback(None)  # the old run's tear_down ends...
        self.assertNoResult(joined)  # ...which is not the new run's end
        self.assertTrue(c.is_alive())
        self.successResultOf(c.stopService())
        self.successResultOf(joined)
        stuck.callback(None)
        self.assertEqual(clock.getDelayedCalls(), [])


class BatchModeTests(unittest.TestCase):
    def test_batches_of_what_is_queued(self):
        """
        With max_batch, execute gets lists: up to max_batch items that were
        queued at once, oldest first; a lone item arriving later is a batch
        of one.
        """

        class Bulk(Component):
            max_batch = 3

            def __init__(self):
                super().__init__(clock=task.Clock())
                self.batches = []

            def execute(self, items):
                self.batches.append(list(items))

        c = Bulk()
        c.startService()
        c.notification_pipe.put_many(list(range(7)))
        c.notification_pipe.put(7)
        self.assertEqual(c.batches, [[0, 1, 2], [3, 4, 5], [6], [7]])
        c.stopService()

    def test_batch_errors_go_to_the_strategy(self):
        strategy = FixedStrategy(True, strategies.CONTINUE)
        seen = []

        class Bulk(Component):
            def execute(self, items):
                seen.append(items)
                if 2 in items:
                    raise ValueError("bad batch")

        c = Bulk(clock=task.Clock(), error_strategy=strategy, max_batch=2)
        c.notification_pipe = defer.DeferredQueue()
        c.notification_pipe.pending.extend([1, 2, 3])
        c.startService()
        self.assertEqual(seen, [[1, 2], [3]])
        self.assertEqual(len(strategy.seen), 1)
        self.assertEqual(c.failures, 1)
