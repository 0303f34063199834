"""
End to end: the real C{twistd -n hermes} process against a real server.
"""

import json

from twisted.internet import defer, error
from twisted.trial import unittest

from tests.support.shared import shared_primary, wait_until
from tests.support.twistd import free_port, run_twistd

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
        self.assertEqual(json.loads(ready), {"ready": True, "role": "primary",
                                             "listener": "listening", "processor": "working"})
        self.assertIn(b'hermes_notifications_received_total{channel="Status"} 2.0', metrics)
        records = proto.records()
        self.assertEqual(records[1]["data"], {"id": 7})
        self.assertEqual(records[2]["payload"], "not json{")
        self.assertIn("JSONDecodeError", records[2]["decode_error"])
        self.assertNotIn("data", records[2])
        for blob in (proto.out, proto.err, ready, metrics):
            self.assertNotIn(b"pw-e2e-secret", blob)
        # No access-log line per request.
        self.assertNotIn(b"GET /ready", proto.err)
        self.assertNotIn(b"GET /metrics", proto.err)
