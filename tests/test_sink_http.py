"""
The HTTP pieces of the sinks in memory, on a task.Clock: Retry-After,
the status table, splitting refused batches, the rule that keeps innocent
changes out of the dead letters, and the whole-request timeout.
"""

import email.utils
import json

from twisted.internet import defer, error, task
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers

from hermes_tx.events import Event
from hermes_tx.outcomes import BatchOutcome, Reject, Retry
from hermes_tx.sinks.http import send_in_halves
from hermes_tx.sinks.httpsink import HELD_BACK
from hermes_tx.sinks.statuses import MAX_RETRY_AFTER, Refused, check_status, parse_retry_after
from hermes_tx.sinks.webhook import WebhookSink
from tests.support.sinkdriver import make_changes

NOW = 1_800_000_000.0
TARGET = "http://h/hook?token=***"


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
        return check_status(status, Headers(headers or {}), body, NOW, TARGET)

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
        for status in (500, 502, 504, 408, 425, 501):
            e = self.assertRaises(Retry, self.check, status, {"Retry-After": ["7"]})
            self.assertEqual((str(e), e.retry_after), (f"HTTP {status}", None))
        self.assertIsNone(self.assertRaises(Retry, self.check, 429).retry_after)

    def test_content_refused_splits(self):
        for status in (400, 413, 422):
            e = self.assertRaises(Refused, self.check, status, None, b"bad event")
            self.assertEqual((e.status, str(e)), (status, f"HTTP {status}: bad event"))

    def test_not_the_events_fault_is_a_retry_with_one_clear_line(self):
        """
        Credentials refused, no such endpoint, a redirect, any other 4xx:
        the batch is retried as a whole (never rejected), one line naming
        the cause.
        """
        lines = {status: str(self.assertRaises(Retry, self.check, status,
                                               {"Location": ["https://h/new"]}, b"go away"))
                 for status in (401, 403, 407, 404, 405, 410, 301, 308, 409, 415, 418, 451)}
        self.assertEqual(lines[401], f"authentication refused by {TARGET}: HTTP 401: go away")
        self.assertEqual(lines[407], f"authentication refused by {TARGET}: HTTP 407: go away")
        self.assertEqual(lines[404], f"{TARGET} not found: HTTP 404: go away")
        self.assertEqual(lines[405], f"{TARGET} does not take POST: HTTP 405: go away")
        self.assertEqual(lines[301], f"{TARGET} redirects (HTTP 301 to https://h/new): "
                                     "redirects are not followed, give the sink the final URL")
        self.assertEqual(lines[415], f"{TARGET} refused the request: HTTP 415: go away")
        for line in lines.values():
            self.assertNotIn("\n", line)

    def test_long_body_one_short_line(self):
        e = self.assertRaises(Refused, self.check, 400, None, b"line\n" * 1000)
        self.assertNotIn("\n", str(e))
        self.assertLess(len(str(e)), 220)


class SplitTests(unittest.TestCase):
    def test_split_down_to_single_events(self):
        sent = []

        def send(events):
            if len(events) > 2:
                return defer.fail(Refused("HTTP 413", 413))
            if "big" in events:
                return defer.fail(Refused("HTTP 400", 400))
            sent.append(list(events))
            return defer.succeed(None)

        events = ["a", "b", "c", "big", "d", "e", "f"]
        outcome = self.successResultOf(send_in_halves(send, events))
        self.assertEqual(sent, [["a"], ["b", "c"], ["d"], ["e", "f"]])
        self.assertEqual(outcome.rejected, [("big", "HTTP 400")])
        self.assertEqual(outcome.retry, [])

    def test_retry_of_a_half_retries_the_rest_unsent(self):
        sent = []

        def send(events):
            sent.append(list(events))
            if len(events) > 2:
                return defer.fail(Refused("HTTP 422", 422))
            return defer.fail(Retry("down", 3))

        outcome = self.successResultOf(send_in_halves(send, ["a", "b", "c", "d"]))
        self.assertEqual(sent, [["a", "b", "c", "d"], ["a", "b"]])
        self.assertEqual([(e, after) for e, _, after in outcome.retry],
                         [("a", 3), ("b", 3), ("c", 3), ("d", 3)])

    def test_not_split_passes_outcome_through(self):
        outcome = BatchOutcome()
        self.assertIs(self.successResultOf(send_in_halves(lambda ev: defer.succeed(outcome),
                                                          ["a"])), outcome)
        self.failureResultOf(send_in_halves(lambda ev: defer.fail(Refused("x", 400)),
                                            ["a"]), Refused)
        self.failureResultOf(send_in_halves(lambda ev: defer.fail(Retry("401")), ["a", "b"]),
                             Retry)


