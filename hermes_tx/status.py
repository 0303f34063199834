# -*- test-case-name: tests.test_status -*-
"""
L{StatusService}: an HTTP endpoint for health checks and Prometheus.

  - C{/health}: 200 while the service runs;
  - C{/ready}: 200 only while the server is the primary and the listener is
    listening, else 503; a small JSON body says why;
  - C{/metrics}: Prometheus text format, read from the Client at scrape time.

It works under twistd (C{--status-port}) and in a C{.tac} alike: give it a
Client and a parent service.  Nothing here prints the DSN.
"""

import json
import math
import socket

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.application import service
from twisted.web import resource, server

from hermes_tx.exceptions import one_line
from hermes_tx.sinks.metrics import SinkMetrics
from hermes_tx.sinks.metrics import collect as collect_sink_metrics
from hermes_tx.roles import PRIMARY, ROLES


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
        yield CounterMetricFamily(
            "hermes_reconnects", "Listener reconnect attempts after a lost connection",
            value=getattr(listener, "reconnects", 0),
        )
        yield CounterMetricFamily(
            "hermes_resync_events", "Resync events queued after a gap in listening",
            value=getattr(listener, "resyncs", 0),
        )
        role = GaugeMetricFamily("hermes_role", "1 for the server's current role", labels=["role"])
        for name in ROLES:
            role.add_metric([name], 1 if client.role == name else 0)
        yield role
        yield GaugeMetricFamily(
            "hermes_listening", "1 while the listener is listening",
            value=1 if getattr(listener, "is_listening", False) else 0,
        )
        yield GaugeMetricFamily(
            "hermes_queue_depth", "Events queued for the processor",
            value=len(getattr(client.notification_queue, "pending", ())),
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
        yield from _outbox_metrics(client.outbox)
        if isinstance(getattr(processor, "metrics", None), SinkMetrics):
            yield from collect_sink_metrics([processor.metrics])
        last = getattr(listener, "last_notification_at", None)
        yield GaugeMetricFamily(
            "hermes_seconds_since_last_notification",
            "Seconds since the last notification arrived (NaN before the first)",
            value=math.nan if last is None else max(0.0, client.clock.seconds() - last),
        )


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
    counts = consumer.ledger.counts
    for name, key, text in (
        ("hermes_outbox_acked", "acked", "Outbox changes acknowledged (processed)"),
        ("hermes_outbox_retried", "released", "Outbox changes released for a retry"),
        ("hermes_outbox_dead_lettered", "dead", "Outbox changes moved to the dead letters"),
        ("hermes_outbox_claims_lost", "lost", "Claims that expired before their change was settled"),
    ):
        yield CounterMetricFamily(name, text, value=counts[key])
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
    for topic in sorted(set(consumer.topics) | set(consumer.stats)):
        figures = consumer.stats.get(topic, (0, 0, None, 0))
        for gauge, value in zip(gauges, figures):
            gauge.add_metric([topic], 0.0 if value is None else float(value))
    yield from gauges


def readiness(client):
    """
    @return: C{(ready, details)}: ready is True when the server is the
        primary, the listener is listening, the outbox consumer (if any) is
        consuming and the processor is working (not terminated, not stuck on
        one event for longer than its C{execute_timeout}); details is a dict
        for humans.
    """
    listener = client.listener
    processor = client.processor
    listening = bool(getattr(listener, "is_listening", False))
    details = {"role": client.role, "listening": listening}
    if client.role != PRIMARY:
        details["reason"] = f"server role is {client.role}"
    elif listener is not None and not listening:
        details["reason"] = f"listener is {getattr(listener, 'state', 'missing')}"
    elif client.outbox is not None and not client.outbox.is_consuming:
        details["reason"] = f"outbox consumer is {client.outbox.state}"
    elif processor is not None and getattr(processor, "terminated", None) is not None:
        details["reason"] = "processor terminated: " + one_line(processor.terminated.error)
    elif processor is not None and not processor.running:
        details["reason"] = "processor is stopped"
    elif getattr(processor, "failing", None) is not None:
        reason, since = processor.failing
        details["reason"] = f"processor failing since {client.clock.seconds() - since:.0f} s: {reason}"
    else:
        stuck = _stuck_for(client, processor)
        if stuck is not None:
            details["reason"] = f"processor busy with one event for {stuck:.0f} s"
    return "reason" not in details, details


def _stuck_for(client, processor):
    """
    @return: seconds the processor has spent on its current event when that
        exceeds its C{execute_timeout}, else C{None}.
    """
    timeout = getattr(processor, "execute_timeout", None)
    since = getattr(processor, "busy_since", None)
    if not timeout or since is None:
        return None
    age = client.clock.seconds() - since
    return age if age > timeout else None


class _JsonResource(resource.Resource):
    isLeaf = True

    def __init__(self, answer):
        resource.Resource.__init__(self)
        self.answer = answer

    def render_GET(self, request):
        code, body = self.answer()
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body).encode("utf-8") + b"\n"


class _MetricsResource(resource.Resource):
    # prometheus_client's own Twisted resource renders in the reactor's
    # thread pool; the Client's counters are only safe to read in the
    # reactor thread, so render here (it takes microseconds).
    isLeaf = True

    def __init__(self, registry):
        resource.Resource.__init__(self)
        self.registry = registry

    def render_GET(self, request):
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)


class _QuietSite(server.Site):
    # A probe every few seconds is not news: no access log line per request.
    def log(self, request):
        pass


def make_site(client, access_log=False):
    """
    @param access_log: True to log a line per request (Twisted's access
        log); by default nothing is logged per request.
    @return: a L{server.Site} serving /health, /ready and /metrics for
        C{client}.
    """
    registry = CollectorRegistry()
    registry.register(ClientCollector(client))

    def health():
        running = bool(client.running)
        return (200 if running else 503), {"status": "ok" if running else "stopped"}

    def ready():
        ok, details = readiness(client)
        return (200 if ok else 503), dict(details, ready=ok)

    root = resource.Resource()
    root.putChild(b"health", _JsonResource(health))
    root.putChild(b"ready", _JsonResource(ready))
    root.putChild(b"metrics", _MetricsResource(registry))
    site = (server.Site if access_log else _QuietSite)(root)
    site.noisy = False
    return site


def check_listen(port, interface="127.0.0.1"):
    """
    Bind (and let go of) the address the status port is to listen on, so
    that a port already taken is found before anything starts.

    @param port: the TCP port number.
    @param interface: an IPv4 or IPv6 address.
    @raise OSError: it cannot be bound (C{EADDRINUSE}, C{EADDRNOTAVAIL},
        C{EACCES} ...).
    """
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted does
        sock.bind((interface, port))


class StatusService(service.Service):
    """
    Serves L{make_site} on a TCP port while running.

    @ivar port: the listening port (C{getHost().port} tells the number when
        0 was asked for), or C{None} while stopped.
    """

    def __init__(self, client, port, interface="127.0.0.1", reactor=None, access_log=False):
        """
        @param client: the L{hermes_tx.client.Client} to report on.
        @param port: the TCP port number (0 picks a free one).
        @param interface: the address to listen on (default loopback only).
        @param reactor: an C{IReactorTCP}; C{None} means the reactor.
        @param access_log: True to log a line per request.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.client = client
        self.port_number = port
        self.interface = interface
        self.reactor = reactor
        self.access_log = access_log
        self.port = None

    def startService(self):
        service.Service.startService(self)
        self.port = self.reactor.listenTCP(
            self.port_number, make_site(self.client, self.access_log), interface=self.interface
        )

    def stopService(self):
        service.Service.stopService(self)
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None
