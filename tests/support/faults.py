"""
What every fault-injection test checks (tests.test_faults, tests.test_network):
a Client started on a cluster, exact delivery after recovery, the one
resync after the gap, a Client still running, and a clean log.
"""

from twisted.internet import defer
from twisted.logger import LogLevel, formatEvent

from hermes_tx.client import Client
from hermes_tx.connectors import PostgresConnector
from hermes_tx.listeners import LISTENING, PostgresNotificationListener
from tests.support.shared import Collector, sleep, wait_until

CHANNEL = "Faults-Chan"
SECRET = "s3cr3t-XYZ"


def event_text(event):
    """
    @return: all the text a log event can produce: its formatted message
        plus, for an error, the failure's traceback.
    """
    text = formatEvent(event) or ""
    failure = event.get("log_failure")
    if failure is not None:
        text += "\n" + failure.getTraceback()
    return text


def warnings_in(events):
    """
    @return: the warnings among C{events} (hermes_tx's, or a component
        subclass's: a component logs in its own class's namespace).
    """
    return [e for e in events if e.get("log_level") == LogLevel.warn]


class FaultHelpers:
    """
    Start a Client and check the four things every fault test checks.
    """

    def start_client(self, cluster, name, listener_kwargs=None, processor=None,
                     client_dsn=None, listener_dsn=None, **client_kwargs):
        """
        Start a Client on C{cluster} whose listener (on L{CHANNEL}) has its
        own connection, with application_name C{hermes-faults-NAME}.  The
        Client's role checks use another connection (C{hermes-role}), so the
        listener's backend is the only one with that name.

        @return: C{(client, processor, app_name)}; stopped at cleanup.
        """
        app_name = f"hermes-faults-{name}"[:63]
        if listener_dsn is None:
            listener_dsn = cluster.dsn(application_name=app_name)
        client = Client(client_dsn if client_dsn is not None else cluster.dsn(), **client_kwargs)
        processor = processor if processor is not None else Collector()
        client.add_listener(PostgresNotificationListener(
            PostgresConnector(listener_dsn), CHANNEL, **(listener_kwargs or {})
        ))
        client.add_processor(processor)
        client.startService()
        self.addCleanup(lambda: client.stopService() if client.running else None)
        return client, processor, app_name

    @defer.inlineCallbacks
    def wait_listening(self, client, processor, count=1):
        """Wait for the listener to listen and C{count} events to arrive."""
        yield wait_until(lambda: client.listener is not None and client.listener.is_listening,
                         timeout=10, what="listening")
        yield wait_until(lambda: len(processor.events) >= count, timeout=10,
                         what=f"{count} event(s)")

    @defer.inlineCallbacks
    def send_and_check(self, cluster, processor, payloads, timeout=10.0):
        """
        Send C{payloads} on L{CHANNEL} and check that exactly they, in order,
        are the notifications the processor gets next.
        """
        start = len(processor.events)
        for p in payloads:
            cluster.notify(CHANNEL, p)
        yield wait_until(lambda: len(processor.events) - start >= len(payloads),
                         timeout=timeout, what=f"{len(payloads)} notifications")
        yield sleep(0.05)  # nothing more arrives
        got = processor.events[start:]
        self.assertEqual([(e.kind, e.channel, e.payload) for e in got],
                         [("notification", CHANNEL, p) for p in payloads])

    def assert_resync_after(self, processor, index):
        """
        The first event from C{index} on is the one resync, and every
        notification after it.
        """
        kinds = processor.kinds(index)
        self.assertTrue(kinds, "no event after the fault")
        self.assertEqual(kinds[0], "resync", kinds)
        self.assertEqual(kinds.count("resync"), 1, kinds)

    def assert_running(self, client):
        self.assertTrue(client.running)
        self.assertEqual(client.role, "primary")
        self.assertTrue(client.listener.is_alive())
        self.assertEqual(client.listener.state, LISTENING)
        self.assertTrue(client.processor.is_alive())
        self.assertEqual(list(client.error_queue.pending), [])

    def assert_unreachable(self, client, log, why):
        self.assertTrue(client.running)
        self.assertEqual(client.role, "unknown")
        self.assertFalse(client.listener.running)
        self.assertFalse(client.processor.running)
        warnings = warnings_in(log)
        # Checked again and again (backing off), logged once.
        self.assertEqual(len(warnings), 1, [formatEvent(e) for e in warnings])
        for e in warnings:
            self.assertIn(why, formatEvent(e))
        self.assert_clean_log(log)
        for e in log:
            self.assertNotIn(SECRET, event_text(e))

    def assert_clean_log(self, events):
        """
        No tracebacks, no "Unhandled Error", and every hermes_tx warning is
        one line.
        """
        self.assertEqual([f.getTraceback() for f in self.flushLoggedErrors()], [])
        for e in events:
            text = event_text(e)
            self.assertNotIn("Unhandled Error", text)
            self.assertNotIn("Traceback", text)
            self.assertIsNone(e.get("log_failure"), text)
        for e in warnings_in(events):
            self.assertNotIn("\n", formatEvent(e))
