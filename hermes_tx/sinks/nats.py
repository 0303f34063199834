# -*- test-case-name: tests.test_sink_nats -*-
"""
L{NatsSink}: publish each event to NATS JetStream, through nats-py
(asyncio) on Twisted's asyncio reactor (L{hermes_tx.sinks.aio}), and
count it done once JetStream acknowledged storing it.
"""

import asyncio

from nats.errors import NoServersError
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import APIError
from twisted.internet import defer

from hermes_tx.exceptions import one_line
from hermes_tx.outcomes import Retry
from hermes_tx.sinks.aio import deferred, require_asyncio_reactor
from hermes_tx.sinks.base import Unsendable
from hermes_tx.sinks.brokersink import BrokerSink
from hermes_tx.sinks.natslink import (
    JetStreamError, Link, Lost, NoStream, Refused, TooLarge)
from hermes_tx.sinks.natsurl import (
    DEFAULT_DUPLICATE_WINDOW, PLACEHOLDER, URL_PARAMS, bad_subject, credentials, stream_of,
    stream_subject, template_of, tls_context)
from hermes_tx.sinks.records import encode, record, topic_of
from hermes_tx.sinks.urls import SinkURL, SinkURLError, Secrets

#: JetStream errors about one message (its size), not about the stream
ONE_MESSAGE_ERRORS = frozenset([10054])


