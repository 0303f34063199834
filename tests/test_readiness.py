"""
L{hermes_tx.status.readiness} and the status endpoint's API in memory: the
/ready body names every part and why it is not ready; /metrics is open to
an application's own collectors; the endpoint mounts into a site of one's
own.
"""

from prometheus_client.core import GaugeMetricFamily
from twisted.internet import task
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from hermes_tx.client import Client
from hermes_tx.listeners import PostgresNotificationListener
from hermes_tx.outbox.consumer import OutboxConsumer
from hermes_tx.status import StatusService, make_resource
from hermes_tx.status.readiness import readiness
from tests.support.fakes import FakeConnection, FakeListenConnector, FakeRoleConnector
from tests.support.shared import Collector


class _Client:
    def client(self, listener=True, outbox=False):
        clock = task.Clock()
        client = Client("host=db", clock=clock, connector=FakeRoleConnector())
        if listener:
            client.add_listener(PostgresNotificationListener(
                FakeListenConnector(), "c", clock=clock, liveness_timeout=None))
        if outbox:
            client.add_outbox(OutboxConsumer(FakeListenConnector(), "t", clock=clock,
                                             liveness_timeout=None, listen_check_timeout=None,
                                             stats_interval=None))
        collector = Collector()
        collector.clock = clock
        client.add_processor(collector)
        return client


class ReadinessTests(_Client, unittest.TestCase):
    def test_an_outbox_only_client_names_its_parts(self):
        """
        An outbox-only Client says nothing about a listener it has not got;
        not yet primary, the reason says so; each part says its state.
        """
        client = self.client(listener=False, outbox=True)
        ready, details = readiness(client)
        self.assertFalse(ready)
        self.assertEqual(details, {"role": "unknown", "outbox": "stopped", "processor": "stopped",
                                   "reason": "server role is unknown"})

    def test_every_part(self):
        client = self.client(listener=True, outbox=True)
        client.startService()
        self.addCleanup(client.stopService)
        ready, details = readiness(client)
        self.assertEqual(details["role"], "primary")
        self.assertEqual(details["listener"], "listening")
        self.assertEqual(details["processor"], "working")
        self.assertIn("outbox", details)

    def test_an_outbox_consumer_whose_claim_has_not_come_back(self):
        """
        Connected, its first claim not answered yet, the outbox consumer is
        C{"starting"}: not ready (a claim refused for a missing grant ends
        the connection before it ever counts as consuming).
        """
        def unanswered(**kwargs):
            conn = FakeConnection(**kwargs)
            conn.hung = True  # the role check answers, the claim never does
            return conn

        clock = task.Clock()
        client = Client("host=db", clock=clock, connector=FakeRoleConnector())
        connector = FakeListenConnector(connection_factory=unanswered)
        client.add_outbox(OutboxConsumer(connector, "t", clock=clock, liveness_timeout=None,
                                         listen_check_timeout=None, stats_interval=None))
        client.add_processor(Collector())
        client.startService()
        self.addCleanup(client.stopService)
        self.addCleanup(lambda: connector.connection.lose())  # (first: the stop waits for the claim)
        ready, details = readiness(client)
        self.assertFalse(ready)
        self.assertEqual((details["role"], details["outbox"], details["reason"]),
                         ("primary", "starting", "outbox consumer is starting"))


class StatusApiTests(_Client, unittest.TestCase):
    def render(self, resource, *path):
        request = DummyRequest(list(path))
        child = resource
        for segment in path:
            child = child.getChildWithDefault(segment, request)
        return child.render(request)

    def test_applications_add_their_collectors(self):
        class Mine:
            def collect(self):
                yield GaugeMetricFamily("myapp_things", "Things of my application", value=7)

        status = StatusService(self.client(), 0)
        status.registry.register(Mine())
        root = make_resource(status.client, status.registry)
        body = self.render(root, b"metrics").decode()
        self.assertIn("myapp_things 7.0", body)
        self.assertIn("hermes_processor_failures_total", body)

    def test_mounts_into_a_site_of_ones_own(self):
        client = self.client()
        root = Resource()
        root.putChild(b"status", make_resource(client))
        request = DummyRequest([b"status", b"health"])
        status = root.getChildWithDefault(b"status", request)
        health = status.getChildWithDefault(b"health", request)
        self.assertEqual(health.render(request), b'{"status": "stopped"}\n')
