# -*- test-case-name: tests.test_sink_amqp -*-
"""
L{AmqpSink}: publish each event to a RabbitMQ exchange with publisher
confirms, through pika's Twisted adapter.
"""

import pika
from pika import spec
from pika.adapters.twisted_connection import TwistedProtocolConnection
from pika.exceptions import (
    AMQPConnectionError, ChannelClosed, ChannelClosedByBroker, ConnectionClosed,
    ConnectionClosedByBroker, NackError, UnroutableError)
from twisted.internet import defer, endpoints, ssl

from hermes_tx.exceptions import one_line
from hermes_tx.outcomes import Retry
from hermes_tx.sinks import pikalog
from hermes_tx.sinks.base import Unsendable
from hermes_tx.sinks.brokersink import BrokerSink
from hermes_tx.sinks.records import encode, id_of, record, topic_of
from hermes_tx.sinks.urls import SinkURL, SinkURLError, Secrets, read_secret

#: query parameters of the sink URL that are not secret
URL_PARAMS = ("exchange", "exchange_type", "mandatory", "heartbeat")
#: exchange types RabbitMQ has built in
EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")


class _Protocol(TwistedProtocolConnection):
    """
    pika's Twisted protocol, keeping the reason of a C{Connection.Close}
    the broker sends during the handshake: pika's Twisted adapter replaces
    it with the clean close that follows, and its C{ready} fails with only
    C{AMQPConnectionError(1)}.

    @ivar closed_by_broker: C{(reply_code, reply_text)}, or C{None}.
    """

    closed_by_broker = None

    def __init__(self, parameters, custom_reactor=None):
        TwistedProtocolConnection.__init__(self, parameters, custom_reactor=custom_reactor)
        # pika keeps the connection it wraps as _impl; its callbacks (a
        # public attribute of pika's Connection) see every frame.
        self._impl.callbacks.add(0, spec.Connection.Close, self._broker_closed)

    def _broker_closed(self, method_frame):
        method = method_frame.method
        self.closed_by_broker = (method.reply_code, method.reply_text)


def refused(error, closed_by_broker, target):
    """
    @param error: why a connection's handshake failed.
    @param closed_by_broker: the broker's C{(reply_code, reply_text)}, or
        C{None}.
    @param target: the sink's URL as it may be shown.
    @return: a L{Retry} saying so in one line.
    """
    if closed_by_broker is not None:
        code, text = closed_by_broker
        text = " ".join(str(text).split())
        if code == 403:
            return Retry(f"authentication refused by {target}: {code} {text}")
        if code == 530:
            return Retry(f"access refused by {target}: {code} {text}")
        return Retry(f"cannot connect to {target}: the broker closed the connection: {code} "
                     f"{text}")
    if isinstance(error, AMQPConnectionError) and not isinstance(error, ConnectionClosed):
        return Retry(f"cannot connect to {target}: the connection was closed during the AMQP "
                     "handshake")
    return Retry(f"cannot connect to {target}: {one_line(error)}")


class _Link:
    """A connection and its confirm-mode channel."""

    def __init__(self, protocol, channel):
        self.protocol = protocol
        self.channel = channel

    def alive(self):
        return self.protocol.is_open and self.channel.is_open

    def abort(self):
        transport = self.protocol.transport
        if transport is not None:
            transport.abortConnection()


def message(event):
    """
    The message for one event: the body is the event's JSON record (see
    L{hermes_tx.sinks.records}), persistent (C{delivery_mode} 2),
    C{content_type} C{application/json}, C{message_id} the outbox id
    (none for a notification), C{timestamp} the change's creation time, and
    headers C{topic} and C{key} (C{channel} for a notification).

    @return: C{(routing key, body bytes, properties)}; the routing key is
        the topic (the channel for a notification).
    @raise Unsendable: not strict JSON.
    """
    try:
        body = encode(record(event)).encode("utf-8")
    except (ValueError, UnicodeEncodeError) as e:
        raise Unsendable(f"not strict JSON: {e}") from None
    if event.kind == "change":
        headers = {"topic": event.topic, "key": event.key}
        timestamp = int(event.created_at) if event.created_at is not None else None
    else:
        headers = {"channel": event.channel}
        timestamp = None
    properties = pika.BasicProperties(
        content_type="application/json", delivery_mode=2, message_id=id_of(event),
        timestamp=timestamp, headers=headers)
    return topic_of(event), body, properties


