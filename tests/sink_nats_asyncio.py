"""
The NATS sink in-process against real nats-server processes of the tests'
own (tests.support.natsserver), under Twisted's asyncio reactor, and
hermes's PostgreSQL connection on that reactor (L{PostgresTests}).

This module needs that reactor, so C{trial tests} (the default reactor)
does not collect it (no C{test_} prefix): L{tests.test_sink_nats} runs it
as C{trial --reactor=asyncio tests.sink_nats_asyncio} and reports each of
its tests as one of its own.  Run it alone the same way.
"""

import random
import uuid

from nats.js.api import DiscardPolicy
from twisted.internet import defer, reactor
from twisted.trial import unittest

from hermes_tx.events import Change, Event
from hermes_tx.outcomes import Retry
from hermes_tx.sinks import from_url
from hermes_tx.sinks.aio import deferred
from hermes_tx.sinks.records import encode, record
from tests.support.faults import event_text
from tests.support.fixtures import ClassFixtures
from tests.support.natsserver import (
    NatsServer, admin, make_certificates, read_stream, start_nats)
from tests.support.proxy import listen_proxy
from tests.support.shared import capture_log, sleep, wait_until
from tests.support.sinkdriver import Driver, assert_delivered_in_order, make_changes, read_change

PASSWORD = "nats-pw-3c4d5e6f"
TOKEN = "nats-token-7a8b9c0d"
#: users of the authorization block of L{AuthTests}' server
AUTH = """
authorization {
  users = [
    {user: admin, password: %(pw)s}
    {user: writer, password: %(pw)s,
     permissions: {publish: ["ok.>", "$JS.API.STREAM.INFO.>"], subscribe: ["_INBOX.>"]}}
    {user: deaf, password: %(pw)s, permissions: {publish: ["ok.>"], subscribe: ["nothing"]}}
    {user: mute, password: %(pw)s, permissions: {publish: ["other.>"], subscribe: ["_INBOX.>"]}}
  ]
}
""" % {"pw": PASSWORD}


def stream_name():
    return f"T{uuid.uuid4().hex[:12]}"


class _Sinks:
    """
    C{self.server}: a L{NatsServer}; sinks torn down after the test;
    C{self.name}, a stream name of the test's own, and C{self.prefix}, a
    first subject token of its own (streams of one server may not share
    subjects).
    """

    def setUp(self):
        self.name = stream_name()
        self.prefix = self.name.lower()
        return super().setUp()

    def sink(self, url=None, subject=None, extra="", server=None, **kwargs):
        server = server or self.server
        subject = subject or f"{self.prefix}.{{topic}}"
        url = url or f"nats://127.0.0.1:{server.port}/{subject}{extra}"
        sink = from_url(url, **kwargs)
        self.addCleanup(sink.tear_down)
        return sink

    def read(self, stream, server=None, **options):
        return deferred(read_stream((server or self.server).url, stream, **options))

    def js(self, action, server=None, **options):
        return deferred(admin((server or self.server).url, action, **options))


