# -*- test-case-name: tests.test_sink_redis -*-
"""
L{RedisStreamSink}: one C{XADD} per event to a Redis stream, pipelined per
batch (the batch's commands written at once, their replies collected in
order), over a txredisapi connection (L{hermes_tx.sinks.redis_protocol}).
"""

import re

import txredisapi
from twisted.internet import defer, endpoints

from hermes_tx.exceptions import one_line
from hermes_tx.outcomes import Retry
from hermes_tx.sinks.base import Unsendable
from hermes_tx.sinks.brokersink import CONFIRMED, BrokerSink
from hermes_tx.sinks.redis_protocol import BatchLost, RedisBatchProtocol, command
from hermes_tx.sinks.records import id_of, topic_of
from hermes_tx.sinks.urls import SinkURL, SinkURLError, Secrets, read_secret

#: query parameters of the sink URL that are not secret
URL_PARAMS = ("stream", "maxlen")
#: how Redis error replies that refuse our credentials begin (C{ERR ...}
#: ones: servers before 6, and AUTH with a password to a server with none)
AUTH_ERRORS = ("NOAUTH", "WRONGPASS", "ERR AUTH", "ERR invalid password",
               "ERR Client sent AUTH", "ERR invalid username-password")
#: how txredisapi words a failed connection, AUTH or SELECT
_HANDSHAKE = re.compile(r"Redis error: could not (connect|auth|set dbid=\d+): (.*)\Z", re.S)


def refused_by(reply, target):
    """
    @param reply: a Redis error reply (text).
    @param target: the sink's URL as it may be shown.
    @return: one line when C{reply} refuses our credentials (L{AUTH_ERRORS})
        or our rights (C{NOPERM}), else C{None}.
    """
    reply = one_line(reply) if isinstance(reply, Exception) else " ".join(reply.split())
    reply = reply.partition("ResponseError: ")[2] or reply
    if reply.startswith(AUTH_ERRORS):
        return f"authentication refused by {target}: {reply}"
    if reply.startswith("NOPERM"):
        return f"permission refused by {target}: {reply}"
    return None


def fields(event):
    """
    The stream entry's fields for C{event}, in order: for a change
    C{topic}, C{key}, C{id} (the outbox id) and C{payload} (the JSON text
    as stored); for a notification C{topic} (the channel), C{payload} (the
    text as sent) and C{pid}.

    @return: a flat list C{[name, value, name, value, ...]} of bytes.
    @raise Unsendable: a value is not encodable as UTF-8.
    """
    if event.kind == "change":
        pairs = ("topic", event.topic, "key", event.key, "id", id_of(event),
                 "payload", event.payload)
    else:
        pairs = ("topic", topic_of(event), "payload", event.payload, "pid", str(event.pid))
    try:
        return [str(v).encode("utf-8") for v in pairs]
    except UnicodeEncodeError as e:
        raise Unsendable(f"not encodable as UTF-8: {e.reason}") from None