class NatsSink(BrokerSink):
    """
    Publishes each event as one message to a JetStream subject (the URL's
    subject, C{{topic}} replaced by the topic, or the channel for a
    notification), body the event's JSON record, with header
    C{Nats-Msg-Id: TOPIC:ID} for a change (and C{Nats-Expected-Stream}
    with C{?stream=}), all of a batch on one connection in order, the
    acknowledgements awaited together.

    Outcomes (the sinks page of the docs has the whole table): an event is
    done once JetStream acknowledged it, also as a duplicate (stored
    before).  What says no event can be stored now fails a batch of which
    none was acknowledged as a whole, one line (L{systemic}): credentials
    or permissions refused, no stream for the subject, a stream full or
    refusing (any JetStream error but a message too large); a lost
    connection or no acknowledgement within C{timeout} retries the events
    not acknowledged.  A message larger than the server's C{max_payload}
    is rejected once the sink knows that limit (after its first
    connection), retried before.  There is no reconnecting in the
    background: the next batch connects again.

    @ivar stream: the stream named by C{?stream=}, or C{None}.
    @ivar duplicates: acknowledgements that said "duplicate" so far.
    """

    kind = "nats"
    default_max_batch = 500
    awaited = "acknowledgement"
    lost_reason = "the connection was lost before JetStream acknowledged"
    unanswered = (defer.CancelledError, Lost)

    def __init__(self, url, secret_file=None, password=None, timeout=30.0, reactor=None,
                 **sink_kwargs):
        """
        @param url: C{nats://[user[:password]@]host[:port]/SUBJECT[?stream=NAME]}
            (C{tls://} for TLS; C{nats://TOKEN@host/...} for a token; query
            parameters C{duplicate_window} (seconds, for a stream it
            makes), C{ca_file}, C{cert_file}, C{key_file}).
        @param secret_file: a file holding the password (the token when
            the URL names no user).
        @param password: the password or token (instead of the URL's or
            the file's).
        @param timeout: seconds for connecting, and for a batch to be
            acknowledged; then the connection is dropped and the events not
            acknowledged retried.
        @param reactor: the reactor (default: the global one), which must
            be Twisted's asyncio reactor.
        @param sink_kwargs: passed to L{Sink <hermes_tx.sinks.base.Sink>}.
        @raise SinkURLError: the URL cannot be used, or the reactor is not
            the asyncio reactor
            (L{NeedsAsyncioReactor <hermes_tx.sinks.aio.NeedsAsyncioReactor>}).
        """
        parsed = SinkURL(url, safe_params=URL_PARAMS)
        if parsed.scheme not in ("nats", "tls"):
            raise SinkURLError(f"sink URL {parsed.redacted}: expected nats:// or tls://")
        self.template = template_of(parsed)
        self.stream = stream_of(parsed)
        self.duplicate_window = parsed.int_param("duplicate_window",
                                                 default=DEFAULT_DUPLICATE_WINDOW, minimum=1)
        self._credentials, secret = credentials(parsed, secret_file, password)
        self._tls = tls_context(parsed)
        BrokerSink.__init__(self, parsed.redacted, Secrets(secret), _alive, _abort,
                            timeout=timeout, **sink_kwargs)
        if reactor is None:
            from twisted.internet import reactor
        require_asyncio_reactor(reactor, "the NATS sink")
        host = parsed.host or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        self._server = f"{parsed.scheme}://{host}:{parsed.port or 4222}"
        self._max_payload = None
        self.duplicates = 0

    def _connect(self):
        return deferred(self._open(Link()))

    async def _open(self, link):
        options = dict(self._credentials, name=f"hermes_tx sink {self.template}")
        if self._tls is not None:
            options["tls"] = self._tls
        try:
            await link.connect(self._server, self.timeout, **options)
        except Exception as e:
            raise self._not_connected(e, link) from None
        try:
            if self.stream is not None:
                await link.ensure_stream(StreamConfig(
                    name=self.stream, subjects=[stream_subject(self.template)],
                    storage=StorageType.FILE, duplicate_window=self.duplicate_window))
        except Exception as e:
            await link.close()
            raise Retry(self._stream_refused(e, link)) from None
        self._max_payload = link.max_payload
        return link

    def _not_connected(self, error, link):
        text = str(error).removeprefix("nats: ").strip("'")
        if "authorization violation" in text.lower():
            return Retry(f"authentication refused by {self.target}: {text}")
        why = link.why() if isinstance(error, NoServersError) else None
        return Retry(f"cannot connect to {self.target}: {why or one_line(error)}")

    def _stream_refused(self, error, link):
        where = f"stream {self.stream} at {self.target}"
        if link.refusal is not None:
            return f"permission refused by {self.target}: {link.refusal}"
        if isinstance(error, APIError) and error.err_code:
            return f"cannot make {where}: {error.description} (JetStream error {error.err_code})"
        if isinstance(error, APIError):  # no responders: no JetStream
            return f"cannot check {where}: JetStream is not enabled there"
        if isinstance(error, asyncio.TimeoutError):
            return f"cannot check {where}: no answer within {self.timeout:g} s"
        return f"cannot check {where}: {one_line(error)}"

    def subject_of(self, event):
        """
        @return: the subject for C{event}.
        @raise Unsendable: its topic cannot be part of a subject.
        """
        if PLACEHOLDER not in self.template:
            return self.template
        topic = topic_of(event)
        subject = self.template.replace(PLACEHOLDER, topic)
        why = bad_subject(subject)
        if why is not None:
            raise Unsendable(f"topic {topic!r} cannot be part of a NATS subject: {why}")
        return subject

    def prepare(self, event):
        """
        @return: C{(subject, body, headers)}.
        @raise Unsendable: not strict JSON, a topic that cannot be in a
            subject, or larger than the server's C{max_payload}.
        """
        subject = self.subject_of(event)
        try:
            body = encode(record(event)).encode("utf-8")
        except (ValueError, UnicodeEncodeError) as e:
            raise Unsendable(f"not strict JSON: {e}") from None
        if self._max_payload is not None and len(body) > self._max_payload:
            raise Unsendable(f"{len(body)} bytes, more than the server's max_payload "
                             f"({self._max_payload})")
        headers = {}
        if event.kind == "change":
            headers["Nats-Msg-Id"] = f"{event.topic}:{event.id}"
        if self.stream is not None:
            headers["Nats-Expected-Stream"] = self.stream
        return subject, body, headers or None

    def publish(self, link, events, prepared, answers):
        items = [(e,) + prepared[id(e)] for e in events]
        d = deferred(link.publish(items, lambda e, result: self._settle(result, answers, e)))
        if self.stream is not None:
            # The stream may have been deleted: the next connection makes it.
            d.addCallback(self._drop_if_streamless, answers)
        return d

    def _settle(self, result, answers, event):
        if isinstance(result, BaseException):
            result = defer.Failure(result)
        elif result.duplicate:
            self.duplicates += 1
        self.record(result, answers, event)

    def _drop_if_streamless(self, result, answers):
        if any(isinstance(a, NoStream) for a in answers.values()):
            self.connection.drop()
        return result

    def lost_because(self, error):
        return f"{self.lost_reason}: {error}"

    def refusal(self, error):
        if isinstance(error, NoStream):
            return f"no JetStream stream captures subject {error.subject!r}"
        if isinstance(error, Refused):
            return f"refused by the server: {error}"
        if isinstance(error, JetStreamError):
            return f"JetStream refused it: {error}"
        if isinstance(error, TooLarge):
            return str(error)
        return f"not acknowledged: {one_line(error)}"

    def systemic(self, error):
        if isinstance(error, NoStream):
            hint = (f" (the next batch makes stream {self.stream} again)" if self.stream else
                    " (make one, or name it with ?stream=NAME for the sink to make it)")
            return f"no JetStream stream captures subject {error.subject!r} at {self.target}{hint}"
        if isinstance(error, Refused):
            return f"permission refused by {self.target}: {error}"
        if isinstance(error, JetStreamError) and error.err_code not in ONE_MESSAGE_ERRORS:
            return f"JetStream at {self.target} refused the publish: {error}"
        return None


def _alive(link):
    return link.alive()


def _abort(link):
    return deferred(link.close())