class NatsTests(_Sinks, ClassFixtures, unittest.TestCase):
    """On one server for the class (each test has streams of its own)."""

    @classmethod
    def setUpClass(cls):
        cls.server = NatsServer().start()

    @classmethod
    def tearDownClass(cls):
        cls.server.destroy()

    @defer.inlineCallbacks
    def test_one_message_per_event(self):
        """
        A change becomes a message to SUBJECT with {topic} replaced, its
        JSON record as body, C{Nats-Msg-Id: topic:id}; a notification goes
        to its channel's subject without an id; start and resync events
        are done without a message.
        """
        name = self.name
        sink = self.sink(extra=f"?stream={name}")
        changes = make_changes(2, 2)
        note = Event("notification", "Chan", "hello", 42)
        self.assertIsNone((yield sink.execute([Event("start")] + changes + [note])))
        got = yield self.read(name)
        self.assertEqual([m.subject for m in got],
                         [f"{self.prefix}.items"] * 4 + [f"{self.prefix}.Chan"])
        self.assertEqual([m.msg_id for m in got], ["items:1", "items:2", "items:3", "items:4", None])
        self.assertEqual({m.headers.get("Nats-Expected-Stream") for m in got}, {name})
        self.assertEqual(got[0].record, {
            "kind": "change", "id": 1, "topic": "items", "key": "key-0", "attempts": 0,
            "created_at": "2023-11-14T22:13:21.000000Z", "data": changes[0].data})
        self.assertEqual(got[4].record, {"kind": "notification", "channel": "Chan",
                                         "payload": "hello", "pid": 42})
        self.assertEqual((sink.metrics.requests, sink.metrics.sent), (1, 5))
        self.assertEqual(sink.connection.connections, 1)

    @defer.inlineCallbacks
    def test_read_sent_like_an_insert(self):
        """
        A backfilled row (op READ) is a message like any change, with its
        id: the consumer upserts C{new}.
        """
        name = self.name
        sink = self.sink(extra=f"?stream={name}")
        read = read_change(5, "key-9", {"k": "key-9", "n": 0})
        self.assertIsNone((yield sink.execute(make_changes(1, 1) + [read])))
        got = yield self.read(name)
        self.assertEqual([(m.msg_id, m.record["data"]["op"]) for m in got], [("items:1", "INSERT"),
                                                                               ("items:5", "READ")])
        self.assertEqual(got[1].record["data"], read.data)

    @defer.inlineCallbacks
    def test_stream_made_when_missing_and_left_as_is_when_there(self):
        name = self.name
        sink = self.sink(subject=f"{self.prefix}.made.{{topic}}",
                         extra=f"?stream={name}&duplicate_window=300")
        yield sink.execute(make_changes(1, 1))
        info = yield self.js(lambda js: js.stream_info(name))
        self.assertEqual((info.config.subjects, info.config.duplicate_window,
                          str(info.config.storage)), ([f"{self.prefix}.made.>"], 300.0, "file"))
        other, kept = stream_name(), f"{self.prefix}.kept.x"
        yield self.js(lambda js: js.add_stream(name=other, subjects=[kept], max_msgs=50))
        sink = self.sink(subject=kept, extra=f"?stream={other}")
        yield sink.execute(make_changes(1, 1))
        info = yield self.js(lambda js: js.stream_info(other))
        self.assertEqual((info.config.subjects, info.config.max_msgs, info.state.messages),
                         ([kept], 50, 1))

    @defer.inlineCallbacks
    def test_a_duplicate_is_done_and_stored_once(self):
        """
        A batch published again (its outbox acknowledgement was lost):
        JetStream answers "duplicate" for each, the sink counts them done,
        the stream holds each change once.
        """
        name = self.name
        sink = self.sink(extra=f"?stream={name}")
        changes = make_changes(5, 2)
        self.assertIsNone((yield sink.execute(changes)))
        self.assertIsNone((yield sink.execute(changes[3:])))
        self.assertEqual(sink.duplicates, 7)
        self.assertEqual(sink.metrics.sent, 17)
        got = yield self.read(name)
        self.assertEqual([m.msg_id for m in got], [f"items:{c.id}" for c in changes])

    @defer.inlineCallbacks
    def test_past_the_duplicate_window_a_change_is_stored_again(self):
        """
        The duplicate window is the stream's: a change published again
        after it (1 s here) is a new message.
        """
        sink = self.sink(extra=f"?stream={self.name}&duplicate_window=1")
        changes = make_changes(1, 1)
        yield sink.execute(changes)
        yield sink.execute(changes)
        self.assertEqual(sink.duplicates, 1)
        yield sleep(2.5)
        yield sink.execute(changes)
        self.assertEqual(sink.duplicates, 1)
        self.assertEqual([m.msg_id for m in (yield self.read(self.name))], ["items:1"] * 2)

    @defer.inlineCallbacks
    def test_no_stream_is_one_line_for_the_whole_batch(self):
        sink = self.sink(subject=f"nowhere-{uuid.uuid4().hex}.{{topic}}")
        for _ in range(2):
            e = yield self.assertFailure(sink.execute(make_changes(3, 1)), Retry)
            self.assertTrue(str(e).startswith(
                "no JetStream stream captures subject 'nowhere-"), str(e))
            self.assertTrue(str(e).endswith(
                f".items' at {sink.target} (make one, or name it with ?stream=NAME for the sink "
                "to make it)"), str(e))
        self.assertEqual((sink.metrics.retried, sink.metrics.sent, sink.metrics.failures),
                         (6, 0, 2))

    @defer.inlineCallbacks
    def test_stream_deleted_under_the_sink_is_made_again(self):
        name = self.name
        sink = self.sink(extra=f"?stream={name}")
        self.assertIsNone((yield sink.execute(make_changes(2, 1))))
        yield self.js(lambda js: js.delete_stream(name))
        e = yield self.assertFailure(sink.execute(make_changes(2, 1, start_id=3)), Retry)
        self.assertIn(f"(the next batch makes stream {name} again)", str(e))
        self.assertIsNone((yield sink.execute(make_changes(2, 1, start_id=3))))
        self.assertEqual(sink.connection.connections, 2)
        self.assertEqual([m.msg_id for m in (yield self.read(name))], ["items:3", "items:4"])

    @defer.inlineCallbacks
    def test_full_stream(self):
        """
        A stream that refuses new messages past C{max_msgs}: the events it
        stored are done, the others retried with its reason; a batch of
        which it stores none fails as a whole, one line.
        """
        name = self.name
        yield self.js(lambda js: js.add_stream(name=name, subjects=[f"{self.prefix}.>"],
                                               max_msgs=2, discard=DiscardPolicy.NEW))
        sink = self.sink(extra=f"?stream={name}")
        changes = make_changes(4, 1)
        outcome = yield sink.execute(changes)
        self.assertEqual([(c, why) for c, why, _ in outcome.retry],
                         [(c, "JetStream refused it: maximum messages exceeded (JetStream error "
                              "10077)") for c in changes[2:]])
        e = yield self.assertFailure(sink.execute(changes[2:]), Retry)
        self.assertEqual(str(e), f"JetStream at {sink.target} refused the publish: maximum "
                                 "messages exceeded (JetStream error 10077)")

    @defer.inlineCallbacks
    def test_subject_of_another_stream(self):
        """
        With C{?stream=NAME}, a subject another stream captures is refused
        (C{Nats-Expected-Stream}): one line for the batch.
        """
        theirs, ours = stream_name(), self.name
        yield self.js(lambda js: js.add_stream(name=theirs, subjects=[f"{self.prefix}.theirs.>"]))
        yield self.js(lambda js: js.add_stream(name=ours, subjects=[f"{self.prefix}.ours.>"]))
        sink = self.sink(subject=f"{self.prefix}.theirs.{{topic}}", extra=f"?stream={ours}")
        e = yield self.assertFailure(sink.execute(make_changes(2, 1)), Retry)
        self.assertEqual(str(e), f"JetStream at {sink.target} refused the publish: expected "
                                 "stream does not match (JetStream error 10060)")
        self.assertEqual((yield self.read(theirs)), [])

    @defer.inlineCallbacks
    def test_unsendable_rejected_alone(self):
        name = self.name
        sink = self.sink(extra=f"?stream={name}")
        nan = Change(9, "items", "k", 0, 1.0, "NaN", float("nan"))
        spaced = Change(10, "two words", "k", 0, 1.0, "{}", {})
        outcome = yield sink.execute([nan, spaced] + make_changes(1, 1))
        self.assertEqual([(c, why.split(":")[0]) for c, why in outcome.rejected],
                         [(nan, "not strict JSON"),
                          (spaced, "topic 'two words' cannot be part of a NATS subject")])
        self.assertEqual([m.msg_id for m in (yield self.read(name))], ["items:1"])

    @defer.inlineCallbacks
    def test_tear_down_closes_the_connection(self):
        sink = self.sink(extra=f"?stream={self.name}")
        yield sink.execute(make_changes(1, 1))
        link = yield sink.connection.get()
        self.assertTrue(link.alive())
        yield sink.tear_down()
        self.assertFalse(link.alive())
        self.assertTrue(link.nc.is_closed)
        e = yield self.assertFailure(sink.execute(make_changes(1, 1)), Retry)
        self.assertEqual(str(e), f"the connection to {sink.target} was closed")