class FakeResponse:
    """An IResponse with a body in memory."""

    def __init__(self, code, body=b"", headers=None):
        self.code = code
        self.headers = Headers(headers or {})
        self.body = body
        self.length = len(body)

    def deliverBody(self, protocol):
        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


class ScriptedAgent:
    """
    An IAgent answering each POST with C{script(events)} (the decoded JSON
    body): a status, or C{(status, body)}.
    """

    def __init__(self, script):
        self.script = script
        self.requests = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        events = json.loads(bodyProducer.body)
        self.requests.append((uri, events))
        answer = self.script(events)
        status, body = answer if isinstance(answer, tuple) else (answer, b"")
        return defer.succeed(FakeResponse(status, body))


def ids(events):
    return [e["id"] if e["kind"] == "change" else e["payload"] for e in events]


class HeldBackTests(unittest.TestCase):
    """
    Refused content is split down to the events at fault, and a change is
    dead-lettered only with evidence that the endpoint takes content.
    """

    def sink(self, script):
        self.agent = ScriptedAgent(script)
        return WebhookSink("http://h/hook", clock=task.Clock(), agent=self.agent)

    def test_the_bad_changes_are_found_and_only_they_are_rejected(self):
        bad = {3, 7, 8}
        sink = self.sink(lambda events: 400 if bad & set(ids(events)) else 200)
        changes = make_changes(10, 1)
        outcome = self.successResultOf(sink.execute(changes))
        self.assertEqual(sorted(e.id for e, _ in outcome.rejected), [3, 7, 8])
        self.assertEqual(outcome.retry, [])
        accepted = [i for _, events in self.agent.requests for i in ids(events)
                    if not bad & set(ids(events))]
        self.assertEqual(sorted(accepted), [1, 2, 4, 5, 6, 9, 10])
        self.assertEqual((sink.metrics.sent, sink.metrics.rejected), (7, 3))

    def test_an_endpoint_refusing_everything_dead_letters_nothing(self):
        """
        Every event refused one by one, none accepted: the batch is retried
        as a whole (a systemic failure) after 2n - 1 requests.
        """
        sink = self.sink(lambda events: (422, b"schema mismatch"))
        e = self.failureResultOf(sink.execute(make_changes(8, 1)), Retry).value
        self.assertEqual(str(e), "HTTP 422: schema mismatch" + HELD_BACK)
        self.assertEqual(len(self.agent.requests), 15)
        self.assertEqual((sink.metrics.sent, sink.metrics.rejected, sink.metrics.retried),
                         (0, 0, 8))

    def test_a_single_change_needs_the_previous_batch_accepted(self):
        bad = {1, 3}
        sink = self.sink(lambda events: 400 if bad & set(ids(events)) else 200)
        [first, second, third] = make_changes(3, 1)
        e = self.failureResultOf(sink.execute([first]), Retry).value
        self.assertTrue(str(e).endswith(HELD_BACK))
        self.assertIsNone(self.successResultOf(sink.execute([second])))
        self.assertEqual(str(self.failureResultOf(sink.execute([third]), Reject).value),
                         "HTTP 400")

    def test_a_half_retried_and_a_half_refused_dead_letters_nothing(self):
        def script(events):
            if len(events) > 2:
                return 400
            return 503 if 1 in ids(events) else 400

        sink = self.sink(script)
        outcome = self.successResultOf(sink.execute(make_changes(2, 1, start_id=3)
                                                    + make_changes(2, 1)))
        self.assertEqual(outcome.rejected, [])
        self.assertEqual(sorted(e.id for e, _, _ in outcome.retry), [1, 2, 3, 4])

    def test_notifications_are_not_held_back(self):
        """
        A notification cannot wait for a fixed endpoint (it is executed
        again and again): rejected (logged and skipped) as answered.
        """
        sink = self.sink(lambda events: 400)
        notes = [Event("notification", "ch", f"n{i}", 1) for i in range(2)]
        change = make_changes(1, 1)[0]
        outcome = self.successResultOf(sink.execute(notes + [change]))
        self.assertEqual([e for e, _ in outcome.rejected], notes)
        self.assertEqual([(e, why) for e, why, _ in outcome.retry],
                         [(change, "HTTP 400" + HELD_BACK)])


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
