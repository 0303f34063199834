# -*- test-case-name: tests.test_sink_webhook,tests.test_sink_http -*-
"""
L{HttpSink}: the part of the webhook and Elasticsearch sinks that is
plain HTTP: the pooled agent, the POST of a batch (split in halves when
its content is refused), the rule that keeps innocent changes out of the
dead letters, and the closing of the pool.
"""

from twisted.python.failure import Failure

from hermes_tx.outcomes import BatchOutcome, Reject, Retry
from hermes_tx.sinks import http, statuses
from hermes_tx.sinks.base import Sink
from hermes_tx.sinks.httpconnect import idna_refuses, request_uri
from hermes_tx.sinks.urls import SinkURLError, basic_token

#: added to the reason of a change held back from the dead letters
HELD_BACK = "; retried, not dead-lettered: the endpoint accepted no event of this batch"


class HttpSink(Sink):
    """
    A sink that POSTs each batch.  Subclasses implement L{body} and
    L{answered}.

    A change is dead-lettered for a refused content (a 400, 413 or 422
    answer, an Elasticsearch item's 400) only with evidence that the
    endpoint takes content at all: another event of the same batch was
    accepted, or, for a batch of one, the sink's previous batch was.
    Otherwise it is retried (the outbox's C{max_attempts} still bounds
    it): an endpoint that refuses everything does not send the whole
    stream to the dead letters.  Notifications, which cannot wait, are
    rejected (logged and skipped) as the answer says.

    @ivar max_retry_after: the longest C{Retry-After} honoured, seconds.
    """

    def __init__(self, target, secrets, url, headers, username=None, password=None,
                 max_retry_after=statuses.MAX_RETRY_AFTER, reactor=None, agent=None,
                 **sink_kwargs):
        """
        @param url: where to POST (no user information).
        @param headers: a dict of headers for every request.
        @param username: with C{password}: HTTP basic authentication.
        @param reactor: the reactor for connections and name resolution
            (default: the global one).
        @param agent: an C{IAgent} to use instead of a pooled one (tests).
        @param sink_kwargs: passed to L{Sink}.
        @raise SinkURLError: the URL's host is not a host name, or is a
            name with C{_} in an C{https://} URL.
        """
        Sink.__init__(self, target, secrets, **sink_kwargs)
        try:
            self._uri, host = request_uri(url)
        except ValueError as e:
            raise SinkURLError(f"sink URL {target}: {e}") from None
        if url.lower().startswith("https:") and idna_refuses(host):
            raise SinkURLError(
                f"sink URL {target}: a TLS certificate cannot be checked against the host name "
                f"{host!r} (IDNA refuses it: '_'?); use http:// or a name without '_'")
        self._headers = dict(headers, **{"User-Agent": "hermes_tx"})
        if username is not None or password is not None:
            self._headers["Authorization"] = f"Basic {basic_token(username, password or '')}"
        self.max_retry_after = max_retry_after
        self._reactor = reactor
        self._agent = agent
        self._pool = None
        self._accepted_last = False  # whether the previous batch had an event accepted

    def _http(self):
        if self._agent is None:
            reactor = self._reactor
            if reactor is None:
                from twisted.internet import reactor
            self._agent, self._pool = http.make_agent(reactor, self.timeout)
        return self._agent

    def send(self, events, prepared):
        d = http.send_in_halves(lambda batch: self._post(batch, prepared), events)
        return d.addBoth(self._judged, events)

    def _post(self, events, prepared):
        body, headers = self.body(events, prepared)
        d = http.post(self, self._http(), self._uri, body, dict(self._headers, **headers))

        def answered(answer):
            status, answer_headers, content = answer
            statuses.check_status(status, answer_headers, content, self.clock.seconds(),
                                  self.target, self.max_retry_after)
            return self.answered(events, prepared, status, content)

        return d.addCallback(answered)

    def _judged(self, result, events):
        """
        Hold back from the dead letters the changes refused without
        evidence (see the class docstring).
        """
        evidence_before, self._accepted_last = self._accepted_last, False
        if isinstance(result, Failure):
            if not result.check(Reject):
                return result
            outcome = BatchOutcome(rejected=[(e, str(result.value)) for e in events])
        else:
            outcome = result
            if outcome is None or outcome.done(events):
                self._accepted_last = True
                return outcome
        if not outcome.rejected or (len(events) == 1 and evidence_before):
            return result
        held = BatchOutcome(outcome.retry)
        for event, reason in outcome.rejected:
            if event.kind == "change":
                held.retry_event(event, reason + HELD_BACK)
            else:
                held.reject_event(event, reason)
        reasons = {reason for _, reason, _ in held.retry}
        if held.rejected or len(reasons) > 1:
            return held
        # One reason for every event: the batch failed as a whole.
        after = max((a for _, _, a in held.retry if a is not None), default=None)
        raise Retry(reasons.pop(), after)

    def body(self, events, prepared):
        """
        @return: C{(body bytes, extra headers dict)} for a request.
        """
        raise NotImplementedError

    def answered(self, events, prepared, status, content):
        """
        Read a 2xx answer.

        @return: C{None} or a L{BatchOutcome}.
        """
        return None

    def tear_down(self):
        Sink.tear_down(self)
        pool, self._pool = self._pool, None
        if pool is not None:
            self._agent = None
            return pool.closeCachedConnections()