class AuthTests(_Sinks, ClassFixtures, unittest.TestCase):
    """On a server with users, passwords and permissions."""

    @classmethod
    def setUpClass(cls):
        cls.server = NatsServer(AUTH).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.destroy()

    def url(self, auth, subject="ok.{prefix}.{{topic}}", extra=""):
        subject = subject.format(prefix=self.prefix)
        return f"nats://{auth}127.0.0.1:{self.server.port}/{subject}{extra}"

    @defer.inlineCallbacks
    def make_stream(self, subjects=("ok.{prefix}.>",)):
        name = self.name
        subjects = [s.format(prefix=self.prefix) for s in subjects]
        yield self.js(lambda js: js.add_stream(name=name, subjects=subjects),
                      user="admin", password=PASSWORD)
        return name

    @defer.inlineCallbacks
    def test_password_from_url_or_file_and_never_shown(self):
        log = capture_log(self)
        name = yield self.make_stream()
        secret_file = self.mktemp()
        with open(secret_file, "w") as f:
            f.write(PASSWORD + "\n")
        by_url = self.sink(self.url(f"writer:{PASSWORD}@"))
        by_file = self.sink(self.url("writer@"), secret_file=secret_file)
        wrong = self.sink(self.url(f"writer:{PASSWORD[::-1]}@"))
        self.assertIsNone((yield by_url.execute(make_changes(1, 1))))
        self.assertIsNone((yield by_file.execute(make_changes(1, 1, start_id=2))))
        for _ in range(2):  # every batch, not only the first
            e = yield self.assertFailure(wrong.execute(make_changes(1, 1)), Retry)
            self.assertEqual(str(e), f"authentication refused by {wrong.target}: Authorization "
                                     "Violation")
        got = yield self.read(name, user="admin", password=PASSWORD)
        self.assertEqual([m.msg_id for m in got], ["items:1", "items:2"])
        texts = [str(e), repr(by_url), repr(wrong), by_url.target, by_file.target]
        texts += [event_text(x) for x in log]
        for text in texts:
            self.assertNotIn(PASSWORD, text)
            self.assertNotIn(PASSWORD[::-1], text)

    @defer.inlineCallbacks
    def test_token_in_the_url_is_a_secret(self):
        server = start_nats(self, config="authorization { token: %s }" % TOKEN)
        name = stream_name()
        yield self.js(lambda js: js.add_stream(name=name, subjects=["tok.>"]), server=server,
                      token=TOKEN)
        sink = self.sink(f"nats://{TOKEN}@127.0.0.1:{server.port}/tok.{{topic}}")
        self.assertEqual(sink.target, f"nats://***@127.0.0.1:{server.port}/tok.{{topic}}")
        self.assertIsNone((yield sink.execute(make_changes(1, 1))))
        wrong = self.sink(f"nats://not-{TOKEN}@127.0.0.1:{server.port}/tok.{{topic}}")
        e = yield self.assertFailure(wrong.execute(make_changes(1, 1)), Retry)
        self.assertNotIn(TOKEN, str(e) + wrong.target)
        self.assertIn("authentication refused", str(e))

    @defer.inlineCallbacks
    def test_permissions_refused_fail_the_batch_at_once(self):
        """
        A user that may not publish to the subject, one that may not
        subscribe to the inbox the acknowledgements come back on, one that
        may not look up the stream: one Retry with the server's words, at
        once (not at the batch's deadline).
        """
        name = yield self.make_stream(("ok.{prefix}.>", "other.{prefix}.>"))
        cases = [(self.url(f"mute:{PASSWORD}@"),
                  'permission refused by {}: permissions violation for publish to '
                  f'"ok.{self.prefix}.items"'),
                 (self.url(f"deaf:{PASSWORD}@"),
                  'permission refused by {}: permissions violation for subscription to "_inbox.'),
                 (self.url(f"mute:{PASSWORD}@", "other.{prefix}.{{topic}}", f"?stream={name}"),
                  'permission refused by {}: permissions violation for publish to '
                  f'"$js.api.stream.info.{name.lower()}"')]
        for url, line in cases:
            sink = self.sink(url, timeout=20)
            started = reactor.seconds()
            e = yield self.assertFailure(sink.execute(make_changes(2, 1)), Retry)
            self.assertTrue(str(e).startswith(line.format(sink.target)), str(e))
            self.assertLess(reactor.seconds() - started, 5)
            self.assertNotIn(PASSWORD, str(e))


