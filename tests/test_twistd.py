"""
End to end: the real C{twistd -n hermes} process against a real server.
"""

import json
import os
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


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    def test_status_endpoint_and_json_payloads(self):
        """
        With --status-port, the real process answers /ready and /metrics;
        with --payload-format json, lines carry the decoded data (or the
        decode error); the password in the DSN shows up nowhere.
        """
        from twisted.internet import reactor as r
        from twisted.web.client import Agent, readBody

        port = free_port()
        cluster = shared_primary()
        dsn = cluster.dsn(application_name="hermes-e2e-status", password="pw-e2e-secret")
        proto, transport = run_twistd(["--dsn", dsn, "--channel", "Status", "--status-port",
                                       str(port), "--payload-format", "json"])
        agent = Agent(r)
        try:
            yield wait_until(lambda: b'"kind": "start"' in proto.out, timeout=20, what="start")
            cluster.notify("Status", '{"id": 7}')
            cluster.notify("Status", "not json{")
            yield wait_until(lambda: proto.out.count(b"\n") >= 3, timeout=20, what="lines")
            response = yield agent.request(b"GET", f"http://127.0.0.1:{port}/ready".encode())
            ready = yield readBody(response)
            response = yield agent.request(b"GET", f"http://127.0.0.1:{port}/metrics".encode())
            metrics = yield readBody(response)
        finally:
            transport.signalProcess("TERM")
        ended = yield proto.ended
        self.assertIsInstance(ended, error.ProcessDone, proto.err.decode())
        self.assertEqual(json.loads(ready), {"ready": True, "role": "primary", "listening": True})
        self.assertIn(b'hermes_notifications_received_total{channel="Status"} 2.0', metrics)
        records = proto.records()
        self.assertEqual(records[1]["data"], {"id": 7})
        self.assertEqual(records[2]["payload"], "not json{")
        self.assertIn("JSONDecodeError", records[2]["decode_error"])
        self.assertNotIn("data", records[2])
        for blob in (proto.out, proto.err, ready, metrics):
            self.assertNotIn(b"pw-e2e-secret", blob)

    @defer.inlineCallbacks
    def test_sigint_exits_zero(self):
        cluster = shared_primary()
        proto, transport = run_twistd(["--dsn", cluster.dsn(application_name="hermes-e2e-int"),
                                       "--channel", "int"])
        try:
            yield wait_until(lambda: b'"kind": "start"' in proto.out, timeout=20, what="start")
        finally:
            transport.signalProcess("INT")
        ended = yield proto.ended
        self.assertIsInstance(ended, error.ProcessDone, proto.err.decode())
        self.assertIn("Received SIGINT, stopping cleanly", proto.err.decode())
        self.assertNotIn("Traceback", proto.err.decode())

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
