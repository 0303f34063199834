"""
The Redis Streams sink against real redis-server processes: the shared
one on 6379 (unique stream names) for what does not restart it, and a
test's own (tests.support.redisserver) for passwords, kills and freezes.
"""

import random
import uuid

import txredisapi
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from hermes_tx.events import Change, Event
from hermes_tx.outcomes import Retry
from hermes_tx.sinks import from_url
from hermes_tx.sinks.redis_streams import RedisStreamSink
from tests.support.faults import event_text
from tests.support.proxy import listen_proxy
from tests.support.redisserver import start_redis
from tests.support.shared import capture_log
from tests.support.sinkdriver import Driver, assert_delivered_in_order, make_changes

PASSWORD = "redis-pw-5e6f7a8b"


class RedisTests(unittest.TestCase):
    def setUp(self):
        self.stream = f"hermes-test-{uuid.uuid4().hex}"

    def sink(self, port=6379, password="", extra="", **kwargs):
        auth = f":{password}@" if password else ""
        sink = from_url(f"redis://{auth}127.0.0.1:{port}/0?stream={self.stream}{extra}", **kwargs)
        self.addCleanup(sink.tear_down)
        return sink

    @defer.inlineCallbacks
    def read(self, port=6379, password=None):
        """@return: the stream's entries as dicts of text."""
        conn = yield txredisapi.Connection("127.0.0.1", port, password=password,
                                           reconnect=False, convertNumbers=False)
        try:
            entries = yield conn.execute_command("XRANGE", self.stream, "-", "+")
            if port == 6379:
                yield conn.execute_command("DEL", self.stream)
        finally:
            yield conn.disconnect()
        return [dict(zip(fields[::2], fields[1::2])) for _, fields in entries]

    @defer.inlineCallbacks
    def test_one_entry_per_event(self):
        sink = self.sink()
        note = Event("notification", "Chan", "hello", 42)
        changes = make_changes(2, 2)
        self.assertIsNone((yield sink.execute([Event("resync")] + changes + [note])))
        entries = yield self.read()
        self.assertEqual(entries[0], {"topic": "items", "key": "key-0", "id": "1",
                                      "payload": changes[0].payload})
        self.assertEqual([e.get("id") for e in entries], ["1", "2", "3", "4", None])
        self.assertEqual(entries[4], {"topic": "Chan", "payload": "hello", "pid": "42"})
        self.assertEqual((sink.metrics.requests, sink.metrics.sent), (1, 5))
        self.assertEqual(sink.connection.connections, 1)

    @defer.inlineCallbacks
    def test_maxlen_trims_approximately(self):
        sink = self.sink(extra="&maxlen=10", max_batch=1000)
        yield sink.execute(make_changes(1000, 1))
        conn = yield txredisapi.Connection("127.0.0.1", 6379, reconnect=False)
        length = yield conn.execute_command("XLEN", self.stream)
        yield conn.execute_command("DEL", self.stream)
        yield conn.disconnect()
        self.assertLess(length, 1000)
        self.assertGreaterEqual(length, 10)

    @defer.inlineCallbacks
    def test_error_reply_retries_the_event(self):
        conn = yield txredisapi.Connection("127.0.0.1", 6379, reconnect=False)
        yield conn.execute_command("SET", self.stream, "not a stream")
        sink = self.sink()
        changes = make_changes(2, 1)
        outcome = yield sink.execute(changes)
        self.assertEqual([c for c, _, _ in outcome.retry], changes)
        self.assertTrue(outcome.retry[0][1].startswith("Redis answered ResponseError: WRONGTYPE"),
                        outcome.retry[0][1])
        yield conn.execute_command("DEL", self.stream)
        self.assertIsNone((yield sink.execute(changes)))
        yield conn.execute_command("DEL", self.stream)
        yield conn.disconnect()

    @defer.inlineCallbacks
    def test_password_from_url_or_file_and_never_shown(self):
        log = capture_log(self)
        server = start_redis(self, password=PASSWORD)
        secret_file = self.mktemp()
        with open(secret_file, "w") as f:
            f.write(PASSWORD + "\n")
        by_url = self.sink(server.port, password=PASSWORD)
        by_file = self.sink(server.port, secret_file=secret_file)
        wrong = self.sink(server.port, password=PASSWORD[::-1])
        self.assertIsNone((yield by_url.execute(make_changes(1, 1))))
        self.assertIsNone((yield by_file.execute(make_changes(1, 1, start_id=2))))
        e = yield self.assertFailure(wrong.execute(make_changes(1, 1)), Retry)
        self.assertIn("cannot connect", str(e))
        entries = yield self.read(server.port, PASSWORD)
        self.assertEqual([x["id"] for x in entries], ["1", "2"])
        texts = [str(e), repr(by_url), repr(wrong), by_url.target] + [event_text(x) for x in log]
        for text in texts:
            self.assertNotIn(PASSWORD, text)
            self.assertNotIn(PASSWORD[::-1], text)

    @defer.inlineCallbacks
    def test_down_then_up_reconnects(self):
        server = start_redis(self)
        server.kill()
        sink = self.sink(server.port, timeout=2)
        e = yield self.assertFailure(sink.execute(make_changes(1, 1)), Retry)
        self.assertIn("cannot connect to redis://127.0.0.1", str(e))
        self.assertIn("Connection refused", str(e))
        server.start()
        self.assertIsNone((yield sink.execute(make_changes(1, 1))))
        server.kill()
        yield task.deferLater(reactor, 0.05, lambda: None)
        yield self.assertFailure(sink.execute(make_changes(1, 1, start_id=2)), Retry)
        server.start()
        self.assertIsNone((yield sink.execute(make_changes(1, 1, start_id=2))))
        self.assertEqual(sink.connection.connections, 2)

    @defer.inlineCallbacks
    def test_frozen_server_times_out_and_the_connection_is_dropped(self):
        server = start_redis(self)
        sink = self.sink(server.port, timeout=0.3)
        yield sink.execute(make_changes(1, 1))
        server.freeze()
        try:
            e = yield self.assertFailure(sink.execute(make_changes(1, 1, start_id=2)), Retry)
        finally:
            server.thaw()
        self.assertEqual(str(e), "no answer within 0.3 s")
        self.assertIsNone((yield sink.execute(make_changes(1, 1, start_id=2))))
        self.assertEqual(sink.connection.connections, 2)
        self.assertEqual(sink.metrics.failures, 1)

    @defer.inlineCallbacks
    def test_cuts_and_a_restart_lose_nothing_and_keep_order(self):
        """
        30% of batches have their connection cut (at a random moment, often
        mid-pipeline), and the server is SIGKILLed and started again
        midway: every change is in the stream, per key in id order, a
        duplicate only right after its first copy.
        """
        server = start_redis(self, durable=True)
        proxy, port = listen_proxy(self, "127.0.0.1", server.port)
        rng = random.Random(3)

        def fault(n):
            if n == 25:
                server.kill()
                reactor.callLater(0.05, server.start)
            elif rng.random() < 0.3:
                reactor.callLater(rng.random() * 0.004, proxy.cut)

        sink = self.sink(port, max_batch=10, timeout=2)
        changes = make_changes(30, 8)
        driver = Driver(sink, changes, fault=fault)
        yield driver.run(timeout=60)
        self.assertEqual((driver.rejected, driver.errors), ([], []))
        self.assertGreater(driver.retries, 10)
        entries = yield self.read(server.port)
        assert_delivered_in_order(self, changes, [(e["key"], e["id"]) for e in entries])

    def test_url_errors(self):
        from hermes_tx.sinks import SinkURLError

        for bad in ("redis://h/0", "redis://h/x?stream=s", "redis://h/0?stream=s&maxlen=0"):
            self.assertRaises(SinkURLError, RedisStreamSink, bad)

    @defer.inlineCallbacks
    def test_unencodable_event_rejected_alone(self):
        sink = self.sink()
        bad = Change(1, "t", "k\ud800", 0, 1.0, "{}", {})
        outcome = yield sink.execute([bad] + make_changes(1, 1, start_id=2))
        self.assertEqual([c for c, _ in outcome.rejected], [bad])
        self.assertEqual([e["id"] for e in (yield self.read())], ["2"])