class TlsTests(_Sinks, ClassFixtures, unittest.TestCase):
    """
    On a server that requires TLS with a certificate from a CA of the
    tests' own, and client certificates from it.
    """

    @classmethod
    def setUpClass(cls):
        import tempfile

        cls.certdir = tempfile.mkdtemp(prefix="hermes-nats-tls-")
        cls.files = files = make_certificates(cls.certdir)
        cls.server = NatsServer(
            'tls { cert_file: "%s", key_file: "%s", ca_file: "%s", verify: true }'
            % (files["server_cert"], files["server_key"], files["ca"])).start()

    @classmethod
    def tearDownClass(cls):
        import shutil

        cls.server.destroy()
        shutil.rmtree(cls.certdir, ignore_errors=True)

    def tls_url(self, params):
        return f"tls://127.0.0.1:{self.server.port}/{self.prefix}.{{topic}}?stream={self.name}" + params

    @defer.inlineCallbacks
    def test_with_our_ca_and_a_client_certificate(self):
        f = self.files
        sink = self.sink(self.tls_url(f"&ca_file={f['ca']}&cert_file={f['client_cert']}"
                                      f"&key_file={f['client_key']}"))
        self.assertIsNone((yield sink.execute(make_changes(2, 1))))
        self.assertIn(f"ca_file={f['ca'].replace('/', '%2F')}", sink.target)

    @defer.inlineCallbacks
    def test_refusals_are_one_line(self):
        """
        The server's certificate is not one the system trusts; a client
        without a certificate is refused by the server (it drops the
        connection); C{nats://} to a server that requires TLS is TLS too,
        checked the same way.
        """
        f = self.files
        cases = [(self.tls_url(""), "cannot connect to {}: SSLCertVerificationError: "),
                 (self.tls_url(f"&ca_file={f['ca']}"), "cannot connect to {}: "),
                 (f"nats://127.0.0.1:{self.server.port}/{self.prefix}.x",
                  "cannot connect to {}: SSLCertVerificationError: ")]
        for url, line in cases:
            sink = self.sink(url, timeout=5)
            e = yield self.assertFailure(sink.execute(make_changes(1, 1)), Retry)
            self.assertTrue(str(e).startswith(line.format(sink.target)), str(e))
            self.assertNotIn("\n", str(e))


