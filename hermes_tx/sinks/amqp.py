# -*- test-case-name: tests.test_sink_amqp -*-
"""
L{AmqpSink}: publish each event to a RabbitMQ exchange with publisher
confirms, through pika's Twisted adapter.
"""

import pika
from pika.adapters.twisted_connection import TwistedProtocolConnection
from pika.exceptions import ChannelClosed, ConnectionClosed, NackError, UnroutableError
from twisted.internet import defer, endpoints, ssl

from hermes_tx.exceptions import one_line
from hermes_tx.sinks.base import Unsendable
from hermes_tx.sinks.brokersink import BrokerSink
from hermes_tx.sinks.records import encode, id_of, record, topic_of
from hermes_tx.sinks.urls import SinkURL, SinkURLError, Secrets, read_secret

#: query parameters of the sink URL that are not secret
URL_PARAMS = ("exchange", "exchange_type", "mandatory", "heartbeat")
#: exchange types RabbitMQ has built in
EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")


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
    drops it and acks (bind your queues before events flow).  There is no
    reconnecting in the background: the next batch connects again.
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
        protocol = TwistedProtocolConnection(self._parameters, custom_reactor=self._reactor)
        yield endpoints.connectProtocol(endpoint, protocol)
        try:
            yield protocol.ready
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

    def refusal(self, error):
        if isinstance(error, NackError):
            return "the broker nacked it"
        if isinstance(error, UnroutableError):
            return "unroutable: no queue is bound to receive it"
        return f"not confirmed: {one_line(error)}"
