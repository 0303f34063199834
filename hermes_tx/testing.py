# -*- test-case-name: tests.test_testing -*-
"""
Testing a processor with trial, without a server: L{ProcessorHarness}
feeds it events on a C{task.Clock} and says what became of each one::

    from twisted.internet import task
    from twisted.trial import unittest

    from hermes_tx.testing import ProcessorHarness

    class OrdersTests(unittest.TestCase):
        def test_an_order(self):
            harness = ProcessorHarness(Orders(clock=task.Clock()))
            self.addCleanup(harness.stop)
            result = harness.feed(harness.change({"id": 7}, key="7"))
            self.assertEqual(result.outcome, "done")

Build the processor with C{clock=task.Clock()} (every delay of a component
runs on its clock); the harness starts it and advances that clock for you.
Outbox changes go through the real acknowledgement bookkeeping, so a
change's L{Result} says what the outbox would be told: C{done}
(acknowledged), C{retried} (released, with the delay it waits), C{rejected}
(moved to the dead letters) or C{given back} (its delivery not counted: it
failed while the processor's circuit breaker was open).  Notifications say
C{done}, C{retried} (executed again later), C{rejected} (skipped) or
C{failed} (the exception went to the error strategy).  What the processor
logs is kept in L{ProcessorHarness.lines} and L{ProcessorHarness.errors}
rather than the global log, so a processor that raises does not make trial
report logged errors (no C{flushLoggedErrors} needed).
"""

import itertools
from collections import namedtuple

from twisted.internet import defer, task
from twisted.logger import Logger, formatEvent

from hermes_tx.events import Change, Event
from hermes_tx.outbox.claims import Claim, Ledger
from hermes_tx.sinks.records import encode

#: What became of one event.
#:   - C{outcome}: C{"done"}, C{"retried"}, C{"rejected"}, C{"given back"},
#:     C{"failed"}, or C{"pending"} (still being processed);
#:   - C{delay}: for a retried change, the seconds it waits in the outbox;
#:   - C{reason}: the reason (text) of a retry or a rejection, or the
#:     exception of a failure.
Result = namedtuple("Result", "event outcome delay reason")

_OUTCOMES = {"ack": "done", "release": "retried", "dead": "rejected", "unclaim": "given back"}


class _Writes:
    """
    Stands for the outbox's connection: records what the ledger writes.
    """

    def __init__(self):
        self.written = []

    def __call__(self, owed):
        from collections import Counter

        self.written.extend(owed)
        return defer.succeed((Counter(), Counter(), Counter(), [], set()))


class ProcessorHarness:
    """
    A processor (a L{hermes_tx.components.Component}) started on its own
    queue and a C{task.Clock}, events fed to it, their outcomes read back.

    @ivar processor: the processor.
    @ivar clock: its clock (a C{task.Clock}).
    @ivar lines: what it logged, one formatted line each.
    @ivar errors: the exceptions it logged as failures (an unexpected error
        handed to its error strategy, say).
    """

    def __init__(self, processor):
        """
        @param processor: a component built with C{clock=task.Clock()}; it
            must not be started yet.
        @raise ValueError: its clock is not a C{task.Clock}.
        """
        if not isinstance(processor.clock, task.Clock):
            raise ValueError("build the processor with clock=task.Clock() to test it with "
                             "ProcessorHarness")
        self.processor = processor
        self.clock = processor.clock
        self.lines = []
        self.errors = []
        self._notified = {}  # id(event) -> last (outcome, detail) told
        self._writes = _Writes()
        self._ledger = Ledger(self.clock)
        self._ledger.writer = self._writes
        self._ids = itertools.count(1)
        processor.log = Logger(namespace=type(processor).__module__, observer=self._logged)
        processor.outcome_observer = self._told
        processor.startService()

    def _logged(self, event):
        self.lines.append(formatEvent(event))
        failure = event.get("log_failure")
        if failure is not None:
            self.errors.append(failure.value)

    def _told(self, event, outcome, detail):
        self._notified[id(event)] = (outcome, detail)

    # -- events ----------------------------------------------------------------

    def notification(self, payload, channel="channel", pid=1):
        """
        @return: a C{"notification"} L{Event} as the listener makes them.
        """
        return Event("notification", channel, payload, pid, self.clock.seconds())

    def change(self, data, topic="topic", key="key", attempts=0, id=None):
        """
        @param data: the change's payload, as a JSON-able value (a capture's
            C{{"op": ..., "new": ..., "old": ...}}, or what C{emit} wrote).
        @return: an outbox L{Change} as the consumer hands them, claimed
            for this harness.
        """
        change_id = next(self._ids) if id is None else id
        change = Change(change_id, topic, key, attempts, self.clock.seconds(), encode(data),
                        claim=Claim(self._ledger, f"harness-{change_id}"))
        self._ledger.add(change)
        return change

    def feed(self, *events, advance=0.0):
        """
        Queue C{events}, let the processor work (advancing the clock by
        C{advance} seconds, in steps, so that retries and timeouts happen),
        and say what became of each.

        @return: one L{Result}, or a list of them for several events.
        """
        self.processor.queue.put_many(list(events))
        self.advance(advance)
        results = [self.result(event) for event in events]
        return results[0] if len(results) == 1 else results

    def advance(self, seconds=0.0):
        """
        Move the clock on by C{seconds} (0: just run what is due now), in
        steps of at most a tenth of a second.
        """
        self.clock.advance(0)
        remaining = seconds
        while remaining > 0:
            step = min(0.1, remaining)
            self.clock.advance(step)
            remaining -= step
        self._ledger.flush()

    def result(self, event):
        """
        @return: the L{Result} of C{event} so far.
        """
        if type(event) is Change:
            token = event.claim.token
            for kind, written_token, change, delay, reason in reversed(self._writes.written):
                if change.id == event.id and written_token == token:
                    return Result(event, _OUTCOMES[kind], delay, reason)
            return Result(event, "pending", None, None)
        told = self._notified.get(id(event))
        if told is None:
            return Result(event, "pending", None, None)
        outcome, detail = told
        return Result(event, outcome, None, detail)

    # -- the end ----------------------------------------------------------------

    def stop(self):
        """
        Stop the processor: what is in progress gets its C{shutdown_timeout}
        on the clock, which the harness advances, so the stop always
        completes.

        @return: a Deferred that has fired.
        """
        if not self.processor.running:
            return defer.succeed(None)
        stopped = self.processor.stopService()
        timeout = getattr(self.processor, "shutdown_timeout", None) or 0.0
        waited = 0.0
        while not stopped.called and waited <= timeout:
            self.clock.advance(0.1)
            waited += 0.1
        return stopped
