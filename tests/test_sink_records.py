"""
What the sinks send per event, and the metrics every sink keeps.
"""

from prometheus_client import CollectorRegistry, generate_latest
from twisted.trial import unittest

from hermes_tx.events import Change, Event
from hermes_tx.sinks.metrics import SinkCollector, SinkMetrics, collect
from hermes_tx.sinks.records import deliverable, encode, iso_utc, record


class RecordTests(unittest.TestCase):
    def test_change(self):
        c = Change(7, "t", "k", 2, 0.5, '{"a": 1}', {"a": 1}, claim="tok")
        self.assertEqual(record(c), {"kind": "change", "id": 7, "topic": "t", "key": "k",
                                     "attempts": 2, "created_at": "1970-01-01T00:00:00.500000Z",
                                     "data": {"a": 1}})

    def test_notification(self):
        e = Event("notification", "ch", "text", 42, 1.0)
        self.assertEqual(record(e), {"kind": "notification", "channel": "ch",
                                     "payload": "text", "pid": 42})
        e.data = [1]
        self.assertEqual(record(e)["data"], [1])

    def test_start_and_resync_not_sent(self):
        events = [Event("start"), Event("notification", "c", "p", 1), Event("resync")]
        self.assertEqual(deliverable(events), [events[1]])

    def test_strict_json(self):
        self.assertRaises(ValueError, encode, {"x": float("nan")})
        self.assertRaises(ValueError, encode, {"x": object()})
        self.assertEqual(encode({"é": 1}), '{"é":1}')

    def test_iso(self):
        self.assertEqual(iso_utc(1_700_000_000), "2023-11-14T22:13:20.000000Z")
        self.assertIsNone(iso_utc(None))


class MetricsTests(unittest.TestCase):
    def test_counts_and_histogram(self):
        m = SinkMetrics("redis", "redis://h/0?stream=s")
        m.observe(0.003, failed=False)
        m.observe(0.2, failed=True)
        m.observe(100, failed=False)
        m.count_events(sent=5, retried=2, rejected=1)
        families = {f.name: f for f in collect([m])}
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in families.values() for s in f.samples}
        target = "redis://h/0?stream=s"

        def value(name, **labels):
            labels.update(sink="redis", target=target)
            return samples[(name, tuple(sorted(labels.items())))]

        self.assertEqual(value("hermes_sink_requests_total"), 3)
        self.assertEqual(value("hermes_sink_failures_total"), 1)
        self.assertEqual(value("hermes_sink_events_total", outcome="sent"), 5)
        self.assertEqual(value("hermes_sink_events_total", outcome="rejected"), 1)
        self.assertEqual(value("hermes_sink_request_seconds_bucket", le="0.005"), 1)
        self.assertEqual(value("hermes_sink_request_seconds_bucket", le="0.25"), 2)
        self.assertEqual(value("hermes_sink_request_seconds_bucket", le="+Inf"), 3)
        self.assertAlmostEqual(value("hermes_sink_request_seconds_sum"), 100.203)

    def test_same_labels_added_up_and_registry_exposition(self):
        a, b = SinkMetrics("amqp", "amqp://x"), SinkMetrics("amqp", "amqp://x")
        a.observe(0.01, False)
        b.observe(0.01, True)
        registry = CollectorRegistry()
        registry.register(SinkCollector())
        text = generate_latest(registry).decode()
        self.assertIn('hermes_sink_requests_total{sink="amqp",target="amqp://x"} 2.0', text)
        self.assertIn('hermes_sink_failures_total{sink="amqp",target="amqp://x"} 1.0', text)
        del a, b
