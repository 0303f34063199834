"""
Tests for what a processor can say about its events (L{hermes_tx.outcomes})
and what the run loop does with it (L{hermes_tx.runtime.settle}): notifications to
retry are executed again, never skipped; rejected ones are logged and
skipped; outbox changes are acknowledged, released or dead-lettered through
their claim.  Also the execute timeout and the reactor's turn.
"""

from twisted.internet import defer, task
from twisted.logger import LogLevel, formatEvent
from twisted.trial import unittest

from hermes_tx.components import Component
from hermes_tx.events import Change, Event
from hermes_tx.outcomes import BatchOutcome, Reject, Retry
from hermes_tx.exceptions import ExecuteTimeout
from tests.support.shared import capture_log


def note(payload):
    return Event("notification", "c", payload, 1, 0.0)


class Claim:
    """
    What the outbox consumer attaches to a change: records how it settled.
    """

    def __init__(self):
        self.settled = []

    def done(self, change):
        self.settled.append(("done", change.id))

    def retry(self, change, reason, retry_after):
        self.settled.append(("retry", change.id, retry_after))

    def reject(self, change, reason):
        self.settled.append(("reject", change.id))


def change(id, claim):
    return Change(id, "t", f"k{id}", 0, 0.0, "{}", {}, claim=claim)


class Scripted(Component):
    """
    execute follows a script per call: an exception is raised, a
    BatchOutcome factory is called with the item, a Deferred returned,
    anything else means done.
    """

    def __init__(self, script, **kwargs):
        super().__init__(**kwargs)
        self.script = list(script)
        self.calls = []

    def execute(self, item):
        self.calls.append(item if not isinstance(item, list) else [e.payload if hasattr(e, "payload") and e.kind != "change" else e.id for e in item])
        step = self.script.pop(0) if self.script else None
        if isinstance(step, Exception):
            raise step
        if callable(step):
            return step(item)
        return step


class RetryTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.log = capture_log(self)

    def test_retry_executes_the_same_event_again(self):
        """
        Retry: the same notification is executed again after the backoff
        (1, 2, 4 s), never skipped; the next one waits; success resets.
        """
        c = Scripted([Retry("disk full"), Retry("disk full"), None, None], clock=self.clock)
        c.startService()
        c.notification_pipe.put(note("a"))
        c.notification_pipe.put(note("b"))
        self.assertEqual([e.payload for e in c.calls], ["a"])
        self.clock.advance(1)
        self.assertEqual([e.payload for e in c.calls], ["a", "a"])
        self.clock.advance(2)
        self.assertEqual([e.payload for e in c.calls], ["a", "a", "a", "b"])
        self.assertEqual(c.processed, {"c": 2})
        self.assertEqual(c.failures, 2)
        warnings = [formatEvent(e) for e in self.log if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warnings), 2)
        self.assertIn("retrying in 1 s", warnings[0])

    def test_retry_after_is_honoured(self):
        c = Scripted([Retry("slow down", retry_after=5.0), None], clock=self.clock)
        c.startService()
        c.notification_pipe.put(note("a"))
        self.clock.advance(4.9)
        self.assertEqual(len(c.calls), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(c.calls), 2)

    def test_stop_during_a_retry_puts_the_event_back(self):
        """
        Stopping while waiting to retry leaves the event at the front of the
        queue, for the next run.
        """
        c = Scripted([Retry("down")], clock=self.clock)
        c.startService()
        c.notification_pipe.put(note("a"))
        c.notification_pipe.put(note("b"))
        self.successResultOf(c.stopService())
        self.assertEqual([e.payload for e in c.notification_pipe.pending], ["a", "b"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_before_the_event_asks_for_a_retry(self):
        """
        An event in progress when the stop comes, and which then asks to be
        retried: the stop does not wait out the backoff; the event is put
        back for the next run.
        """
        gate = defer.Deferred()
        c = Scripted([lambda item: gate], clock=self.clock)
        c.startService()
        c.notification_pipe.put(note("a"))
        stopping = c.stopService()
        self.assertNoResult(stopping)
        gate.errback(Retry("down"))
        self.successResultOf(stopping)
        self.assertEqual([e.payload for e in c.notification_pipe.pending], ["a"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reject_skips_with_one_line(self):
        c = Scripted([Reject("400 bad request"), None], clock=self.clock)
        c.startService()
        c.notification_pipe.put(note("a"))
        c.notification_pipe.put(note("b"))
        self.assertEqual([e.payload for e in c.calls], ["a", "b"])
        self.assertEqual(c.processed, {"c": 1})
        warnings = [formatEvent(e) for e in self.log if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertIn("rejected for good", warnings[0])
        self.assertIn("400 bad request", warnings[0])


class BatchOutcomeTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.log = capture_log(self)

    def test_per_event_answers_for_notifications(self):
        """
        A batch where one event is rejected and one is to be retried: the
        others count as processed, the rejected one is skipped, the retried
        one alone is executed again.
        """
        def outcome(batch):
            result = BatchOutcome()
            result.reject_event(batch[1], "mapping error")
            result.retry_event(batch[2], "429", retry_after=2.0)
            return result

        c = Scripted([outcome, None], clock=self.clock, max_batch=10)
        c.startService()
        c.notification_pipe.put_many([note(p) for p in "abcd"])
        self.assertEqual(c.calls, [["a", "b", "c", "d"]])
        self.assertEqual(c.processed, {"c": 2})
        self.clock.advance(2.0)
        self.assertEqual(c.calls, [["a", "b", "c", "d"], ["c"]])
        self.assertEqual(c.processed, {"c": 3})

    def test_changes_settle_through_their_claim(self):
        """
        Outbox changes are never executed again in memory: done ones are
        acknowledged, retried ones released (with retry_after), rejected
        ones dead-lettered, and an exception releases the whole batch.
        """
        claim = Claim()

        def outcome(batch):
            result = BatchOutcome()
            result.retry_event(batch[0], "503", retry_after=3.0)
            result.reject_event(batch[1], "400")
            return result

        c = Scripted([outcome, ValueError("bug")], clock=self.clock, max_batch=10)
        c.startService()
        c.notification_pipe.put_many([change(i, claim) for i in (1, 2, 3)])
        self.assertEqual(claim.settled, [("done", 3), ("reject", 2), ("retry", 1, 3.0)])
        self.clock.advance(3.0)
        c.notification_pipe.put_many([change(i, claim) for i in (4, 5)])
        self.assertEqual(claim.settled[3:], [("retry", 4, None), ("retry", 5, None)])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(c.calls, [[1, 2, 3], [4, 5]])

    def test_single_change_done(self):
        claim = Claim()
        c = Scripted([None], clock=self.clock)
        c.startService()
        c.notification_pipe.put(change(7, claim))
        self.assertEqual(claim.settled, [("done", 7)])


class ExecuteTimeoutTests(unittest.TestCase):
    def test_a_stuck_execute_is_cancelled(self):
        """
        execute_timeout cancels a Deferred that does not fire in time and
        hands ExecuteTimeout to the error strategy (logged, backed off,
        then the next event).
        """
        clock = task.Clock()
        cancelled = []
        stuck = defer.Deferred(lambda d: cancelled.append(True))
        c = Scripted([lambda item: stuck, None], clock=clock, execute_timeout=5)
        c.startService()
        c.notification_pipe.put(note("a"))
        c.notification_pipe.put(note("b"))
        self.assertEqual(c.busy_since, 0.0)
        clock.advance(5)
        self.assertEqual(cancelled, [True])
        self.assertIsNone(c.busy_since)
        clock.advance(1)  # the backoff
        self.assertEqual([e.payload for e in c.calls], ["a", "b"])
        (error,) = self.flushLoggedErrors(ExecuteTimeout)
        self.assertIn("within 5 s", str(error.value))

    def test_in_time_leaves_no_timer(self):
        clock = task.Clock()
        slow = defer.Deferred()
        c = Scripted([lambda item: slow], clock=clock, execute_timeout=5)
        c.startService()
        c.notification_pipe.put(note("a"))
        clock.advance(4)
        slow.callback(None)
        self.assertEqual(c.processed, {"c": 1})
        self.assertEqual(clock.getDelayedCalls(), [])


class TurnTests(unittest.TestCase):
    def test_a_long_backlog_gives_the_reactor_turns(self):
        """
        A synchronous processor working through a backlog yields to the
        reactor once its turn budget (10 ms) is spent, however few items
        that took, so timers run in between: at 4 ms of CPU per event, a
        turn after every third event.
        """
        clock = task.Clock()

        class Burning(Scripted):
            def execute(self, item):
                clock.advance(0.004)  # the processor's CPU time
                return Scripted.execute(self, item)

        turns = []  # how many events were executed at each turn given
        schedule = clock.callLater

        def callLater(delay, f, *args, **kwargs):
            turns.append(len(c.calls))
            return schedule(delay, f, *args, **kwargs)

        clock.callLater = callLater
        c = Burning([], clock=clock)
        c.startService()
        c.notification_pipe.put_many([note(str(i)) for i in range(30)])
        self.assertEqual(len(c.calls), 3)
        clock.advance(0)
        self.assertEqual(turns, [3, 6, 9, 12, 15, 18, 21, 24, 27])
        self.assertEqual(c.processed, {"c": 30})
        self.assertEqual(clock.getDelayedCalls(), [])
