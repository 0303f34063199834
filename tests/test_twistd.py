"""
End to end: the real C{twistd -n hermes} process against a real server.
"""

import json
import os
import signal
import sys

from twisted.internet import defer, error, protocol, reactor
from twisted.trial import unittest

from tests.support.shared import shared_primary, wait_until

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Twistd(protocol.ProcessProtocol):
    """
    Collects a child's output and its exit.
    """

    def __init__(self):
        self.out = b""
        self.err = b""
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        self.ended.callback(reason.value)

    def records(self):
        return [json.loads(line) for line in self.out.decode("utf-8").splitlines()]


def run_twistd(args, env_extra=None):
    """
    Start C{twistd -n --pidfile= hermes ARGS}.

    @return: the L{Twistd} protocol and the process transport.
    """
    env = dict(os.environ, PYTHONPATH=ROOT, **(env_extra or {}))
    proto = Twistd()
    transport = reactor.spawnProcess(
        proto, TWISTD, [TWISTD, "-n", "--pidfile=", "hermes"] + args, env=env, path=ROOT
    )
    return proto, transport


class TwistdEndToEndTests(unittest.TestCase):
    CHANNELS = ["MyChan", "my-chan", 'Mixed-Case "q"', "ünï ☃"]

    @defer.inlineCallbacks
    def test_exact_delivery_and_clean_sigterm(self):
        """
        twistd hermes prints the start event, then every notification
        exactly and in order per channel, as JSON lines on stdout (logs go to
        stderr); SIGTERM stops it with exit status 0 and no "Unhandled
        Error".
        """
        cluster = shared_primary()
        app = "hermes-e2e"
        args = ["--dsn", cluster.dsn(application_name=app)]
        for channel in self.CHANNELS:
            args += ["--channel", channel]
        proto, transport = run_twistd(args)
        try:
            yield wait_until(lambda: b'"kind": "start"' in proto.out, timeout=20,
                             what="the start event")
            payloads = ["", "plain", "quotes ' \" \\ ;", "ünïcødé ☃ \U0001F600", "y" * 7000]
            sent = []
            for i in range(3):
                for channel in self.CHANNELS:
                    for payload in payloads:
                        cluster.notify(channel, f"{i}:{payload}")
                        sent.append((channel, f"{i}:{payload}"))
            yield wait_until(lambda: proto.out.count(b"\n") >= len(sent) + 1, timeout=20,
                             what="all notifications")
        finally:
            if not proto.ended.called:
                transport.signalProcess("TERM")
        ended = yield proto.ended
        self.assertIsInstance(ended, error.ProcessDone, proto.err.decode())
        records = proto.records()
        self.assertEqual(records[0]["kind"], "start")
        self.assertEqual([(r["channel"], r["payload"]) for r in records[1:]], sent)
        self.assertEqual({r["kind"] for r in records[1:]}, {"notification"})
        err = proto.err.decode("utf-8")
        self.assertNotIn("Unhandled Error", err)
        self.assertNotIn("Traceback", err)
        self.assertIn("listening on", err)
        self.assertIn("Received SIGTERM, stopping cleanly", err)

    @defer.inlineCallbacks
    def test_usage_error_is_one_line(self):
        """
        A user's mistake prints one line on stderr and exits non-zero before
        anything starts.
        """
        proto, _ = run_twistd(["--dsn", "password=hunter2 broken", "--channel", "x"])
        ended = yield proto.ended
        self.assertIsInstance(ended, error.ProcessTerminated)
        self.assertEqual(ended.exitCode, 2)
        self.assertEqual(proto.err.decode().strip(), "twistd hermes: error: invalid DSN syntax")
        self.assertEqual(proto.out, b"")
