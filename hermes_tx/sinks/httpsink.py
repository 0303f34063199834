# -*- test-case-name: tests.test_sink_webhook -*-
"""
L{HttpSink}: the part of the webhook and Elasticsearch sinks that is
plain HTTP: the pooled client, the POST of a batch (split in halves on
413) and the closing of the pool.
"""

from hermes_tx.sinks import http
from hermes_tx.sinks.base import Sink
from hermes_tx.sinks.urls import basic_token


class HttpSink(Sink):
    """
    A sink that POSTs each batch.  Subclasses implement L{body} and
    L{answered}.

    @ivar max_retry_after: the longest C{Retry-After} honoured, seconds.
    """

    def __init__(self, target, secrets, url, headers, username=None, password=None,
                 max_retry_after=http.MAX_RETRY_AFTER, reactor=None, agent=None,
                 **sink_kwargs):
        """
        @param url: where to POST (no user information).
        @param headers: a dict of headers for every request.
        @param username: with C{password}: HTTP basic authentication.
        @param reactor: the reactor for connections (default: the global one).
        @param agent: an C{IAgent} to use instead of a pooled one (tests).
        @param sink_kwargs: passed to L{Sink}.
        """
        Sink.__init__(self, target, secrets, **sink_kwargs)
        self._url = url
        self._headers = dict(headers, **{"User-Agent": "hermes_tx"})
        if username is not None or password is not None:
            self._headers["Authorization"] = f"Basic {basic_token(username, password or '')}"
        self.max_retry_after = max_retry_after
        self._reactor = reactor
        self._agent = agent
        self._client = None
        self._pool = None

    def _http(self):
        if self._client is None:
            reactor = self._reactor
            if reactor is None:
                from twisted.internet import reactor
            self._client, self._pool = http.make_client(reactor, self.timeout, self._agent)
        return self._client

    def send(self, events, prepared):
        return http.send_in_halves(lambda batch: self._post(batch, prepared), events)

    def _post(self, events, prepared):
        body, headers = self.body(events, prepared)
        d = http.post(self, self._http(), self._url, body, dict(self._headers, **headers))

        def answered(answer):
            status, answer_headers, content = answer
            http.check_status(status, answer_headers, content, self.clock.seconds(),
                              self.max_retry_after)
            return self.answered(events, prepared, status, content)

        return d.addCallback(answered)

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
        pool, self._pool, self._client = self._pool, None, None
        if pool is not None:
            return pool.closeCachedConnections()
