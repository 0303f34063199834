# -*- test-case-name: tests.test_status -*-
"""
L{ClientCollector}: the Client's figures for Prometheus, read at scrape time.
"""

import math

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from hermes_tx.failover.roles import ROLES
from hermes_tx.runtime.breaker import CLOSED
from hermes_tx.sinks.metrics import SinkMetrics
from hermes_tx.sinks.metrics import collect as collect_sink_metrics


class ClientCollector:
    """
    A Prometheus collector reading a Client's counters when scraped, so the
    notification path only bumps plain integers.
    """

    def __init__(self, client):
        self.client = client

    def collect(self):
        client = self.client
        listener = client.listener
        processor = client.processor
        received = CounterMetricFamily(
            "hermes_notifications_received", "Notifications received, by channel",
            labels=["channel"],
        )
        for channel, count in sorted(getattr(listener, "received", {}).items()):
            received.add_metric([channel], count)
        yield received
        processed = CounterMetricFamily(
            "hermes_notifications_processed", "Notifications processed without error, by channel",
            labels=["channel"],
        )
        for channel, count in sorted(getattr(processor, "processed", {}).items()):
            processed.add_metric([channel], count)
        yield processed
        yield CounterMetricFamily(
            "hermes_processor_failures", "Exceptions raised while processing events",
            value=getattr(processor, "failures", 0),
        )
        reconnects = CounterMetricFamily(
            "hermes_reconnects", "Lost or failed connections of a source, each followed by a reconnect",
            labels=["source"],
        )
        for name, source in (("listener", listener), ("outbox", client.outbox)):
            if source is not None:
                reconnects.add_metric([name], getattr(source, "reconnects", 0))
        yield reconnects
        yield CounterMetricFamily(
            "hermes_resync_events", "Resync events queued after a gap in listening",
            value=getattr(listener, "resyncs", 0),
        )
        role = GaugeMetricFamily("hermes_role", "1 for the server's current role", labels=["role"])
        for name in ROLES:
            role.add_metric([name], 1 if client.role == name else 0)
        yield role
        listening = bool(getattr(listener, "is_listening", False))
        deaf = listening and getattr(listener, "deaf", None) is not None
        yield GaugeMetricFamily(
            "hermes_listening", "1 while the listener is listening (and its LISTEN is not deaf)",
            value=1 if listening and not deaf else 0,
        )
        deafness = GaugeMetricFamily(
            "hermes_listen_deaf",
            "1 while a source's LISTEN is proven to hear nothing (its last listen-check probe did "
            "not come back): the listener then delivers nothing, the outbox consumer only polls",
            labels=["source"],
        )
        probes = CounterMetricFamily(
            "hermes_listen_probes", "Listen-check probes, by source and outcome (heard, deaf, failed)",
            labels=["source", "outcome"],
        )
        for name, source in (("listener", listener), ("outbox", client.outbox)):
            hearing = getattr(source, "hearing", None)
            if hearing is None:
                continue
            deafness.add_metric([name], 1 if hearing.deaf is not None and _connected(source) else 0)
            for outcome, count in sorted(hearing.probes.items()):
                probes.add_metric([name, outcome], count)
        yield deafness
        yield probes
        yield GaugeMetricFamily(
            "hermes_queue_depth", "Events queued for the processor",
            value=len(getattr(client.queue, "pending", ())),
        )
        since = getattr(processor, "busy_since", None)
        yield GaugeMetricFamily(
            "hermes_processor_busy_seconds",
            "Seconds the processor has spent on the event in progress (0 when idle)",
            value=0.0 if since is None else max(0.0, client.clock.seconds() - since),
        )
        yield GaugeMetricFamily(
            "hermes_processor_terminated", "1 once the processor was terminated by its error strategy",
            value=1 if getattr(processor, "terminated", None) is not None else 0,
        )
        breaker = getattr(processor, "breaker", None)
        yield GaugeMetricFamily(
            "hermes_processor_paused",
            "1 while the processor's circuit breaker is open or probing (deliveries kept failing)",
            value=0 if breaker is None or breaker.state == CLOSED else 1,
        )
        yield CounterMetricFamily(
            "hermes_processor_pauses", "Times the processor's circuit breaker opened",
            value=0 if breaker is None else breaker.opens,
        )
        yield from _outbox_metrics(client.outbox)
        if isinstance(getattr(processor, "metrics", None), SinkMetrics):
            yield from collect_sink_metrics([processor.metrics])
        last = getattr(listener, "last_notification_at", None)
        yield GaugeMetricFamily(
            "hermes_seconds_since_last_notification",
            "Seconds since the last notification arrived (NaN before the first)",
            value=math.nan if last is None else max(0.0, client.clock.seconds() - last),
        )


def _connected(source):
    return source.state in ("listening", "consuming")


def _outbox_metrics(consumer):
    """
    The outbox consumer's counters, and the per-topic figures it last read
    from the outbox (depth, lag, dead letters).
    """
    if consumer is None:
        return
    claimed = CounterMetricFamily("hermes_outbox_claimed", "Outbox changes claimed, by topic",
                                  labels=["topic"])
    for topic, count in sorted(consumer.claimed.items()):
        claimed.add_metric([topic], count)
    yield claimed
    by_topic = consumer.ledger.by_topic
    for name, key, text in (
        ("hermes_outbox_acked", "acked", "Outbox changes acknowledged (processed), by topic"),
        ("hermes_outbox_retried", "released", "Outbox changes released for a retry, by topic"),
        ("hermes_outbox_dead_lettered", "dead", "Outbox changes moved to the dead letters, by topic"),
        ("hermes_outbox_claims_lost", "lost",
         "Claims that expired before their change was settled, by topic"),
    ):
        family = CounterMetricFamily(name, text, labels=["topic"])
        for topic in consumer.topics:
            family.add_metric([topic], by_topic[key][topic])
        yield family
    yield GaugeMetricFamily("hermes_outbox_in_flight_here", "Changes this consumer holds",
                            value=len(consumer.ledger.in_flight))
    gauges = [
        GaugeMetricFamily("hermes_outbox_pending", "Outbox changes waiting, by topic", labels=["topic"]),
        GaugeMetricFamily("hermes_outbox_in_flight", "Outbox changes claimed by any consumer",
                          labels=["topic"]),
        GaugeMetricFamily("hermes_outbox_oldest_age_seconds",
                          "Age of the oldest change still in the outbox (the lag)", labels=["topic"]),
        GaugeMetricFamily("hermes_outbox_dead_letters", "Dead letters in the outbox, by topic",
                          labels=["topic"]),
    ]
    # Only the topics this consumer consumes (the figures are read when
    # scraped: hermes_tx.outbox.figures).
    figures = consumer.figures()
    for topic in consumer.topics:
        for gauge, value in zip(gauges, figures.get(topic, (0, 0, None, 0))):
            gauge.add_metric([topic], 0.0 if value is None else float(value))
    yield from gauges

