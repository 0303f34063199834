"""
L{OnDemand} and the L{Sink} base in memory, on a task.Clock.
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from hermes_tx.outcomes import BatchOutcome, Reject, Retry
from hermes_tx.sinks.base import Sink, SinkError, Unsendable
from hermes_tx.sinks.connecting import CLOSED, CONNECTED, CONNECTING, IDLE, OnDemand
from hermes_tx.sinks.urls import Secrets
from tests.support.sinkdriver import make_changes


class Conn:
    def __init__(self):
        self.alive = True
        self.aborted = False


class OnDemandTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.attempts = []
        self.cancelled = 0

        def connect():
            d = defer.Deferred(lambda _: setattr(self, "cancelled", self.cancelled + 1))
            self.attempts.append(d)
            return d

        def abort(conn):
            conn.aborted = True

        self.od = OnDemand(connect, lambda c: c.alive, abort, self.clock, 5, "x://host")

    def test_one_attempt_shared_then_reused(self):
        first, second = self.od.get(), self.od.get()
        self.assertEqual((len(self.attempts), self.od.state), (1, CONNECTING))
        conn = Conn()
        self.attempts[0].callback(conn)
        self.assertIs(self.successResultOf(first), conn)
        self.assertIs(self.successResultOf(second), conn)
        self.assertEqual(self.od.state, CONNECTED)
        self.assertIs(self.successResultOf(self.od.get()), conn)
        self.assertEqual((len(self.attempts), self.od.connections), (1, 1))

    def test_lost_connection_is_made_again(self):
        d = self.od.get()
        conn = Conn()
        self.attempts[0].callback(conn)
        self.successResultOf(d)
        conn.alive = False
        self.assertEqual(self.od.state, IDLE)
        d = self.od.get()
        self.assertEqual(len(self.attempts), 2)
        self.attempts[1].callback(Conn())
        self.assertIsNot(self.successResultOf(d), conn)
        # Not alive is not closed (an AMQP connection whose channel the
        # broker closed keeps its socket): the old one is aborted.
        self.assertTrue(conn.aborted)

    def test_timeout(self):
        d = self.od.get()
        self.clock.advance(5)
        e = self.failureResultOf(d, Retry).value
        self.assertEqual(str(e), "cannot connect to x://host: no connection within 5 s")
        self.assertEqual((self.cancelled, self.od.state), (1, IDLE))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failure_is_one_line_retry(self):
        d = self.od.get()
        self.attempts[0].errback(ValueError("refused\nsecond line"))
        self.assertEqual(str(self.failureResultOf(d, Retry).value),
                         "cannot connect to x://host: ValueError: refused")

    def test_drop_and_close(self):
        d = self.od.get()
        conn = Conn()
        self.attempts[0].callback(conn)
        self.successResultOf(d)
        self.od.drop()
        self.assertTrue(conn.aborted)
        self.assertEqual(self.od.state, IDLE)
        pending = self.od.get()
        self.od.close()
        self.failureResultOf(pending, Retry)
        self.assertEqual(self.od.state, CLOSED)
        self.failureResultOf(self.od.get(), Retry)
        self.od.drop()
        self.assertEqual(self.od.state, CLOSED)


class FakeSink(Sink):
    kind = "fake"

    def __init__(self, answer, **kwargs):
        Sink.__init__(self, "fake://", Secrets("TOPSECRET"), clock=task.Clock(), **kwargs)
        self.answer = answer
        self.sent = []

    def prepare(self, event):
        if event.key == "bad":
            raise Unsendable("bad one")
        return event.id

    def send(self, events, prepared):
        self.sent.append([prepared[id(e)] for e in events])
        return self.answer(events)


class SinkBaseTests(unittest.TestCase):
    def test_reasons_scrubbed(self):
        sink = FakeSink(lambda ev: defer.fail(Retry("no TOPSECRET here", 4)))
        e = self.failureResultOf(sink.execute(make_changes(2, 1)), Retry).value
        self.assertEqual((str(e), e.retry_after), ("no *** here", 4))
        sink.answer = lambda ev: defer.fail(Reject("TOPSECRET"))
        self.assertEqual(str(self.failureResultOf(sink.execute(make_changes(1, 1)),
                                                  Reject).value), "***")

        def outcome(events):
            o = BatchOutcome()
            o.retry_event(events[0], "TOPSECRET a")
            o.reject_event(events[1], "TOPSECRET b")
            return o

        sink.answer = outcome
        got = self.successResultOf(sink.execute(make_changes(3, 1)))
        self.assertEqual([r for _, r, _ in got.retry] + [r for _, r in got.rejected],
                         ["*** a", "*** b"])
        self.assertEqual((sink.metrics.sent, sink.metrics.retried, sink.metrics.rejected),
                         (1, 3, 2))

    def test_other_errors_pass_through_unless_they_hold_a_secret(self):
        sink = FakeSink(lambda ev: defer.fail(KeyError("x")))
        self.failureResultOf(sink.execute(make_changes(1, 1)), KeyError)
        sink.answer = lambda ev: defer.fail(RuntimeError("TOPSECRET leaked"))
        e = self.failureResultOf(sink.execute(make_changes(1, 1)), SinkError).value
        self.assertEqual(str(e), "RuntimeError: *** leaked")

    def test_unsendable_rejected_alone_even_when_the_rest_is_retried(self):
        sink = FakeSink(lambda ev: defer.fail(Retry("down")))
        changes = make_changes(3, 1)
        changes[1].key = "bad"
        got = self.successResultOf(sink.execute(changes))
        self.assertEqual(got.rejected, [(changes[1], "bad one")])
        self.assertEqual([(e, r) for e, r, _ in got.retry],
                         [(changes[0], "down"), (changes[2], "down")])
        self.assertEqual(sink.sent, [[1, 3]])

    def test_single_event_outcomes_raise(self):
        def outcome(events):
            o = BatchOutcome()
            o.retry_event(events[0], "later", 2)
            return o

        sink = FakeSink(outcome)
        e = self.failureResultOf(sink.execute(make_changes(1, 1)[0]), Retry).value
        self.assertEqual(e.retry_after, 2)
        sink.answer = lambda ev: None
        self.assertIsNone(self.successResultOf(sink.execute(make_changes(1, 1)[0])))

    def test_bad_options(self):
        self.assertRaises(ValueError, FakeSink, None, max_batch=0)
        self.assertRaises(ValueError, FakeSink, None, timeout=0)
        self.assertEqual(FakeSink(None).max_batch, 100)
        self.assertEqual(repr(FakeSink(None)), "<FakeSink fake://>")


class RedisBatchProtocolTests(unittest.TestCase):
    """
    The Redis sink's batch path in memory: replies split anywhere, error
    replies in place, partial answers on a lost connection.
    """

    def setUp(self):
        from twisted.internet.testing import StringTransport

        from hermes_tx.sinks.redis_protocol import RedisBatchProtocol

        self.protocol = RedisBatchProtocol(charset=None, convertNumbers=False)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def test_replies_in_any_chunks(self):
        from hermes_tx.sinks.redis_protocol import command

        d = self.protocol.send_batch([command([b"XADD", b"s", b"*", b"a", b"1"])] * 3)
        self.assertEqual(self.transport.value(),
                         b"*5\r\n$4\r\nXADD\r\n$1\r\ns\r\n$1\r\n*\r\n$1\r\na\r\n$1\r\n1\r\n" * 3)
        wire = b"$3\r\n1-0\r\n-WRONGTYPE bad\r\n$3\r\n3-0\r\n"
        for i in range(len(wire)):  # one byte at a time
            self.assertNoResult(d)
            self.protocol.dataReceived(wire[i:i + 1])
        replies = self.successResultOf(d)
        self.assertEqual(replies[0::2], [b"1-0", b"3-0"])
        self.assertIn("WRONGTYPE", str(replies[1]))

    def test_all_at_once_then_lost_midway(self):
        from hermes_tx.sinks.redis_protocol import BatchLost

        d = self.protocol.send_batch([b"x"] * 2)
        self.protocol.dataReceived(b"$3\r\n1-0\r\n")
        self.protocol.connectionLost(Exception("gone"))
        self.assertEqual(self.failureResultOf(d, BatchLost).value.replies, [b"1-0"])

    def test_cancel_aborts(self):
        d = self.protocol.send_batch([b"x"])
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertTrue(self.transport.disconnecting)
