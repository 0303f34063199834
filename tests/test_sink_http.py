"""
The HTTP pieces of the sinks in memory, on a task.Clock: Retry-After,
status classification, splitting on 413, and the whole-request timeout.
"""

import email.utils

from twisted.internet import defer, error, task
from twisted.trial import unittest
from twisted.web.http_headers import Headers

from hermes_tx.outcomes import BatchOutcome, Reject, Retry
from hermes_tx.sinks.http import (
    MAX_RETRY_AFTER, PayloadTooLarge, check_status, parse_retry_after, send_in_halves)
from hermes_tx.sinks.webhook import WebhookSink
from tests.support.sinkdriver import make_changes

NOW = 1_800_000_000.0


class RetryAfterTests(unittest.TestCase):
    def test_seconds(self):
        self.assertEqual(parse_retry_after("120", NOW), 120)
        self.assertEqual(parse_retry_after(" 0 ", NOW), 0)
        self.assertEqual(parse_retry_after("1.5", NOW), 1.5)
        self.assertEqual(parse_retry_after("-5", NOW), 0)

    def test_capped(self):
        self.assertEqual(parse_retry_after("999999999", NOW), MAX_RETRY_AFTER)
        self.assertEqual(parse_retry_after("60", NOW, cap=10), 10)
        self.assertEqual(parse_retry_after("inf", NOW), MAX_RETRY_AFTER)

    def test_http_date(self):
        self.assertEqual(parse_retry_after(email.utils.formatdate(NOW + 30, usegmt=True), NOW), 30)
        self.assertEqual(parse_retry_after(email.utils.formatdate(NOW - 30, usegmt=True), NOW), 0)

    def test_unusable(self):
        for value in (None, "", "soon", "nan", "Mon, 99 Foo 2020 99:99:99 GMT"):
            self.assertIsNone(parse_retry_after(value, NOW), value)


class CheckStatusTests(unittest.TestCase):
    def check(self, status, headers=None, body=b""):
        return check_status(status, Headers(headers or {}), body, NOW)

    def test_2xx(self):
        self.assertIsNone(self.check(200))
        self.assertIsNone(self.check(204))

    def test_retry_after_honoured_on_429_and_503(self):
        e = self.assertRaises(Retry, self.check, 503, {"Retry-After": ["7"]}, b"busy\n")
        self.assertEqual((str(e), e.retry_after), ("HTTP 503: busy", 7))
        date = email.utils.formatdate(NOW + 12, usegmt=True)
        self.assertEqual(self.assertRaises(Retry, self.check, 429, {"Retry-After": [date]})
                         .retry_after, 12)

    def test_other_retries(self):
        for status in (500, 502, 504, 408, 425):
            self.assertIsNone(self.assertRaises(Retry, self.check, status,
                                                {"Retry-After": ["7"]}).retry_after)
        self.assertIsNone(self.assertRaises(Retry, self.check, 429).retry_after)

    def test_rejects(self):
        for status in (400, 401, 403, 404, 422, 301):
            self.assertNotIsInstance(self.assertRaises(Reject, self.check, status),
                                     PayloadTooLarge)
        self.assertRaises(PayloadTooLarge, self.check, 413)

    def test_long_body_one_short_line(self):
        e = self.assertRaises(Reject, self.check, 400, None, b"line\n" * 1000)
        self.assertNotIn("\n", str(e))
        self.assertLess(len(str(e)), 220)


class SplitTests(unittest.TestCase):
    def test_split_down_to_single_events(self):
        sent = []

        def send(events):
            if len(events) > 2:
                return defer.fail(PayloadTooLarge("HTTP 413"))
            if "big" in events:
                return defer.fail(PayloadTooLarge("HTTP 413"))
            sent.append(list(events))
            return defer.succeed(None)

        events = ["a", "b", "c", "big", "d", "e", "f"]
        outcome = self.successResultOf(send_in_halves(send, events))
        self.assertEqual(sent, [["a"], ["b", "c"], ["d"], ["e", "f"]])
        self.assertEqual(outcome.rejected, [("big", "HTTP 413")])
        self.assertEqual(outcome.retry, [])

    def test_retry_of_a_half_retries_the_rest_unsent(self):
        sent = []

        def send(events):
            sent.append(list(events))
            if len(events) > 2:
                return defer.fail(PayloadTooLarge("HTTP 413"))
            return defer.fail(Retry("down", 3))

        outcome = self.successResultOf(send_in_halves(send, ["a", "b", "c", "d"]))
        self.assertEqual(sent, [["a", "b", "c", "d"], ["a", "b"]])
        self.assertEqual([(e, after) for e, _, after in outcome.retry],
                         [("a", 3), ("b", 3), ("c", 3), ("d", 3)])

    def test_not_split_passes_outcome_through(self):
        outcome = BatchOutcome()
        self.assertIs(self.successResultOf(send_in_halves(lambda ev: defer.succeed(outcome),
                                                          ["a"])), outcome)
        self.failureResultOf(send_in_halves(lambda ev: defer.fail(PayloadTooLarge("x")),
                                            ["a"]), PayloadTooLarge)


class FakeAgent:
    """An IAgent whose requests never answer (or fail as told)."""

    def __init__(self, fail_with=None):
        self.fail_with = fail_with
        self.requests = []
        self.cancelled = 0

    def request(self, method, uri, headers=None, bodyProducer=None):
        self.requests.append((method, uri, headers))
        if self.fail_with is not None:
            return defer.fail(self.fail_with)

        def cancel(d):
            self.cancelled += 1

        return defer.Deferred(cancel)


class WebhookClockTests(unittest.TestCase):
    def test_timeout_cancels_the_request_and_retries(self):
        clock, agent = task.Clock(), FakeAgent()
        sink = WebhookSink("http://h/x", timeout=5, clock=clock, agent=agent)
        d = sink.execute(make_changes(2, 1))
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        e = self.failureResultOf(d, Retry).value
        self.assertEqual(str(e), "no complete answer within 5 s")
        self.assertEqual(agent.cancelled, 1)
        self.assertEqual((sink.metrics.requests, sink.metrics.failures, sink.metrics.retried),
                         (1, 1, 2))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_connection_refused_retries(self):
        agent = FakeAgent(error.ConnectionRefusedError("nope"))
        sink = WebhookSink("http://h/x", clock=task.Clock(), agent=agent)
        e = self.failureResultOf(sink.execute(make_changes(1, 1)), Retry).value
        self.assertIn("ConnectionRefusedError", str(e))
        self.assertEqual(e.retry_after, None)

    def test_only_start_and_resync_sends_nothing(self):
        from hermes_tx.events import Event

        agent = FakeAgent()
        sink = WebhookSink("http://h/x", clock=task.Clock(), agent=agent)
        self.assertIsNone(self.successResultOf(sink.execute([Event("start"), Event("resync")])))
        self.assertEqual(agent.requests, [])
