"""
Tests for L{hermes_tx.runtime.breaker.Breaker} on a L{task.Clock}, and for
how the consumer loop uses it: a failing event is retried alone and never
pauses the others; only failures in a row with no success in between open
the circuit, which pauses the whole processor until a probe succeeds.
"""

from twisted.internet import defer, task
from twisted.logger import LogLevel, formatEvent
from twisted.trial import unittest

from hermes_tx.components import Component
from hermes_tx.events import Change, Event
from hermes_tx.outcomes import BatchOutcome, Reject, Retry, Unavailable
from hermes_tx.runtime.backoff import Backoff, backoff_policy
from hermes_tx.runtime.breaker import CLOSED, HALF_OPEN, OPEN, SPAN, THRESHOLD, Breaker
from tests.support.shared import capture_log


def exact(initial=1.0, max_delay=16.0):
    return Backoff(backoff_policy(initial=initial, factor=2.0, max_delay=max_delay, jitter=None))


class Watcher:
    def __init__(self):
        self.seen = []

    def breaker_opened(self, breaker):
        self.seen.append(("opened", breaker.state))

    def breaker_half_open(self, breaker):
        self.seen.append(("half-open", breaker.state))

    def breaker_closed(self, breaker):
        self.seen.append(("closed", breaker.state))


class BreakerTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.log = capture_log(self)
        self.breaker = Breaker(self.clock, exact(), name="proc")
        self.watcher = Watcher()
        self.breaker.add_observer(self.watcher)

    def fail(self, times, reason="down"):
        for _ in range(times):
            self.breaker.failed(reason)

    def test_threshold_failures_in_a_row_open(self):
        """
        THRESHOLD failures in a row open the circuit, with one warning line
        naming the last reason and when the next try is.
        """
        self.fail(THRESHOLD - 1)
        self.assertEqual(self.breaker.state, CLOSED)
        self.assertIsNone(self.breaker.admitted())
        self.fail(1, "connection refused")
        self.assertEqual(self.breaker.state, OPEN)
        self.assertEqual(self.breaker.retry_at, 1.0)
        self.assertEqual(self.watcher.seen, [("opened", OPEN)])
        self.assertEqual(self.breaker.opens, 1)
        (line,) = [formatEvent(e) for e in self.log if e.get("log_level") == LogLevel.warn]
        self.assertIn("proc: 5 deliveries failed in a row (last: connection refused)", line)
        self.assertIn("next try in 1 s", line)

    def test_a_success_in_between_resets_the_count(self):
        for _ in range(10):
            self.fail(THRESHOLD - 1)
            self.breaker.succeeded()
        self.assertEqual(self.breaker.state, CLOSED)
        self.assertEqual(self.breaker.failures, 0)

    def test_slow_failures_open_after_the_span(self):
        """
        A dependency that hangs until each request times out: two failures
        in a row SPAN seconds apart open the circuit.
        """
        self.fail(1)
        self.clock.advance(SPAN - 0.1)
        self.fail(1)
        self.assertEqual(self.breaker.state, CLOSED)
        self.breaker.succeeded()
        self.fail(1)
        self.clock.advance(SPAN)
        self.fail(1)
        self.assertEqual(self.breaker.state, OPEN)

    def test_half_open_probe(self):
        """
        After the backoff one delivery may go (waiters fire); its failure
        opens the circuit for twice as long, its success closes it and
        resets the backoff.
        """
        self.fail(THRESHOLD)
        waiting = self.breaker.admitted()
        self.assertNoResult(waiting)
        self.clock.advance(1.0)
        self.successResultOf(waiting)
        self.assertEqual(self.breaker.state, HALF_OPEN)
        self.assertIsNone(self.breaker.admitted())
        self.fail(1)
        self.assertEqual(self.breaker.state, OPEN)
        self.assertEqual(self.breaker.retry_at, 1.0 + 2.0)
        self.clock.advance(2.0)
        self.breaker.succeeded()
        self.assertEqual(self.breaker.state, CLOSED)
        self.assertEqual(self.watcher.seen, [("opened", OPEN), ("half-open", HALF_OPEN),
                                             ("half-open", HALF_OPEN), ("closed", CLOSED)])
        self.fail(THRESHOLD)
        self.assertEqual(self.breaker.retry_at, self.clock.seconds() + 1.0)
        self.assertEqual(self.breaker.opens, 2)

    def test_late_answers_while_open(self):
        """
        Deliveries that were under way when the circuit opened may still
        end: a failure is counted, a success changes nothing until the
        probe.
        """
        self.fail(THRESHOLD)
        self.breaker.succeeded()
        self.breaker.failed("late")
        self.assertEqual(self.breaker.state, OPEN)
        self.assertEqual(self.breaker.reason, "late")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_reset_closes_and_releases(self):
        self.fail(THRESHOLD)
        waiting = self.breaker.admitted()
        self.breaker.reset()
        self.successResultOf(waiting)
        self.assertEqual(self.breaker.state, CLOSED)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.fail(THRESHOLD)
        self.assertEqual(self.breaker.retry_at, self.clock.seconds() + 1.0)

    def test_cancelled_wait_is_withdrawn(self):
        self.fail(THRESHOLD)
        waiting = self.breaker.admitted()
        waiting.cancel()
        self.failureResultOf(waiting, defer.CancelledError)
        self.clock.advance(1.0)
        self.assertEqual(self.breaker.state, HALF_OPEN)

    def test_observer_failure_is_logged(self):
        class Broken:
            def breaker_opened(self, breaker):
                raise RuntimeError("observer bug")

        self.breaker.add_observer(Broken())
        self.fail(THRESHOLD)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.watcher.seen, [("opened", OPEN)])


