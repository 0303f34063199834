"""
Tests for L{hermes_tx.status.site}: the HTTP endpoint, against a Client on a real
server, fetched over real HTTP.
"""

import json

from twisted.internet import defer, reactor
from twisted.logger import formatEvent
from twisted.trial import unittest
from twisted.web.client import Agent, readBody

from hermes_tx.client import Client
from hermes_tx.components import Component
from hermes_tx.connectors import PostgresConnector
from hermes_tx.listeners import PostgresNotificationListener
from hermes_tx.status import StatusService
from tests.support.shared import capture_log, shared_primary, wait_until

SECRET = "s3cr3t-status"


class Counting(Component):
    def __init__(self):
        super().__init__()
        self.seen = []

    def execute(self, event):
        if event.payload == "boom":
            raise ValueError("boom")
        self.seen.append(event)


class StatusServiceTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.cluster = shared_primary()
        # trust authentication ignores the password: it is here to be hidden.
        dsn = self.cluster.dsn(application_name="hermes-status", password=SECRET)
        self.client = Client(dsn)
        self.processor = Counting()
        self.client.add_listener(PostgresNotificationListener(PostgresConnector(dsn), ["Metric-Chan", "other"]))
        self.client.add_processor(self.processor)
        self.status = StatusService(self.client, 0)
        self.status.startService()
        self.addCleanup(self.status.stopService)
        self.base = f"http://127.0.0.1:{self.status.port.getHost().port}".encode()
        self.agent = Agent(reactor)
        yield None

    @defer.inlineCallbacks
    def get(self, path):
        response = yield self.agent.request(b"GET", self.base + path)
        body = yield readBody(response)
        self.assertNotIn(SECRET.encode(), body)
        return response.code, body

    @defer.inlineCallbacks
    def test_not_ready_until_primary_and_listening(self):
        code, body = yield self.get(b"/ready")
        self.assertEqual(code, 503)
        self.assertEqual(json.loads(body)["ready"], False)
        self.client.startService()
        self.addCleanup(self.client.stopService)
        yield wait_until(lambda: self.client.listener.is_listening, what="listening")
        code, body = yield self.get(b"/ready")
        self.assertEqual((code, json.loads(body)),
                         (200, {"ready": True, "role": "primary", "listener": "listening",
                                "processor": "working"}))
        code, body = yield self.get(b"/health")
        self.assertEqual((code, json.loads(body)), (200, {"status": "ok"}))

    @defer.inlineCallbacks
    def test_stopped_client(self):
        code, body = yield self.get(b"/health")
        self.assertEqual((code, json.loads(body)), (503, {"status": "stopped"}))
        code, body = yield self.get(b"/ready")
        self.assertEqual(code, 503)
        self.assertEqual(json.loads(body)["reason"], "server role is unknown")

    @defer.inlineCallbacks
    def test_metrics(self):
        self.client.startService()
        self.addCleanup(self.client.stopService)
        yield wait_until(lambda: self.client.listener.is_listening, what="listening")
        for payload in ("a", "boom", "b"):
            self.cluster.notify("Metric-Chan", payload)
        self.cluster.notify("other", "c")
        yield wait_until(lambda: len(self.processor.seen) == 4, timeout=5, what="events")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        code, body = yield self.get(b"/metrics")
        self.assertEqual(code, 200)
        text = body.decode()
        for line in [
            'hermes_notifications_received_total{channel="Metric-Chan"} 3.0',
            'hermes_notifications_received_total{channel="other"} 1.0',
            'hermes_notifications_processed_total{channel="Metric-Chan"} 2.0',
            'hermes_notifications_processed_total{channel="other"} 1.0',
            "hermes_processor_failures_total 1.0",
            'hermes_reconnects_total{source="listener"} 0.0',
            "hermes_resync_events_total 0.0",
            'hermes_role{role="primary"} 1.0',
            'hermes_role{role="standby"} 0.0',
            "hermes_listening 1.0",
            "hermes_queue_depth 0.0",
        ]:
            self.assertIn(line, text.splitlines())
        since = [line for line in text.splitlines()
                 if line.startswith("hermes_seconds_since_last_notification ")]
        self.assertEqual(len(since), 1)
        self.assertTrue(0 <= float(since[0].split()[1]) < 30, since)


class AccessLogTests(unittest.TestCase):
    """
    A request writes no log line unless access_log=True.
    """

    @defer.inlineCallbacks
    def fetch_logging(self, access_log):
        events = capture_log(self)
        status = StatusService(Client("dbname=x"), 0, access_log=access_log)
        status.startService()
        self.addCleanup(status.stopService)
        url = f"http://127.0.0.1:{status.port.getHost().port}/health".encode()
        response = yield Agent(reactor).request(b"GET", url)
        yield readBody(response)
        return [formatEvent(e) for e in events if "GET /health" in formatEvent(e)]

    @defer.inlineCallbacks
    def test_quiet_by_default(self):
        self.assertEqual((yield self.fetch_logging(False)), [])

    @defer.inlineCallbacks
    def test_access_log_when_asked(self):
        self.assertEqual(len((yield self.fetch_logging(True))), 1)
