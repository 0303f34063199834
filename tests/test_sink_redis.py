"""
The Redis Streams sink against real redis-server processes: the shared
one on 6379 (unique stream names) for what does not restart it, and a
test's own (tests.support.redisserver) for passwords, kills and freezes.
"""

import json
import random
import uuid

import txredisapi
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from hermes_tx.events import Change, Event
from hermes_tx.outcomes import Retry
from hermes_tx.runtime.breaker import CLOSED, OPEN
from hermes_tx.sinks import from_url
from hermes_tx.sinks.redis_streams import RedisStreamSink
from tests.support.faults import event_text
from tests.support.proxy import listen_proxy
from tests.support.redisserver import start_redis
from tests.support.shared import capture_log, wait_until
from tests.support.sinkdriver import Driver, assert_delivered_in_order, make_changes, read_change

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
    def test_read_sent_like_an_insert(self):
        """
        A backfilled row (op READ) is an entry like any change, its
        payload whole: the reader upserts C{new}.
        """
        sink = self.sink()
        read = read_change(5, "key-9", {"k": "key-9", "n": 0})
        self.assertIsNone((yield sink.execute(make_changes(1, 1) + [read])))
        entries = yield self.read()
        self.assertEqual(entries[1], {"topic": "items", "key": "key-9", "id": "5", "payload": read.payload})
        self.assertEqual([json.loads(e["payload"])["op"] for e in entries], ["INSERT", "READ"])

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
        self.assertEqual(str(e), f"authentication refused by {wrong.target}: WRONGPASS invalid "
                                 "username-password pair or user is disabled.")
        entries = yield self.read(server.port, PASSWORD)
        self.assertEqual([x["id"] for x in entries], ["1", "2"])
        texts = [str(e), repr(by_url), repr(wrong), by_url.target] + [event_text(x) for x in log]
        for text in texts:
            self.assertNotIn(PASSWORD, text)
            self.assertNotIn(PASSWORD[::-1], text)

    @defer.inlineCallbacks
    def test_credentials_refused_fail_the_batch_as_a_whole(self):
        """
        No password for a server that wants one (NOAUTH), a user that does
        not exist on the shared server (WRONGPASS), a password for a server
        with none: each batch is one Retry with one line naming the cause,
        again at every batch (the breaker sees a dependency that is down).
        """
        server = start_redis(self, password=PASSWORD)
        cases = [(self.sink(server.port), "NOAUTH Authentication required."),
                 (from_url(f"redis://nobody:{PASSWORD}@127.0.0.1:6379/0?stream={self.stream}"),
                  "WRONGPASS invalid username-password pair or user is disabled."),
                 (self.sink(password=PASSWORD), "ERR AUTH <password> called without any password")]
        self.addCleanup(cases[1][0].tear_down)
        for sink, reply in cases:
            for _ in range(2):
                e = yield self.assertFailure(sink.execute(make_changes(3, 1)), Retry)
                self.assertTrue(str(e).startswith(f"authentication refused by {sink.target}: "
                                                  + reply), str(e))
                self.assertNotIn("\n", str(e))
                self.assertNotIn(PASSWORD, str(e))
            self.assertEqual((sink.metrics.retried, sink.metrics.sent), (6, 0))

    @defer.inlineCallbacks
    def test_refused_credentials_found_without_an_event(self):
        """
        A sink with a wrong password finds out when its run starts, with
        no event at all: its circuit opens at once (the reason is Redis's
        reply, no password).  Each time the circuit half-opens with
        nothing pending it connects again; once the server takes the
        password, that check closes the circuit, and the connection it
        made carries the next batch.
        """
        clock = task.Clock()
        server = start_redis(self, password=PASSWORD)
        wrong = PASSWORD[::-1]
        sink = self.sink(server.port, password=wrong, clock=clock)
        sink.set_up()
        breaker = sink.breaker
        yield wait_until(lambda: breaker.state == OPEN, timeout=10, what="the circuit to open")
        self.assertTrue(breaker.reason.startswith(
            f"authentication refused by {sink.target}: WRONGPASS"), breaker.reason)
        self.assertNotIn(wrong, breaker.reason)
        self.assertEqual(sink.metrics.requests, 0)
        clock.advance(breaker.retry_at - clock.seconds())
        yield wait_until(lambda: breaker.state == OPEN, timeout=10, what="the circuit to open again")
        self.assertEqual(sink.checking.checks, 2)
        conn = yield txredisapi.Connection("127.0.0.1", server.port, password=PASSWORD,
                                           reconnect=False)
        yield conn.execute_command("CONFIG", "SET", "requirepass", wrong)
        yield conn.disconnect()
        clock.advance(breaker.retry_at - clock.seconds())
        yield wait_until(lambda: breaker.state == CLOSED, timeout=10, what="the circuit to close")
        self.assertEqual(sink.checking.checks, 3)
        self.assertIsNone((yield sink.execute(make_changes(1, 1))))
        self.assertEqual(sink.connection.connections, 1)

    @defer.inlineCallbacks
    def test_rights_refused_fail_the_batch_as_a_whole(self):
        """
        A user that may not XADD (NOPERM for every event): one Retry for
        the batch, one line; with the right granted the same sink goes on.
        """
        server = start_redis(self, password=PASSWORD)
        admin = yield txredisapi.Connection("127.0.0.1", server.port, password=PASSWORD,
                                            reconnect=False)
        self.addCleanup(admin.disconnect)
        yield admin.execute_command("ACL", "SETUSER", "writer", "on", ">writer-pw-1234", "~*",
                                    "+@all", "-xadd")
        sink = from_url(f"redis://writer:writer-pw-1234@127.0.0.1:{server.port}/0"
                        f"?stream={self.stream}")
        self.addCleanup(sink.tear_down)
        e = yield self.assertFailure(sink.execute(make_changes(2, 1)), Retry)
        self.assertEqual(str(e), f"permission refused by {sink.target}: NOPERM this user has "
                                 "no permissions to run the 'xadd' command")
        yield admin.execute_command("ACL", "SETUSER", "writer", "+xadd")
        self.assertIsNone((yield sink.execute(make_changes(2, 1))))
        self.assertEqual(sink.connection.connections, 1)

    @defer.inlineCallbacks
    def test_a_database_that_does_not_exist_is_one_line(self):
        sink = from_url(f"redis://127.0.0.1:6379/99999?stream={self.stream}")
        self.addCleanup(sink.tear_down)
        e = yield self.assertFailure(sink.execute(make_changes(1, 1)), Retry)
        self.assertEqual(str(e), f"cannot connect to {sink.target}: Redis answered SELECT 99999 "
                                 "with ERR DB index is out of range")

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