class Claim:
    def __init__(self):
        self.settled = []

    def done(self, change):
        self.settled.append(("done", change.id))

    def retry(self, change, reason, retry_after):
        self.settled.append(("retry", change.id))

    def reject(self, change, reason):
        self.settled.append(("reject", change.id))


def change(i, claim):
    return Change(i, "t", f"k{i}", 0, 0.0, "{}", {}, claim=claim)


class Failing(Component):
    """
    Fails the events whose id (or payload) is in C{bad}: raises C{error}.
    """

    def __init__(self, bad, error=ValueError, **kwargs):
        super().__init__(**kwargs)
        self.bad = set(bad)
        self.error = error
        self.executed = []

    def execute(self, event):
        ident = event.id if event.kind == "change" else event.payload
        self.executed.append(ident)
        if ident in self.bad:
            raise self.error(f"bad {ident}")


class IsolationTests(unittest.TestCase):
    """
    One failure, one consequence.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.log = capture_log(self)
        self.claim = Claim()

    def test_a_failing_change_never_pauses_the_others(self):
        """
        Changes that raise are released on their own schedule and the
        processor goes straight on: no timer, no pause.
        """
        c = Failing({2, 5, 9}, clock=self.clock)
        c.startService()
        c.notification_pipe.put_many([change(i, self.claim) for i in range(1, 11)])
        self.assertEqual(c.executed, list(range(1, 11)))
        self.assertEqual([s for s in self.claim.settled if s[0] == "retry"],
                         [("retry", 2), ("retry", 5), ("retry", 9)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(c.breaker.state, CLOSED)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 3)

    def test_retry_of_a_change_never_pauses_the_others(self):
        c = Failing({1}, error=lambda text: Retry(text, retry_after=30), clock=self.clock)
        c.startService()
        c.notification_pipe.put_many([change(i, self.claim) for i in (1, 2)])
        self.assertEqual(self.claim.settled, [("retry", 1), ("done", 2)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failures_in_a_row_open_the_circuit(self):
        """
        Everything failing (the dependency is down): after THRESHOLD
        failures in a row the processor waits; one probe after the backoff;
        the dependency back, the probe succeeds and the rest goes on.
        """
        c = Failing(set(range(1, 100)), error=lambda text: Retry("connection refused"),
                    clock=self.clock)
        c.startService()
        c.notification_pipe.put_many([change(i, self.claim) for i in range(1, 11)])
        self.assertEqual(c.executed, [1, 2, 3, 4, 5])
        self.assertEqual(c.breaker.state, OPEN)
        self.clock.advance(c.breaker.retry_at - self.clock.seconds())
        self.assertEqual(c.executed, [1, 2, 3, 4, 5, 6])
        self.assertEqual(c.breaker.state, OPEN)
        c.bad.clear()
        self.clock.advance(c.breaker.retry_at - self.clock.seconds())
        self.assertEqual(c.executed, list(range(1, 11)))
        self.assertEqual(c.breaker.state, CLOSED)

    def test_a_batch_with_some_done_is_a_success(self):
        """
        Per-event retries in a batch in which other events were done (a
        bulk answer with a few 429s) never open the circuit.
        """
        def outcome(batch):
            result = BatchOutcome()
            result.retry_event(batch[0], "429")
            return result

        class Bulk(Component):
            max_batch = 10

            def execute(self, batch):
                return outcome(batch)

        c = Bulk(clock=self.clock)
        c.startService()
        for first in range(0, 100, 10):
            c.notification_pipe.put_many([change(i, self.claim) for i in range(first, first + 10)])
        self.assertEqual(c.breaker.state, CLOSED)
        self.assertEqual(len([s for s in self.claim.settled if s[0] == "retry"]), 10)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_batch_with_nothing_done_is_a_failure(self):
        def outcome(batch):
            result = BatchOutcome()
            for event in batch:
                result.retry_event(event, "429")
            return result

        class Throttled(Component):
            max_batch = 10

            def execute(self, batch):
                return outcome(batch)

        c = Throttled(clock=self.clock)
        c.startService()
        for first in range(0, 100, 10):
            c.notification_pipe.put_many([change(i, self.claim) for i in range(first, first + 10)])
        self.assertEqual(c.breaker.state, OPEN)

    def test_poison_retried_alone_never_opens(self):
        """
        Changes that failed before failing again (poison, on their own
        schedule toward the dead letters) say nothing about the dependency:
        however many fail in a row, the circuit stays closed and each is
        released, its delivery counted.
        """
        c = Failing(set(range(100)), clock=self.clock)
        c.startService()
        c.queue.put_many([Change(i, "t", f"k{i}", 1, 0.0, "{}", {}, claim=self.claim)
                          for i in range(20)])
        self.assertEqual(c.breaker.state, CLOSED)
        self.assertEqual(self.claim.settled, [("retry", i) for i in range(20)])
        self.flushLoggedErrors(ValueError)

    def test_connection_errors_of_retried_changes_open(self):
        """
        A refused connection speaks of the other side whatever the change's
        history: changes that failed before and now fail with it still open
        the circuit (a dependency down with only a few changes pending).
        """
        c = Failing(set(range(100)), error=ConnectionRefusedError, clock=self.clock)
        c.startService()
        c.queue.put_many([Change(i, "t", f"k{i}", 3, 0.0, "{}", {}, claim=self.claim)
                          for i in range(THRESHOLD)])
        self.assertEqual(c.breaker.state, OPEN)
        self.flushLoggedErrors(ConnectionRefusedError)

    def test_unavailable_while_probing_is_given_back(self):
        """
        The other side down (Unavailable): the probe's change is given back,
        its delivery not counted; a plain failure of a change while probing
        is counted.
        """
        class Claims(Claim):
            def give_back(self, change):
                self.settled.append(("given back", change.id))

        claim = Claims()
        c = Failing(set(range(100)), error=lambda text: Unavailable("down"), clock=self.clock)
        c.startService()
        c.queue.put_many([change(i, claim) for i in range(6)])
        self.assertEqual(c.breaker.state, OPEN)
        self.clock.advance(c.breaker.retry_at - self.clock.seconds())
        self.assertEqual(claim.settled[-1], ("given back", 5))

    def test_rejections_are_answers(self):
        """
        A processor rejecting everything (the other side answered "never")
        dead-letters each change; nothing is down.
        """
        c = Failing(set(range(1, 100)), error=Reject, clock=self.clock)
        c.startService()
        c.notification_pipe.put_many([change(i, self.claim) for i in range(1, 21)])
        self.assertEqual(c.breaker.state, CLOSED)
        self.assertEqual(len(self.claim.settled), 20)

    def test_poison_among_good_never_opens(self):
        """
        One bad change in ten, always failing: each is retried alone; the
        circuit stays closed.
        """
        c = Failing(set(range(0, 1000, 10)), clock=self.clock)
        c.startService()
        c.notification_pipe.put_many([change(i, self.claim) for i in range(1000)])
        self.assertEqual(len(c.executed), 1000)
        self.assertEqual(c.breaker.state, CLOSED)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.flushLoggedErrors(ValueError)

    def test_failure_lines_are_limited(self):
        """
        A flood of failing changes logs a few lines a second, then one line
        counting those left out.
        """
        c = Failing(set(range(0, 1000, 2)), error=lambda text: Retry(text), clock=self.clock)
        c.startService()
        c.notification_pipe.put_many([change(i, self.claim) for i in range(1000)])
        lines = [formatEvent(e) for e in self.log if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(lines), 5)
        self.clock.advance(1.5)
        c.notification_pipe.put(change(2000, self.claim))
        c.bad.add(2000)
        c.notification_pipe.put(change(2000, self.claim))
        lines = [formatEvent(e) for e in self.log if e.get("log_level") == LogLevel.warn]
        self.assertIn("more like it left out", lines[-1])

    def test_open_circuit_waits_for_notifications_too(self):
        """
        The listener keeps the seed's semantics (the error strategy decides:
        BACKOFF waits, then goes on), and the same breaker applies.
        """
        c = Failing({str(i) for i in range(100)}, clock=self.clock)
        c.startService()
        c.notification_pipe.put_many([Event("notification", "ch", str(i), 1, 0.0) for i in range(10)])
        executed = 0
        while executed < 5:
            self.clock.advance(0.5)
            executed = len(c.executed)
        self.assertEqual(c.breaker.state, OPEN)
        self.flushLoggedErrors(ValueError)

    def test_stop_while_open(self):
        """
        A stop while the circuit is open ends the run at once, leaves no
        timer, and the next run starts closed.
        """
        c = Failing(set(range(100)), error=lambda text: Retry("down"), clock=self.clock)
        c.startService()
        c.notification_pipe.put_many([change(i, self.claim) for i in range(10)])
        self.assertEqual(c.breaker.state, OPEN)
        self.successResultOf(c.stopService())
        self.assertEqual(c.breaker.state, CLOSED)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class StatusTests(unittest.TestCase):
    """
    What /ready and /metrics say of an open circuit.
    """

    def test_ready_says_paused(self):
        from hermes_tx.failover.roles import PRIMARY
        from hermes_tx.status.metrics import ClientCollector
        from hermes_tx.status.readiness import readiness

        clock = task.Clock()
        claim = Claim()
        c = Failing(set(range(100)), error=lambda text: Retry("connection refused"), clock=clock)

        class FakeClient:
            role = PRIMARY
            listener = outbox = None
            processor = c
            queue = c.queue
            running = True

        FakeClient.clock = clock
        c.startService()
        FakeClient.queue = c.queue
        self.assertEqual(readiness(FakeClient)[0], True)
        c.notification_pipe.put_many([change(i, claim) for i in range(10)])
        ready, details = readiness(FakeClient)
        self.assertFalse(ready)
        self.assertIn("processor paused: 5 deliveries failed in a row (last: Retry: connection refused)",
                      details["reason"])
        self.assertRegex(details["reason"], r"; next try in (0\.9|1\.0) s$")  # 1 s, jittered
        metrics = {m.name: m.samples[0].value for m in ClientCollector(FakeClient).collect()
                   if m.name.startswith("hermes_processor_pause")}
        self.assertEqual(metrics, {"hermes_processor_paused": 1, "hermes_processor_pauses": 1})