class RedisStreamSink(BrokerSink):
    """
    Appends each event to a Redis stream with C{XADD} (see L{fields}), one
    pipeline per batch, C{MAXLEN ~ N} when given.  An event is done once
    its C{XADD} was answered with an entry id.

    Outcomes: a batch that finds no connection, or whose connection is
    lost, retries the events not yet answered (an entry may then be added
    twice: consumers can tell by the C{id} field); a Redis error reply
    (C{OOM}, C{READONLY}, C{LOADING}, C{WRONGTYPE} ...) retries that event
    (the condition is the server's, not the event's).  Credentials refused
    (C{WRONGPASS}, C{NOAUTH} while connecting or answering) and rights
    refused (C{NOPERM}) fail the batch as a whole, one line naming them
    (L{refused_by}).  Events are never rejected except one that cannot be
    encoded.  There is no reconnecting in the background: the next batch
    connects again.
    """

    kind = "redis"
    default_max_batch = 500
    lost_reason = "the connection was lost before Redis answered"

    def __init__(self, url, secret_file=None, password=None, timeout=30.0, reactor=None,
                 **sink_kwargs):
        """
        @param url: C{redis://[[user]:password@]host[:port][/DB]?stream=NAME[&maxlen=N]}.
        @param secret_file: a file holding the password.
        @param password: the password (instead of the URL's or the file's).
        @param timeout: seconds for connecting, and for a whole batch to be
            answered; then the connection is dropped and the unanswered
            events retried.
        @param reactor: the reactor for connections (default: the global
            one).
        @param sink_kwargs: passed to L{Sink}.
        """
        parsed = SinkURL(url, safe_params=URL_PARAMS)
        if parsed.scheme != "redis":
            raise SinkURLError(f"sink URL {parsed.redacted}: expected redis://")
        self.stream = parsed.params.get("stream")
        if not self.stream:
            raise SinkURLError(f"sink URL {parsed.redacted} names no stream (?stream=NAME)")
        self.maxlen = parsed.int_param("maxlen", minimum=1)
        try:
            self.db = int(parsed.path or 0)
        except ValueError:
            raise SinkURLError(f"sink URL {parsed.redacted}: the path must be a database number") \
                from None
        if secret_file is not None:
            password = read_secret(secret_file)
        elif password is None:
            password = parsed.password
        BrokerSink.__init__(self, parsed.redacted, Secrets(password), _alive, _abort,
                            timeout=timeout, **sink_kwargs)
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._host = parsed.host or "127.0.0.1"
        self._port = parsed.port or 6379
        self._username = parsed.username or None
        self._password = password
        self._head = [b"XADD", self.stream.encode("utf-8")]
        if self.maxlen is not None:
            self._head += [b"MAXLEN", b"~", str(self.maxlen).encode()]
        self._head.append(b"*")

    def _connect(self):
        factory = txredisapi.RedisFactory(
            f"{self._host}:{self._port}", self.db, 1, isLazy=False,
            handler=txredisapi.ConnectionHandler, charset=None, password=self._password,
            replyTimeout=None, convertNumbers=False, username=self._username)
        factory.reconnect = False
        factory.protocol = RedisBatchProtocol
        factory.startConnecting(endpoints.HostnameEndpoint(
            self._reactor, self._host, self._port, timeout=self.timeout))
        d = defer.Deferred(lambda _: factory.disconnect())
        factory.deferred.addCallback(lambda handler: factory).chainDeferred(d)
        return d.addErrback(self._handshake_failed)

    def _handshake_failed(self, failure):
        failure.trap(ValueError)
        match = _HANDSHAKE.match(str(failure.value))
        if match is None:
            return failure
        step, reply = match.groups()
        if step == "connect":
            raise Retry(f"cannot connect to {self.target}: {' '.join(reply.split())}")
        line = refused_by(reply, self.target)
        if line is not None:
            raise Retry(line)
        command = "AUTH" if step == "auth" else f"SELECT {self.db}"
        raise Retry(f"cannot connect to {self.target}: Redis answered {command} with "
                    f"{' '.join(reply.split())}")

    def prepare(self, event):
        return command(self._head + fields(event))

    def publish(self, factory, events, prepared, answers):
        protocol = next((p for p in factory.pool if p.connected), None)
        if protocol is None:
            return defer.fail(txredisapi.ConnectionError("Not connected"))

        def answered(replies):
            for e, reply in zip(events, replies):
                answers[id(e)] = reply if isinstance(reply, Exception) else CONFIRMED

        def lost(failure):
            failure.trap(BatchLost)
            answered(failure.value.replies)
            return failure

        d = protocol.send_batch([prepared[id(e)] for e in events])
        return d.addCallbacks(answered, lost)

    def refusal(self, error):
        return f"Redis answered {one_line(error)}"

    def systemic(self, error):
        return refused_by(error, self.target)


def _alive(factory):
    return any(p.connected for p in factory.pool)


def _abort(factory):
    return factory.disconnect()
