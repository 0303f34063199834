"""
The RabbitMQ sink against the real broker on 127.0.0.1:5672 (guest/guest),
one exchange and queue per test, deleted afterwards.  A broker-side close
(as a broker restart does) is made with C{rabbitmqctl close_connection} on
the sink's own connection only; cuts go through a loopback TCP proxy.
"""

import json
import logging
import random
import uuid

import pika
from pika.adapters.twisted_connection import TwistedProtocolConnection
from twisted.internet import defer, endpoints, reactor, task, utils
from twisted.trial import unittest

from hermes_tx.events import Change, Event
from hermes_tx.outcomes import Retry
from hermes_tx.runtime.breaker import OPEN
from hermes_tx.sinks import SinkURLError, from_url
from hermes_tx.sinks.amqp import AmqpSink
from tests.support.faults import event_text
from tests.support.proxy import listen_proxy
from tests.support.shared import capture_log, wait_until
from tests.support.sinkdriver import Driver, assert_delivered_in_order, make_changes, read_change

BROKER = ("127.0.0.1", 5672)


@defer.inlineCallbacks
def connect():
    protocol = TwistedProtocolConnection(pika.ConnectionParameters())
    yield endpoints.connectProtocol(endpoints.TCP4ClientEndpoint(reactor, *BROKER), protocol)
    yield protocol.ready
    channel = yield protocol.channel()
    return protocol, channel


@defer.inlineCallbacks
def rabbitmqctl(*args):
    out, err, code = yield utils.getProcessOutputAndValue("rabbitmqctl", ["-q"] + list(args))
    if code != 0:
        raise RuntimeError(f"rabbitmqctl {args} failed: {err.decode()[:200]}")
    return out.decode()


@defer.inlineCallbacks
def close_from_broker(exchange):
    """
    Have the broker close the sink connections of C{exchange} (named
    C{hermes_tx sink EXCHANGE}), as a broker shutting down does.
    """
    for _ in range(50):
        listing = yield rabbitmqctl("list_connections", "pid", "client_properties")
        pids = [line.split()[0] for line in listing.splitlines()
                if f"hermes_tx sink {exchange}" in line]
        if pids:
            for pid in pids:
                yield rabbitmqctl("close_connection", pid, "test: broker going away")
            return
        yield task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"no sink connection for {exchange}")


class AmqpTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.exchange = f"hermes-test-{uuid.uuid4().hex[:12]}"
        self.queue = self.exchange + "-q"
        self.protocol, self.channel = yield connect()
        self.addCleanup(self._clean)

    @defer.inlineCallbacks
    def _clean(self):
        if not self.channel.is_open:
            self.protocol, self.channel = yield connect()
        yield self.channel.queue_delete(self.queue)
        yield self.channel.exchange_delete(self.exchange)
        yield self.protocol.close()

    @defer.inlineCallbacks
    def bind(self, exchange_type="topic"):
        yield self.channel.exchange_declare(exchange=self.exchange, exchange_type=exchange_type,
                                            durable=True)
        yield self.channel.queue_declare(queue=self.queue)
        yield self.channel.queue_bind(queue=self.queue, exchange=self.exchange, routing_key="#")

    @defer.inlineCallbacks
    def messages(self):
        """@return: every message in the test's queue: (method, properties, body)."""
        got = []
        while True:
            method, properties, body = yield self.get_one()
            if method is None:
                return got
            got.append((method, properties, body))

    @defer.inlineCallbacks
    def get_one(self):
        try:
            result = yield self.channel.basic_get(self.queue, auto_ack=True)
        except Exception:  # GetEmpty
            return None, None, None
        if result is None:
            return None, None, None
        return result.method, result.properties, result.body

    def sink(self, port=5672, extra="", password="guest", **kwargs):
        sink = from_url(f"amqp://guest:{password}@127.0.0.1:{port}/?exchange={self.exchange}"
                        + extra, **kwargs)
        self.addCleanup(sink.tear_down)
        return sink

    @defer.inlineCallbacks
    def test_persistent_confirmed_messages(self):
        yield self.bind()
        sink = self.sink()
        changes = make_changes(2, 1)
        note = Event("notification", "Chan", "hi", 3)
        self.assertIsNone((yield sink.execute([Event("start")] + changes + [note])))
        got = yield self.messages()
        self.assertEqual([m.routing_key for m, _, _ in got], ["items", "items", "Chan"])
        first_method, first, body = got[0]
        self.assertEqual((first.delivery_mode, first.content_type, first.message_id,
                          first.timestamp, first.headers),
                         (2, "application/json", "1", 1_700_000_001,
                          {"topic": "items", "key": "key-0"}))
        self.assertEqual(json.loads(body)["data"], changes[0].data)
        self.assertEqual(json.loads(got[2][2]), {"kind": "notification", "channel": "Chan",
                                                 "payload": "hi", "pid": 3})
        self.assertIsNone(got[2][1].message_id)
        self.assertEqual((sink.metrics.requests, sink.metrics.sent), (1, 3))

    @defer.inlineCallbacks
    def test_read_sent_like_an_insert(self):
        """
        A backfilled row (op READ) is a message like any change, its data
        whole: the consumer upserts C{new}.
        """
        yield self.bind()
        sink = self.sink()
        read = read_change(5, "key-9", {"k": "key-9", "n": 0})
        self.assertIsNone((yield sink.execute(make_changes(1, 1) + [read])))
        got = yield self.messages()
        self.assertEqual([(p.message_id, json.loads(b)["data"]["op"]) for _, p, b in got],
                         [("1", "INSERT"), ("5", "READ")])
        self.assertEqual(json.loads(got[1][2])["data"], read.data)

    @defer.inlineCallbacks
    def test_exchange_declared_when_missing(self):
        sink = self.sink(extra="&exchange_type=fanout")
        yield sink.execute(make_changes(1, 1))
        yield self.channel.exchange_declare(exchange=self.exchange, exchange_type="fanout",
                                            durable=True, passive=True)

    @defer.inlineCallbacks
    def test_exchange_of_another_type_is_one_clear_retry(self):
        yield self.bind("direct")
        sink = self.sink()
        e = yield self.assertFailure(sink.execute(make_changes(1, 1)), Retry)
        self.assertIn("PRECONDITION_FAILED", str(e))
        self.assertNotIn("\n", str(e))

    @defer.inlineCallbacks
    def test_mandatory_unroutable_retries(self):
        yield self.channel.exchange_declare(exchange=self.exchange, exchange_type="topic",
                                            durable=True)
        sink = self.sink(extra="&mandatory=true")
        changes = make_changes(2, 1)
        outcome = yield sink.execute(changes)
        self.assertEqual([(c, why) for c, why, _ in outcome.retry],
                         [(c, "unroutable: no queue is bound to receive it") for c in changes])
        yield self.bind()
        self.assertIsNone((yield sink.execute(changes)))

    def capture_pika_log(self):
        """@return: a list receiving pika's own (stdlib) log records, DEBUG up."""
        records = []
        handler = logging.Handler(logging.DEBUG)
        handler.emit = lambda record: records.append(handler.format(record))
        logger = logging.getLogger("pika")
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        self.addCleanup(logger.setLevel, level)
        self.addCleanup(logger.removeHandler, handler)
        return records

    @defer.inlineCallbacks
    def test_wrong_password_retries_and_is_never_shown(self):
        log = capture_log(self)
        pika_log = self.capture_pika_log()
        password = "not-the-pw-" + uuid.uuid4().hex[:8]
        sink = self.sink(password=password, timeout=5)
        for _ in range(2):  # every batch, not only the first
            e = yield self.assertFailure(sink.execute(make_changes(2, 1)), Retry)
            self.assertEqual(str(e), f"authentication refused by {sink.target}: 403 "
                                     "ACCESS_REFUSED - Login was refused using authentication "
                                     "mechanism PLAIN. For details see the broker logfile.")
        self.assertEqual((sink.metrics.retried, sink.metrics.sent), (4, 0))
        self.assertTrue(pika_log)
        for text in [str(e), repr(sink), sink.target] + [event_text(x) for x in log] + pika_log:
            self.assertNotIn(password, text)

    @defer.inlineCallbacks
    def test_wrong_password_found_without_an_event(self):
        """
        Wrong credentials are found when the run starts, with no event: the
        circuit opens at once with the broker's reason in one line (not
        pika's C{AMQPConnectionError: 1}), no password in it.
        """
        password = "not-the-pw-" + uuid.uuid4().hex[:8]
        sink = self.sink(password=password, timeout=5, clock=task.Clock())
        sink.set_up()
        yield wait_until(lambda: sink.breaker.state == OPEN, timeout=10, what="the circuit to open")
        self.assertEqual(sink.breaker.reason, f"authentication refused by {sink.target}: 403 "
                                              "ACCESS_REFUSED - Login was refused using authentication "
                                              "mechanism PLAIN. For details see the broker logfile.")
        self.assertEqual(sink.metrics.requests, 0)

    @defer.inlineCallbacks
    def test_refusals_are_one_clear_line(self):
        """
        A user the broker does not know, a virtual host that does not
        exist, a port nothing listens on: one Retry for the batch, one line
        naming the cause (pika itself says only C{AMQPConnectionError: 1}).
        """
        from tests.support.httpserver import free_port

        port = free_port()
        cases = [(f"amqp://nobody:pw-123456@127.0.0.1/?exchange={self.exchange}",
                  "authentication refused by {}: 403 ACCESS_REFUSED - Login was refused"),
                 (f"amqp://guest:guest@127.0.0.1/no-such-vhost?exchange={self.exchange}",
                  "access refused by {}: 530 NOT_ALLOWED - vhost no-such-vhost not found"),
                 (f"amqp://guest:guest@127.0.0.1:{port}/?exchange={self.exchange}",
                  "cannot connect to {}: ConnectionRefusedError: Connection was refused")]
        for url, line in cases:
            sink = from_url(url, timeout=5)
            self.addCleanup(sink.tear_down)
            e = yield self.assertFailure(sink.execute(make_changes(1, 1)), Retry)
            target = sink.target.replace("guest", "***")  # the password is "guest" too
            self.assertTrue(str(e).startswith(line.format(target)), str(e))
            self.assertNotIn("\n", str(e))

    @defer.inlineCallbacks
    def test_exchange_deleted_under_the_sink(self):
        """
        The broker closes the channel (404 NOT_FOUND for a publish to a
        deleted exchange): the batch is retried as a whole with the
        broker's reason; the next one declares the exchange again.
        """
        yield self.bind()
        sink = self.sink()
        self.assertIsNone((yield sink.execute(make_changes(1, 1))))
        yield self.channel.exchange_delete(self.exchange)
        e = yield self.assertFailure(sink.execute(make_changes(2, 1, start_id=2)), Retry)
        self.assertEqual(str(e), f"the broker closed the channel: 404 NOT_FOUND - no exchange "
                                 f"'{self.exchange}' in vhost '/'")
        self.assertIsNone((yield sink.execute(make_changes(2, 1, start_id=2))))
        self.assertEqual(sink.connection.connections, 2)

    def test_pika_records_go_to_twisted_scrubbed(self):
        """
        pika's own records (stdlib logging) reach Twisted's log scrubbed,
        one line, and no longer the standard library's handlers.
        """
        log = capture_log(self)
        password = "pika-pw-" + uuid.uuid4().hex[:8]
        self.sink(password=password)
        root = []
        handler = logging.Handler(logging.DEBUG)
        handler.emit = root.append
        logging.getLogger().addHandler(handler)
        self.addCleanup(logging.getLogger().removeHandler, handler)
        logging.getLogger("pika.connection").error("refused %s\nsecond line", password)
        logging.getLogger("pika.connection").info("chatter %s", password)
        texts = [event_text(x) for x in log if x.get("log_namespace") == "pika"]
        self.assertEqual(texts, ["pika.connection: refused *** second line"])
        self.assertEqual(root, [])

    @defer.inlineCallbacks
    def test_password_from_secret_file(self):
        yield self.bind()
        secret_file = self.mktemp()
        with open(secret_file, "w") as f:
            f.write("guest\n")
        sink = from_url(f"amqp://guest@127.0.0.1/%2F?exchange={self.exchange}",
                        secret_file=secret_file)
        self.addCleanup(sink.tear_down)
        self.assertIsNone((yield sink.execute(make_changes(1, 1))))
        self.assertEqual(len((yield self.messages())), 1)

    @defer.inlineCallbacks
    def test_broker_closing_the_connection_then_reconnect(self):
        yield self.bind()
        sink = self.sink()
        yield sink.execute(make_changes(1, 1))
        link = yield sink.connection.get()
        yield close_from_broker(self.exchange)
        yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertFalse(link.alive())
        self.assertIsNone((yield sink.execute(make_changes(1, 1, start_id=2))))
        self.assertEqual(sink.connection.connections, 2)
        self.assertEqual([p.message_id for _, p, _ in (yield self.messages())], ["1", "2"])

    @defer.inlineCallbacks
    def test_no_confirm_within_timeout_drops_the_connection(self):
        """
        A half-open path (the proxy stops forwarding): the batch is retried
        after C{timeout}, the connection dropped, and the next batch makes a
        new one.
        """
        yield self.bind()
        proxy, port = listen_proxy(self, *BROKER)
        sink = self.sink(port, timeout=0.5)
        yield sink.execute(make_changes(1, 1))
        proxy.blackhole()
        e = yield self.assertFailure(sink.execute(make_changes(1, 1, start_id=2)), Retry)
        self.assertEqual(str(e), "no confirm within 0.5 s")
        proxy.heal()
        self.assertIsNone((yield sink.execute(make_changes(1, 1, start_id=3))))
        self.assertEqual(sink.connection.connections, 2)
        ids = [p.message_id for _, p, _ in (yield self.messages())]
        self.assertEqual(ids[0], "1")
        self.assertEqual(ids[-1], "3")

    def test_url_errors(self):
        for bad in ("amqp://h/", "amqp://h/?exchange=x&exchange_type=weird"):
            self.assertRaises(SinkURLError, AmqpSink, bad)

    @defer.inlineCallbacks
    def test_nan_rejected_alone(self):
        yield self.bind()
        sink = self.sink()
        bad = Change(9, "t", "k", 0, 1.0, "NaN", float("nan"))
        outcome = yield sink.execute([bad] + make_changes(1, 1))
        self.assertEqual([c for c, _ in outcome.rejected], [bad])
        self.assertEqual(len((yield self.messages())), 1)

    @defer.inlineCallbacks
    def test_cuts_and_a_broker_close_lose_nothing_and_keep_order(self):
        """
        30% of batches have their connection cut at a random moment (often
        between publish and confirm), and the broker closes the connection
        once midway: every change reaches the queue, per key in id order, a
        duplicate only right after its first copy.
        """
        yield self.bind()
        proxy, port = listen_proxy(self, *BROKER)
        rng = random.Random(7)
        sink = self.sink(port, max_batch=10, timeout=3)
        closed = []

        def fault(n):
            if n == 20:  # no cuts just before: there is a connection to close
                closed.append(n)
                return close_from_broker(self.exchange)
            if rng.random() < 0.3 and not 17 <= n <= 20:
                reactor.callLater(rng.random() * 0.004, proxy.cut)

        changes = make_changes(30, 8)
        driver = Driver(sink, changes, fault=fault)
        yield driver.run(timeout=90)
        self.assertEqual(closed, [20])
        self.assertEqual((driver.rejected, driver.errors), ([], []))
        self.assertGreater(driver.retries, 10)
        got = yield self.messages()
        assert_delivered_in_order(self, changes, [(p.headers["key"], p.message_id)
                                                  for _, p, _ in got])

