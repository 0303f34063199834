# -*- test-case-name: tests.test_sink_urls -*-
"""
Built-in sink processors: keep a webhook, a search index, a Redis stream,
a RabbitMQ exchange or a NATS JetStream stream in sync with the events
hermes_tx hands out.

L{from_url} picks one by the URL's scheme:

  - C{http://}, C{https://}: L{hermes_tx.sinks.webhook.WebhookSink};
  - C{elasticsearch+http://}, C{elasticsearch+https://} (also
    C{opensearch+http(s)://}):
    L{hermes_tx.sinks.elasticsearch.ElasticsearchSink};
  - C{redis://}: L{hermes_tx.sinks.redis_streams.RedisStreamSink};
  - C{amqp://}, C{amqps://}: L{hermes_tx.sinks.amqp.AmqpSink};
  - C{nats://}, C{tls://}: L{hermes_tx.sinks.nats.NatsSink} (on Twisted's
    asyncio reactor only).

Each class is also usable on its own (in a C{.tac}).  Outcomes follow
L{hermes_tx.outcomes}: a sink reports an event done only once the other
side confirmed it.
"""

import importlib

from hermes_tx.sinks.urls import SinkURL, SinkURLError, redact_url

#: scheme -> (module, class name)
SCHEMES = {
    "http": ("hermes_tx.sinks.webhook", "WebhookSink"),
    "https": ("hermes_tx.sinks.webhook", "WebhookSink"),
    "elasticsearch+http": ("hermes_tx.sinks.elasticsearch", "ElasticsearchSink"),
    "elasticsearch+https": ("hermes_tx.sinks.elasticsearch", "ElasticsearchSink"),
    "opensearch+http": ("hermes_tx.sinks.elasticsearch", "ElasticsearchSink"),
    "opensearch+https": ("hermes_tx.sinks.elasticsearch", "ElasticsearchSink"),
    "redis": ("hermes_tx.sinks.redis_streams", "RedisStreamSink"),
    "amqp": ("hermes_tx.sinks.amqp", "AmqpSink"),
    "amqps": ("hermes_tx.sinks.amqp", "AmqpSink"),
    "nats": ("hermes_tx.sinks.nats", "NatsSink"),
    "tls": ("hermes_tx.sinks.nats", "NatsSink"),
}


def sink_class(url):
    """
    @return: the sink class for C{url}'s scheme.
    @raise SinkURLError: no sink takes that scheme.
    """
    scheme = SinkURL(url).scheme
    if scheme not in SCHEMES:
        raise SinkURLError(
            f"sink URL {redact_url(url)}: unknown scheme {scheme!r} "
            f"(one of: {', '.join(sorted(SCHEMES))})"
        )
    module, name = SCHEMES[scheme]
    return getattr(importlib.import_module(module), name)


def from_url(url, secret_file=None, clock=None, reactor=None, **component_kwargs):
    """
    Make the sink for C{url}.

    @param url: the sink URL (see the module docstring and the sinks page of the docs).
    @param secret_file: a file holding the password, token or HMAC secret
        (one trailing newline is stripped).
    @param clock: the clock for timers (default: the global reactor).
    @param reactor: the reactor for connections (default: the global one).
    @param component_kwargs: passed to the sink (C{max_batch}, C{timeout},
        C{error_strategy}, ...).
    @return: a L{hermes_tx.sinks.base.Sink}.
    @raise SinkURLError: the URL cannot be used (the message is redacted).
    """
    cls = sink_class(url)
    return cls(url, secret_file=secret_file, clock=clock, reactor=reactor, **component_kwargs)


__all__ = ["from_url", "sink_class", "redact_url", "SinkURLError", "SCHEMES"]