class FaultTests(_Sinks, unittest.TestCase):
    """Each test on a server of its own, which it stops, kills or freezes."""

    def setUp(self):
        self.server = start_nats(self)
        return super().setUp()

    @defer.inlineCallbacks
    def test_down_then_up_reconnects(self):
        self.server.kill()
        sink = self.sink(extra=f"?stream={stream_name()}", timeout=2)
        e = yield self.assertFailure(sink.execute(make_changes(1, 1)), Retry)
        self.assertEqual(str(e), f"cannot connect to {sink.target}: ConnectionRefusedError: "
                                 f"[Errno 111] Connect call failed ('127.0.0.1', {self.server.port})")
        self.server.start()
        self.assertIsNone((yield sink.execute(make_changes(1, 1))))
        self.server.kill()
        yield sleep(0.1)
        yield self.assertFailure(sink.execute(make_changes(1, 1, start_id=2)), Retry)
        self.server.start()
        self.assertIsNone((yield sink.execute(make_changes(1, 1, start_id=2))))
        self.assertEqual(sink.connection.connections, 2)

    @defer.inlineCallbacks
    def test_frozen_server_times_out_and_the_connection_is_dropped(self):
        sink = self.sink(extra=f"?stream={stream_name()}", timeout=0.3)
        yield sink.execute(make_changes(1, 1))
        self.server.freeze()
        try:
            e = yield self.assertFailure(sink.execute(make_changes(1, 1, start_id=2)), Retry)
        finally:
            self.server.thaw()
        self.assertEqual(str(e), "no acknowledgement within 0.3 s")
        self.assertIsNone((yield sink.execute(make_changes(1, 1, start_id=2))))
        self.assertEqual(sink.connection.connections, 2)
        self.assertEqual(sink.metrics.failures, 1)

    @defer.inlineCallbacks
    def test_larger_than_max_payload(self):
        """
        Before its first connection the sink does not know the server's
        C{max_payload}: a message over it is retried, then rejected.
        """
        self.server.stop()
        server = start_nats(self, config="max_payload: 2048")
        name = stream_name()
        sink = self.sink(extra=f"?stream={name}", server=server)
        big = Change(1, "items", "k", 0, 1.0, "{}", {"x": "y" * 3000})
        why = f"{len(encode(record(big)))} bytes, more than the server's max_payload (2048)"
        outcome = yield sink.execute([big] + make_changes(1, 1, start_id=2))
        self.assertEqual([(c, reason) for c, reason, _ in outcome.retry], [(big, why)])
        outcome = yield sink.execute([big])
        self.assertEqual((outcome.retry, outcome.rejected), ([], [(big, why)]))
        self.assertEqual([m.msg_id for m in (yield self.read(name, server=server))], ["items:2"])

    @defer.inlineCallbacks
    def test_cuts_and_restarts_lose_nothing_duplicate_nothing_keep_order(self):
        """
        30% of batches have their connection cut at a random moment (often
        between publish and acknowledgement), the server restarts midway
        (SIGTERM) and is SIGKILLed and started again later: every change is
        in the stream once (the duplicate window took the retries of
        stored ones), per key in id order.
        """
        proxy, port = listen_proxy(self, "127.0.0.1", self.server.port)
        rng = random.Random(5)

        def fault(n):
            if n == 15:
                self.server.restart()
            elif n == 30:
                self.server.kill()
                reactor.callLater(0.05, self.server.start)
            elif rng.random() < 0.3:
                reactor.callLater(rng.random() * 0.004, proxy.cut)

        name = stream_name()
        sink = self.sink(f"nats://127.0.0.1:{port}/items.{{topic}}?stream={name}", max_batch=10,
                         timeout=2)
        changes = make_changes(30, 8)
        driver = Driver(sink, changes, fault=fault)
        yield driver.run(timeout=90)
        self.assertEqual((driver.rejected, driver.errors), ([], []))
        self.assertGreater(driver.retries, 10)
        got = yield self.read(name)
        ids = [m.msg_id for m in got]
        self.assertEqual(sorted(ids), sorted(f"items:{c.id}" for c in changes))
        assert_delivered_in_order(self, changes, [(m.record["key"], m.record["id"]) for m in got])


class PostgresTests(unittest.TestCase):
    """
    hermes's PostgreSQL connection on the asyncio reactor, which keeps one
    callback per descriptor (the last registered): a query started by a
    notification observer, while the connection reads, must end.
    """

    @defer.inlineCallbacks
    def test_a_query_started_by_a_notification_ends(self):
        from hermes_tx.postgres.connection import HermesConnection
        from tests.support.shared import shared_primary

        dsn = shared_primary().dsn("postgres")
        conn, other = HermesConnection(), HermesConnection()
        yield conn.connect(dsn)
        self.addCleanup(conn.close)
        yield other.connect(dsn)
        self.addCleanup(other.close)
        answers = []
        conn.addNotifyObserver(lambda notify: conn.runQuery("SELECT 41 + 1").addCallback(
            answers.append))
        yield conn.runOperation("LISTEN asyncio_check")
        for n in (1, 2):  # from another session: read by the listening connection
            yield other.runOperation("NOTIFY asyncio_check")
            yield wait_until(lambda: len(answers) == n, timeout=5, what=f"answer {n}")
        self.assertEqual(answers, [[(42,)], [(42,)]])
        self.assertEqual(conn.reactor.getReaders().count(conn), 1)
