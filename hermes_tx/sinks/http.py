# -*- test-case-name: tests.test_sink_http -*-
"""
HTTP pieces shared by the webhook and Elasticsearch sinks: one persistent
connection pool per sink, a POST with a deadline on the whole exchange
(request, answer and body), bodies always read, statuses classified into
the outcomes of L{hermes_tx.outcomes}, C{Retry-After} parsed, and batches
split in halves on C{413 Payload Too Large}.
"""

import email.utils

from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, HTTPConnectionPool, PotentialDataLoss, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from hermes_tx.exceptions import one_line
from hermes_tx.outcomes import BatchOutcome, Reject, Retry
from hermes_tx.sinks.base import merge, whole, within

#: the longest C{Retry-After} honoured, in seconds, unless a sink says else
MAX_RETRY_AFTER = 300.0
#: the largest response body read, in bytes; a larger one aborts the request
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: statuses retried as they are (besides 5xx): request timeout, too early,
#: too many requests
RETRY_STATUSES = frozenset([408, 425, 429])


class PayloadTooLarge(Reject):
    """
    The server answered C{413}: the batch is too large (see
    L{send_in_halves}); a single event that is too large is rejected.
    """


@implementer(IBodyProducer)
class BytesProducer:
    """
    A request body already in memory, written in one go (treq's default
    producer for bytes feeds it through a cooperator, in slices).
    """

    def __init__(self, body):
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer):
        consumer.write(self.body)
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


def make_client(reactor, timeout, agent=None):
    """
    @param agent: an C{IAgent} to use instead of a pooled one (tests).
    @return: C{(client, pool)}: a treq C{HTTPClient} on a persistent
        L{HTTPConnectionPool} (connect timeout C{timeout}; C{None} with
        C{agent}).
    """
    pool = None
    if agent is None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 2
        agent = Agent(reactor, pool=pool, connectTimeout=timeout)
    return HTTPClient(agent, data_to_body_producer=BytesProducer), pool


def parse_retry_after(value, now, cap=MAX_RETRY_AFTER):
    """
    Read a C{Retry-After} value: delay-seconds or an HTTP date.

    @param value: the header's text, or C{None}.
    @param now: the current time, in seconds since the epoch.
    @param cap: the longest delay returned.
    @return: seconds to wait (at least 0, at most C{cap}), or C{None} when
        there is no usable value.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if moment is None or moment.tzinfo is None:
            return None
        seconds = moment.timestamp() - now
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), cap)


class _BodyReader(Protocol):
    """
    Reads a whole response body (at most C{limit} bytes).
    """

    def __init__(self, limit):
        self.limit = limit
        self.chunks = []
        self.size = 0
        self.done = defer.Deferred(self._cancel)

    def _cancel(self, d):
        if self.transport is not None:
            self.transport.stopProducing()  # aborts the connection

    def dataReceived(self, data):
        self.size += len(data)
        if self.size > self.limit:
            self.chunks = []
            if not self.done.called:
                self.done.errback(Retry(f"response body larger than {self.limit} bytes"))
            self.transport.stopProducing()
            return
        self.chunks.append(data)

    def connectionLost(self, reason):
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


def read_body(response, limit=MAX_RESPONSE_BYTES):
    """
    @return: a Deferred firing with the whole body of C{response}; it fails
        with L{Retry} past C{limit} bytes.  Cancelling it aborts the
        connection.
    """
    if response.length == 0:
        return defer.succeed(b"")
    reader = _BodyReader(limit)
    response.deliverBody(reader)
    return reader.done


@defer.inlineCallbacks
def post(sink, client, url, body, headers):
    """
    POST C{body} to C{url}, reading the whole answer within
    C{sink.timeout} seconds on C{sink.clock}, counting it in
    C{sink.metrics}.

    @param headers: a dict of header name to value (text).
    @return: a Deferred firing with C{(status, headers, body)}.
    @raise Retry: timed out, or the connection failed or was lost.
    """
    clock = sink.clock
    started = clock.seconds()
    raw = Headers({k.encode("latin-1"): [v.encode("latin-1")] for k, v in headers.items()})
    d = client.request("POST", url, data=body, headers=raw, unbuffered=True,
                       allow_redirects=False)
    d.addCallback(lambda response: read_body(response).addCallback(
        lambda content: (response.code, response.headers, content)))
    within(d, sink.timeout, clock)
    try:
        status, answer_headers, content = yield d
    except Exception as e:
        sink.metrics.observe(clock.seconds() - started, failed=True)
        if isinstance(e, defer.TimeoutError):
            raise Retry(f"no complete answer within {sink.timeout:g} s") from None
        if isinstance(e, Retry):
            raise
        raise Retry(f"request failed: {_reason(e)}") from None
    sink.metrics.observe(clock.seconds() - started, failed=not 200 <= status < 300)
    return status, answer_headers, content


def _reason(error):
    """
    @return: one line for a Twisted web error, whose C{reasons} hold the
        failures that matter (C{ResponseNeverReceived} and friends).
    """
    reasons = getattr(error, "reasons", None)
    if reasons:
        return f"{type(error).__name__}: " + "; ".join(one_line(r.value) for r in reasons)
    return one_line(error)


def check_status(status, headers, content, now, max_retry_after=MAX_RETRY_AFTER):
    """
    Classify a non-2xx answer: C{413} raises L{PayloadTooLarge}; 408, 425,
    429 and 5xx raise L{Retry} (429 and 503 honour C{Retry-After}); any other
    status (3xx, 4xx) raises L{Reject}.  A 2xx returns.
    """
    if 200 <= status < 300:
        return
    why = f"HTTP {status}" + snippet(content)
    if status == 413:
        raise PayloadTooLarge(why)
    if status in RETRY_STATUSES or 500 <= status < 600:
        after = None
        if status in (429, 503):
            values = headers.getRawHeaders(b"retry-after") or [b""]
            after = parse_retry_after(values[0].decode("latin-1"), now, max_retry_after)
        raise Retry(why, after)
    raise Reject(why)


def snippet(content, length=200):
    """
    @return: C{": "} and the first C{length} characters of a response body
        on one line, or C{""} for an empty one.
    """
    text = content[:length * 4].decode("utf-8", "replace")
    text = " ".join(text.split())[:length]
    return f": {text}" if text else ""


@defer.inlineCallbacks
def send_in_halves(send, events):
    """
    C{send(events)}; when it fails with L{PayloadTooLarge}, send each half
    the same way (down to single events, which are then rejected).  After a
    half is retried as a whole the rest is retried too without being sent.

    @param send: a callable taking a list of events and returning a
        Deferred of C{None} or a L{BatchOutcome}.
    @return: a Deferred of C{None} or a L{BatchOutcome}; it fails with
        L{Retry} or L{Reject} only when the batch was not split.
    """
    try:
        return (yield send(events))
    except PayloadTooLarge:
        if len(events) == 1:
            raise
    middle = len(events) // 2
    outcome = BatchOutcome()
    halves = [events[:middle], events[middle:]]
    for i, half in enumerate(halves):
        try:
            merge(outcome, (yield send_in_halves(send, half)))
        except (Retry, Reject) as e:
            merge(outcome, whole(half, e))
            if isinstance(e, Retry):
                for rest in halves[i + 1:]:
                    merge(outcome, whole(rest, e))
                break
    return outcome
