"""
Tests for L{hermes_tx.client}: validation and wiring, a whole Client on a
real server, and composing it into an existing application (.tac).
"""

import json
import os

from twisted.application import service
from twisted.internet import defer, task
from twisted.trial import unittest

from hermes_tx import strategies
from hermes_tx.client import Client
from hermes_tx.components import Component
from hermes_tx.connectors import PostgresConnector
from hermes_tx.exceptions import InvalidConfigurationException
from hermes_tx.listeners import PostgresNotificationListener
from tests.support.shared import shared_primary, wait_until

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


class Collector(Component):
    """
    The seed's zero-argument processor, collecting what it executes.
    """

    def __init__(self):
        super().__init__()
        self.events = []

    def execute(self, event):
        self.events.append(event)


class ClientConfigurationTests(unittest.TestCase):
    def test_only_components(self):
        client = Client("dbname=x")
        for bad in (object(), service.Service(), "listener"):
            self.assertRaises(InvalidConfigurationException, client.add_listener, bad)
            self.assertRaises(InvalidConfigurationException, client.add_processor, bad)

    def test_one_of_each(self):
        client = Client("dbname=x")
        client.add_processor(Collector())
        self.assertRaises(InvalidConfigurationException, client.add_processor, Collector())

    def test_bad_dsn(self):
        e = self.assertRaises(InvalidConfigurationException, Client, "password=hunter2 oops")
        self.assertNotIn("hunter2", str(e))

    def test_repr_hides_password(self):
        self.assertNotIn("hunter2", repr(Client("host=x password=hunter2")))

    def test_wiring(self):
        """
        The listener's queue is the processor's pipe; both report to the
        Client's error queue; both are child services.
        """
        client = Client("dbname=x")
        processor = Collector()
        client.add_processor(processor)
        listener = PostgresNotificationListener(PostgresConnector("dbname=x"), "c")
        client.add_listener(listener)
        self.assertIs(listener.notif_queue, processor.notification_pipe)
        self.assertIs(listener.notif_queue, client.notification_queue)
        self.assertIs(listener.error_queue, client.error_queue)
        self.assertIs(processor.error_queue, client.error_queue)
        self.assertEqual(list(client), [processor, listener])

    def test_users_own_queue_is_kept(self):
        """
        A listener built with its own queue keeps it, and the processor is
        rewired to read from it whichever was added first.
        """
        own = defer.DeferredQueue()
        client = Client("dbname=x")
        processor = Collector()
        client.add_processor(processor)
        client.add_listener(PostgresNotificationListener(PostgresConnector("dbname=x"), "c", own))
        self.assertIs(processor.notification_pipe, own)

class ClientOnServerTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_listener_to_processor(self):
        """
        Started, the Client delivers the start event and then every
        notification to the processor; stopped, it closes its connection.
        """
        cluster = shared_primary()
        dsn = cluster.dsn(application_name="hermes-client-test")
        client = Client(dsn)
        processor = Collector()
        client.add_listener(PostgresNotificationListener(PostgresConnector(dsn), ["Jobs", "jobs"]))
        client.add_processor(processor)
        client.startService()
        yield wait_until(lambda: processor.events, what="start event")
        for i in range(5):
            cluster.notify("Jobs" if i % 2 else "jobs", str(i))
        yield wait_until(lambda: len(processor.events) == 6, what="notifications")
        self.assertEqual(
            [(e.kind, e.channel, e.payload) for e in processor.events],
            [("start", None, None)] + [("notification", "Jobs" if i % 2 else "jobs", str(i))
                                       for i in range(5)],
        )
        self.assertEqual(client.role, "primary")
        yield client.stopService()
        yield wait_until(lambda: not cluster.backend_pids("hermes-client-test"), what="closed")
        self.assertFalse(processor.is_alive())
        self.assertEqual(client.role, "unknown")

    @defer.inlineCallbacks
    def test_terminated_component_is_logged(self):
        """
        A component's TERMINATE report reaches the Client, which logs one
        line naming the component.
        """

        class Fatal(strategies.AbstractErrorStrategy):
            def handle_exception(self, error):
                return False, strategies.TERMINATE

        class Boom(Component):
            def execute(self, item):
                raise ValueError("boom")

        from twisted.logger import formatEvent, globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        client = Client(shared_primary().dsn())
        boom = Boom(error_strategy=Fatal(), clock=task.Clock())
        boom.setName("boom")
        client.add_processor(boom)
        client.startService()
        yield wait_until(lambda: boom.running, what="processor started on the primary")
        client.notification_queue.put(1)
        self.assertFalse(boom.is_alive())
        self.assertEqual(client.error_queue.pending, [])
        yield client.stopService()
        lines = [formatEvent(e) for e in events if e.get("log_namespace") == "hermes_tx.client.Client"]
        self.assertEqual(
            [line for line in lines if "stopped" in line],
            ["boom stopped: ValueError: boom (expected=False, action=TERMINATE)"],
        )


class TacCompositionTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_example_tac(self):
        """
        examples/hermes.tac puts a Client into an application's existing
        MultiService next to another service; starting the application runs
        Hermes, stopping it stops Hermes.
        """
        cluster = shared_primary()
        output = os.path.abspath(self.mktemp())
        env = {"HERMES_DSN": cluster.dsn(application_name="hermes-tac-test"),
               "HERMES_OUTPUT": output}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            application = service.loadApplication(os.path.join(EXAMPLES, "hermes.tac"), "python")
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        top = service.IService(application)
        parent = list(top)[0]
        self.assertIsInstance(parent, service.MultiService)
        hermes = parent.getServiceNamed("hermes")
        self.assertIsInstance(hermes, Client)
        self.assertEqual(len(list(parent)), 2)
        top.startService()
        try:
            yield wait_until(lambda: hermes.listener.is_listening, what="listening")
            cluster.notify("Jobs-Done", "42")
            yield wait_until(lambda: os.path.exists(output) and
                             open(output).read().count("\n") == 2, what="two lines")
        finally:
            yield top.stopService()
        with open(output, encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        self.assertEqual([(r["kind"], r["channel"], r["payload"]) for r in records],
                         [("start", None, None), ("notification", "Jobs-Done", "42")])
        self.assertFalse(hermes.running)