class AmqpSink(BrokerSink):
    """
    Publishes each event as one persistent message to an exchange (declared
    durable if missing), routing key = the topic (the channel for a
    notification), on a channel in publisher-confirm mode.

    Outcomes: an event is done once the broker confirmed (acked) it; a
    nack retries it; a batch that finds no connection, loses it or is not
    confirmed within C{timeout} retries the unconfirmed events (a message
    may then be published twice: consumers can tell by C{message_id}).
    With C{mandatory=true} in the URL, a message no queue is bound to
    receive is returned by the broker and retried; without it RabbitMQ
    drops it and acks (bind your queues before events flow).  A broker that
    refuses our credentials (C{403 ACCESS_REFUSED}) or the virtual host
    (C{530 NOT_ALLOWED}), or closes the channel (a deleted exchange, a
    refused write), fails the batch as a whole with one line giving its
    reason (L{refused}).  There is no reconnecting in the background: the
    next batch connects again.
    """

    kind = "amqp"
    default_max_batch = 200
    awaited = "confirm"
    lost_reason = "the connection was lost before the broker confirmed"
    unanswered = (defer.CancelledError, ChannelClosed, ConnectionClosed)

    def __init__(self, url, secret_file=None, password=None, timeout=30.0, reactor=None,
                 **sink_kwargs):
        """
        @param url: C{amqp(s)://user[:password]@host[:port][/VHOST]?exchange=NAME
            [&exchange_type=topic][&mandatory=true][&heartbeat=60]}; the virtual
            host is the unquoted path (C{%2F} for C{/}, also the default).
        @param secret_file: a file holding the password.
        @param password: the password (instead of the URL's or the file's).
        @param timeout: seconds for connecting, and for a batch to be
            confirmed; then the connection is dropped and the unconfirmed
            events retried.
        @param reactor: the reactor for connections (default: the global one).
        @param sink_kwargs: passed to L{Sink}.
        """
        parsed = SinkURL(url, safe_params=URL_PARAMS)
        if parsed.scheme not in ("amqp", "amqps"):
            raise SinkURLError(f"sink URL {parsed.redacted}: expected amqp(s)://")
        self.exchange = parsed.params.get("exchange")
        if not self.exchange:
            raise SinkURLError(f"sink URL {parsed.redacted} names no exchange (?exchange=NAME)")
        self.exchange_type = parsed.params.get("exchange_type") or "topic"
        if self.exchange_type not in EXCHANGE_TYPES:
            raise SinkURLError(f"sink URL {parsed.redacted}: exchange_type must be one of "
                               f"{', '.join(EXCHANGE_TYPES)}")
        self.mandatory = parsed.params.get("mandatory", "").lower() in ("1", "true", "yes")
        heartbeat = parsed.int_param("heartbeat", default=60)
        if secret_file is not None:
            password = read_secret(secret_file)
        elif password is None:
            password = parsed.password
        BrokerSink.__init__(self, parsed.redacted, Secrets(password), _Link.alive, _Link.abort,
                            timeout=timeout, **sink_kwargs)
        pikalog.route(self.secrets)
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._tls = parsed.scheme == "amqps"
        self._host = parsed.host or "127.0.0.1"
        self._port = parsed.port or (5671 if self._tls else 5672)
        self._parameters = pika.ConnectionParameters(
            virtual_host=parsed.path or "/",
            credentials=pika.PlainCredentials(parsed.username or "guest", password or ""),
            heartbeat=heartbeat,
            client_properties={"connection_name": f"hermes_tx sink {self.exchange}"})

    @defer.inlineCallbacks
    def _connect(self):
        endpoint = endpoints.HostnameEndpoint(self._reactor, self._host, self._port,
                                              timeout=self.timeout)
        if self._tls:
            endpoint = endpoints.wrapClientTLS(ssl.optionsForClientTLS(self._host), endpoint)
        protocol = _Protocol(self._parameters, custom_reactor=self._reactor)
        yield endpoints.connectProtocol(endpoint, protocol)
        try:
            try:
                yield protocol.ready
            except Exception as e:
                raise refused(e, protocol.closed_by_broker, self.target) from None
            channel = yield protocol.channel()
            yield channel.exchange_declare(exchange=self.exchange,
                                           exchange_type=self.exchange_type, durable=True)
            yield channel.confirm_delivery()
        except BaseException:
            if protocol.transport is not None:
                protocol.transport.abortConnection()
            raise
        return _Link(protocol, channel)

    def prepare(self, event):
        return message(event)

    def publish(self, link, events, prepared, answers):
        confirms = []
        for e in events:
            routing_key, body, properties = prepared[id(e)]
            try:
                d = link.channel.basic_publish(self.exchange, routing_key, body, properties,
                                               mandatory=self.mandatory)
            except Exception as error:  # the channel closed under us
                d = defer.fail(error)
            confirms.append(d.addBoth(self.record, answers, e))
        return defer.gatherResults(confirms)

    def lost_because(self, error):
        if isinstance(error, (ChannelClosedByBroker, ConnectionClosedByBroker)):
            what = "channel" if isinstance(error, ChannelClosedByBroker) else "connection"
            return (f"the broker closed the {what}: {error.reply_code} "
                    f"{' '.join(str(error.reply_text).split())}")
        return self.lost_reason

    def refusal(self, error):
        if isinstance(error, NackError):
            return "the broker nacked it"
        if isinstance(error, UnroutableError):
            return "unroutable: no queue is bound to receive it"
        return f"not confirmed: {one_line(error)}"
