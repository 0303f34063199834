"""
L{hermes_tx.testing.ProcessorHarness}, the way the docs use it: every
outcome a processor can have, read back; a raising processor needs no
flushLoggedErrors; a stop with an execute still waiting completes.
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from hermes_tx.components import Component
from hermes_tx.outcomes import BatchOutcome, Reject, Retry
from hermes_tx.testing import ProcessorHarness


class Orders(Component):
    """
    A processor of order changes: a missing id is a bug (it raises), a
    negative one can never be processed (Reject), id 13 asks to be tried
    again in 5 s, id 99 never answers.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = []

    def execute(self, event):
        if event.kind == "change":
            data = event.data
        else:
            import json
            data = json.loads(event.payload)
        order = data["id"]
        if order < 0:
            raise Reject(f"order {order} cannot exist")
        if order == 13:
            raise Retry("the warehouse is busy", retry_after=5.0)
        if order == 99:
            return defer.Deferred()
        self.seen.append(order)


class HarnessTests(unittest.TestCase):
    def harness(self, **kwargs):
        harness = ProcessorHarness(Orders(clock=task.Clock(), **kwargs))
        self.addCleanup(harness.stop)
        return harness

    def test_change_outcomes(self):
        harness = self.harness()
        done, rejected, retried, failed = harness.feed(
            harness.change({"id": 7}), harness.change({"id": -1}), harness.change({"id": 13}),
            harness.change({"no": "id"}))
        self.assertEqual((done.outcome, done.delay), ("done", None))
        self.assertEqual(rejected.outcome, "rejected")
        self.assertIn("cannot exist", rejected.reason)
        self.assertEqual((retried.outcome, retried.delay), ("retried", 5.0))
        self.assertEqual(failed.outcome, "retried")
        self.assertTrue(0.045 <= failed.delay <= 0.05, failed.delay)  # 0.05 s, less a jitter
        self.assertIn("KeyError", failed.reason)
        self.assertEqual(harness.processor.seen, [7])
        self.assertEqual(len(harness.errors), 1)  # the bug, kept from trial's log
        self.assertIsInstance(harness.errors[0], KeyError)

    def test_notification_outcomes(self):
        harness = self.harness()
        done = harness.feed(harness.notification('{"id": 1}'))
        self.assertEqual(done.outcome, "done")
        rejected = harness.feed(harness.notification('{"id": -2}'))
        self.assertEqual(rejected.outcome, "rejected")
        failed = harness.feed(harness.notification("not json"), advance=30)
        self.assertEqual(failed.outcome, "failed")
        self.assertIsInstance(failed.reason, ValueError)
        # A notification asking to be retried is executed again (it cannot
        # be fetched again), and the ones after it wait.
        retried = harness.feed(harness.notification('{"id": 13}'))
        self.assertEqual(retried.outcome, "retried")

    def test_stop_with_an_execute_waiting(self):
        harness = self.harness(shutdown_timeout=2.0)
        pending = harness.feed(harness.change({"id": 99}))
        self.assertEqual(pending.outcome, "pending")
        stopped = harness.stop()
        self.assertTrue(stopped.called)
        self.assertFalse(harness.processor.running)

    def test_batches(self):
        class Bulk(Component):
            max_batch = 10

            def execute(self, batch):
                outcome = BatchOutcome()
                outcome.retry_event(batch[1], "429", retry_after=2.0)
                return outcome

        harness = ProcessorHarness(Bulk(clock=task.Clock()))
        self.addCleanup(harness.stop)
        results = harness.feed(*[harness.change({"n": n}, key=str(n)) for n in range(3)])
        self.assertEqual([r.outcome for r in results], ["done", "retried", "done"])
        self.assertEqual(results[1].delay, 2.0)

    def test_a_real_clock_is_refused(self):
        self.assertRaises(ValueError, ProcessorHarness, Orders())
