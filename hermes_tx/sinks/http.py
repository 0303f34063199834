# -*- test-case-name: tests.test_sink_http -*-
"""
HTTP pieces shared by the webhook and Elasticsearch sinks: one persistent
connection pool per sink (on L{hermes_tx.sinks.httpconnect}'s endpoints),
a POST with a deadline on the whole exchange (request, answer and body),
bodies always read, and batches split in halves when the server refuses
their content (L{hermes_tx.sinks.statuses} classifies the answers).
"""

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, HTTPConnectionPool, PotentialDataLoss, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from hermes_tx.exceptions import one_line
from hermes_tx.outcomes import BatchOutcome, Reject, Retry
from hermes_tx.sinks.base import merge, whole, within
from hermes_tx.sinks.httpconnect import EndpointFactory
from hermes_tx.sinks.statuses import Refused

#: the largest response body read, in bytes; a larger one aborts the request
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


@implementer(IBodyProducer)
class BytesProducer:
    """
    A request body already in memory, written in one go.
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


def make_agent(reactor, timeout, agent=None):
    """
    @param agent: an C{IAgent} to use instead of a pooled one (tests).
    @return: C{(agent, pool)}: an C{Agent} on a persistent
        L{HTTPConnectionPool} and L{EndpointFactory} (connect timeout
        C{timeout}); the pool is C{None} with C{agent}.
    """
    pool = None
    if agent is None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 2
        agent = Agent.usingEndpointFactory(reactor, EndpointFactory(reactor, timeout), pool=pool)
    return agent, pool


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
def post(sink, agent, uri, body, headers):
    """
    POST C{body} to C{uri}, reading the whole answer within
    C{sink.timeout} seconds on C{sink.clock}, counting it in
    C{sink.metrics}.

    @param uri: the URL, ASCII bytes (L{hermes_tx.sinks.httpconnect.request_uri}).
    @param headers: a dict of header name to value (text).
    @return: a Deferred firing with C{(status, headers, body)}.
    @raise Retry: timed out, or the connection failed or was lost.
    """
    clock = sink.clock
    started = clock.seconds()
    raw = Headers({k.encode("latin-1"): [v.encode("latin-1")] for k, v in headers.items()})
    d = defer.maybeDeferred(agent.request, b"POST", uri, raw, BytesProducer(body))
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


@defer.inlineCallbacks
def send_in_halves(send, events):
    """
    C{send(events)}; when the server refuses the content
    (L{hermes_tx.sinks.statuses.Refused}: 400, 413, 422), send each half
    the same way, down to single events, which are then rejected.  After a
    half is retried as a whole the rest is retried too without being sent.

    @param send: a callable taking a list of events and returning a
        Deferred of C{None} or a L{BatchOutcome}.
    @return: a Deferred of C{None} or a L{BatchOutcome}; it fails with
        L{Retry} or L{Reject} only when the batch was not split.
    """
    try:
        return (yield send(events))
    except Refused:
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
