# -*- test-case-name: tests.test_sink_records -*-
"""
Per-sink metrics as plain numbers on each sink (L{SinkMetrics}), and
L{collect}, a prometheus_client-compatible collector over every live sink:

  - C{hermes_sink_requests_total{sink, target}}: requests made (one HTTP
    request, one Redis pipeline, one AMQP or NATS batch of publishes);
  - C{hermes_sink_failures_total{sink, target}}: requests that failed as a
    whole (an error status, a timeout, a lost connection);
  - C{hermes_sink_events_total{sink, target, outcome}}: events by outcome
    (C{sent}, C{retried}, C{rejected});
  - C{hermes_sink_request_seconds{sink, target}}: a histogram of request
    durations.

C{sink} is the kind (C{webhook}, C{elasticsearch}, C{redis}, C{amqp},
C{nats}) and
C{target} the sink's redacted URL.  Plug it into a registry with
C{prometheus_client.REGISTRY.register(SinkCollector())}.
"""

import bisect
import weakref

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

#: upper bounds of the request duration buckets, in seconds
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_live = weakref.WeakSet()  # every SinkMetrics of a sink still alive


class SinkMetrics:
    """
    Counters and a duration histogram of one sink.

    @ivar requests: requests made.
    @ivar failures: requests that failed as a whole.
    @ivar sent: events the other side confirmed.
    @ivar retried: events handed back to be tried again.
    @ivar rejected: events the other side refused for good.
    @ivar bucket_counts: per bucket of L{BUCKETS} plus one for C{+Inf}, the
        number of requests that took at most that long (not cumulative).
    @ivar seconds_sum: the total time spent in requests.
    """

    def __init__(self, kind, target):
        """
        @param kind: the sink kind, e.g. C{"redis"}.
        @param target: the redacted URL (never one with secrets).
        """
        self.kind = kind
        self.target = target
        self.requests = 0
        self.failures = 0
        self.sent = 0
        self.retried = 0
        self.rejected = 0
        self.bucket_counts = [0] * (len(BUCKETS) + 1)
        self.seconds_sum = 0.0
        _live.add(self)

    def observe(self, seconds, failed):
        """
        Count one request that took C{seconds}, failed as a whole or not.
        """
        self.requests += 1
        if failed:
            self.failures += 1
        self.seconds_sum += seconds
        self.bucket_counts[bisect.bisect_left(BUCKETS, seconds)] += 1

    def count_events(self, sent=0, retried=0, rejected=0):
        """
        Count events by outcome.
        """
        self.sent += sent
        self.retried += retried
        self.rejected += rejected

    def as_dict(self):
        """
        @return: the numbers as a dict (for a status page or a test).
        """
        return {"requests": self.requests, "failures": self.failures, "sent": self.sent,
                "retried": self.retried, "rejected": self.rejected,
                "seconds_sum": self.seconds_sum, "buckets": list(self.bucket_counts)}


def collect(metrics=None):
    """
    Yield prometheus_client metric families for C{metrics} (default: every
    live sink).  Sinks with the same kind and target are added up.
    """
    if metrics is None:
        metrics = list(_live)
    merged = {}
    for m in metrics:
        numbers = m.as_dict()
        total = merged.setdefault((m.kind, m.target), numbers)
        if total is not numbers:
            for name in ("requests", "failures", "sent", "retried", "rejected", "seconds_sum"):
                total[name] += numbers[name]
            total["buckets"] = [a + b for a, b in zip(total["buckets"], numbers["buckets"])]
    names = ["sink", "target"]
    requests = CounterMetricFamily("hermes_sink_requests", "Requests made by a sink", labels=names)
    failures = CounterMetricFamily(
        "hermes_sink_failures", "Sink requests that failed as a whole", labels=names)
    events = CounterMetricFamily(
        "hermes_sink_events", "Events by outcome", labels=names + ["outcome"])
    seconds = HistogramMetricFamily(
        "hermes_sink_request_seconds", "Sink request durations", labels=names)
    for labels, m in sorted(merged.items()):
        requests.add_metric(list(labels), m["requests"])
        failures.add_metric(list(labels), m["failures"])
        for outcome in ("sent", "retried", "rejected"):
            events.add_metric(list(labels) + [outcome], m[outcome])
        cumulative, buckets = 0, []
        for bound, count in zip(BUCKETS + (float("inf"),), m["buckets"]):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        seconds.add_metric(list(labels), buckets, m["seconds_sum"])
    yield requests
    yield failures
    yield events
    yield seconds


class SinkCollector:
    """
    A collector for C{prometheus_client} registries: C{collect()} yields
    the metric families of every live sink (see L{collect}).
    """

    def collect(self):
        return collect()
