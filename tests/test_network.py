"""
Network faults between the listener and a real server, made with a TCP
proxy on loopback that the test can cut (both sides reset at once) or
blackhole (it stops forwarding, the sockets stay open: a half-open path).
"""

from twisted.internet import defer, reactor
from twisted.trial import unittest

from tests.support.faults import FaultHelpers
from tests.support.proxy import Proxy
from tests.support.shared import capture_log, shared_primary, sleep, wait_until


class NetworkFaultTests(FaultHelpers, unittest.TestCase):
    def setUp(self):
        self.cluster = shared_primary()
        self.proxy = Proxy("127.0.0.1", self.cluster.port)
        self.port = reactor.listenTCP(0, self.proxy, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self.proxy.cut)
        self.listener_dsn = (f"host=127.0.0.1 port={self.port.getHost().port} user=postgres "
                             f"dbname=postgres application_name=hermes-net-{self.id()[-8:]}")

    @defer.inlineCallbacks
    def test_connection_reset(self):
        """
        The path resets (both ends see the connection go): the listener
        notices at once, reconnects through the proxy, queues a resync, and
        delivers exactly what is sent after.
        """
        log = capture_log(self)
        client, processor, _ = self.start_client(self.cluster, "reset",
                                                 listener_dsn=self.listener_dsn)
        yield self.wait_listening(client, processor)
        yield self.send_and_check(self.cluster, processor, ["before"])
        index = len(processor.events)
        self.proxy.cut()
        yield wait_until(lambda: "resync" in processor.kinds(index), timeout=5, what="resync")
        self.assert_resync_after(processor, index)
        yield self.send_and_check(self.cluster, processor, ["after 1", "after 2"])
        self.assert_running(client)
        self.assertEqual(client.listener.reconnects, 1)
        self.assert_clean_log(log)

    @defer.inlineCallbacks
    def test_half_open_path(self):
        """
        The path goes silent with both sockets open (a half-open TCP
        connection): the liveness probe declares the connection dead after
        liveness_timeout, the listener reconnects and queues a resync.
        """
        log = capture_log(self)
        client, processor, _ = self.start_client(
            self.cluster, "blackhole", listener_dsn=self.listener_dsn,
            listener_kwargs={"liveness_timeout": 1.0, "liveness_interval": 0.2},
        )
        yield self.wait_listening(client, processor)
        index = len(processor.events)
        self.proxy.blackhole()
        started = reactor.seconds()
        yield wait_until(lambda: "resync" in processor.kinds(index), timeout=6, what="resync")
        elapsed = reactor.seconds() - started
        self.assertTrue(1.0 <= elapsed <= 3.0, elapsed)
        self.assert_resync_after(processor, index)
        yield self.send_and_check(self.cluster, processor, ["through the new path"])
        self.assert_running(client)
        warnings = [e for e in log if "liveness probe" in (e.get("error") or "")]
        self.assertEqual(len(warnings), 1)
        self.assert_clean_log(log)
        self.proxy.heal()
        yield sleep(0)
