"""
Tests for L{hermes_tx.sinks.check.SinkCheck} and
L{hermes_tx.runtime.breaker.Breaker.down}, in memory on a L{task.Clock}: a
sink whose C{check} the test answers finds its dependency down at start
(nothing pending, nothing delivered), pauses at once with one line and
C{/ready} 503, checks again when its circuit half-opens while idle, and
closes it when the check passes.  The real servers (Redis, RabbitMQ,
C{twistd hermes}) are in tests.test_sink_redis and tests.test_sink_amqp.
"""

from twisted.internet import defer, task
from twisted.logger import LogLevel, formatEvent
from twisted.trial import unittest

from hermes_tx.failover.roles import PRIMARY
from hermes_tx.outcomes import Retry
from hermes_tx.runtime.breaker import CLOSED, HALF_OPEN, OPEN
from hermes_tx.runtime.queue import EventQueue
from hermes_tx.sinks.base import Sink
from hermes_tx.status.readiness import readiness
from tests.support.shared import capture_log

REFUSED = "authentication refused by redis://:***@127.0.0.1:6390/0: WRONGPASS invalid password"


class Checked(Sink):
    """
    A sink whose every check is a Deferred the test answers.
    """

    kind = "checked"

    def __init__(self, **kwargs):
        Sink.__init__(self, "checked://somewhere", **kwargs)
        self.asked = []

    def check(self):
        d = defer.Deferred()
        self.asked.append(d)
        return d

    def prepare(self, event):
        return event

    def send(self, events, prepared):
        return None


class SinkCheckTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.log = capture_log(self)
        self.sink = Checked(clock=self.clock, backoff_limit=16)
        self.sink.queue = EventQueue()

    def warnings(self):
        return [formatEvent(e) for e in self.log if e.get("log_level") == LogLevel.warn]

    def ready(self):
        clock = self.clock

        class FakeClient:
            role = PRIMARY
            listener = outbox = None
            processor = self.sink
            running = True

        FakeClient.clock = clock
        self.sink.running = True
        return readiness(FakeClient)

    def test_refused_at_start_pauses_at_once(self):
        """
        The check at start fails: the circuit opens without any delivery,
        one line naming the cause, /ready 503 saying it.
        """
        self.sink.set_up()
        self.assertEqual(len(self.sink.asked), 1)
        self.assertEqual(self.sink.breaker.state, CLOSED)
        self.sink.asked[0].errback(Retry(REFUSED))
        breaker = self.sink.breaker
        self.assertEqual((breaker.state, breaker.reason, breaker.checked), (OPEN, REFUSED, True))
        (line,) = self.warnings()
        self.assertIn(f"Checked: {REFUSED}; pausing, next try in", line)
        ready, details = self.ready()
        self.assertFalse(ready)
        self.assertEqual(details["processor"], "paused")
        self.assertTrue(details["reason"].startswith(f"processor paused: {REFUSED}; next try in "),
                        details["reason"])

    def test_idle_half_open_checks_again(self):
        """
        With nothing pending, each half-open circuit is probed by a check:
        a failure opens it for longer (no new line), a success closes it
        (/ready 200).
        """
        self.sink.set_up()
        self.sink.asked[0].errback(Retry(REFUSED))
        first = self.sink.breaker.retry_at - self.clock.seconds()
        self.clock.advance(first)
        self.assertEqual(self.sink.breaker.state, HALF_OPEN)
        self.assertEqual(len(self.sink.asked), 2)
        self.sink.asked[1].errback(Retry(REFUSED))
        self.assertEqual(self.sink.breaker.state, OPEN)
        self.assertGreater(self.sink.breaker.retry_at - self.clock.seconds(), first)
        self.assertEqual(len(self.warnings()), 1)
        self.clock.advance(self.sink.breaker.retry_at - self.clock.seconds())
        self.sink.asked[2].callback(object())
        self.assertEqual(self.sink.breaker.state, CLOSED)
        self.assertEqual(self.ready()[0], True)
        self.assertEqual(self.sink.breaker.failures, 0)

    def test_a_pending_event_probes_instead(self):
        """
        Half-open with events pending: the delivery probes, no check.
        """
        self.sink.set_up()
        self.sink.asked[0].errback(Retry(REFUSED))
        self.sink.queue.put("an event")
        self.clock.advance(self.sink.breaker.retry_at - self.clock.seconds())
        self.assertEqual(self.sink.breaker.state, HALF_OPEN)
        self.assertEqual(len(self.sink.asked), 1)

    def test_a_passing_check_changes_nothing(self):
        """
        A check that passes while the circuit is closed leaves the count
        of failed deliveries alone.
        """
        self.sink.set_up()
        self.sink.breaker.failed("one failed delivery")
        self.sink.asked[0].callback(object())
        self.assertEqual((self.sink.breaker.state, self.sink.breaker.failures), (CLOSED, 1))

    def test_stopped_check_is_abandoned(self):
        """
        tear_down abandons the check in flight; its late failure opens
        nothing, and a half-open circuit is not checked after it.
        """
        self.sink.set_up()
        check = self.sink.asked[0]
        self.sink.tear_down()
        self.assertTrue(check.called)  # cancelled
        self.assertEqual(self.sink.breaker.state, CLOSED)
        self.sink.breaker.down("found down elsewhere")
        self.clock.advance(60)
        self.assertEqual(len(self.sink.asked), 1)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_one_check_at_a_time(self):
        self.sink.set_up()
        self.sink.set_up()
        self.assertEqual(len(self.sink.asked), 1)

    def test_a_sink_with_nothing_to_check(self):
        sink = Sink("plain://x", clock=self.clock)
        sink.set_up()
        self.assertEqual((sink.checking.checks, sink.breaker.state), (0, CLOSED))

    def test_down_while_open_or_half_open(self):
        """
        Breaker.down when already open counts, and keeps it open; when
        half-open, opens it again for longer.
        """
        breaker = self.sink.breaker
        breaker.down("first")
        opened = breaker.retry_at
        breaker.down("second")
        self.assertEqual((breaker.state, breaker.retry_at, breaker.failures), (OPEN, opened, 2))
        self.clock.advance(opened - self.clock.seconds())
        self.assertEqual(breaker.state, HALF_OPEN)
        breaker.down("third")
        self.assertEqual((breaker.state, breaker.reason, breaker.opens), (OPEN, "third", 1))
