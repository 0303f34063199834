"""
The webhook sink against a real twisted.web server in-process that
scripts failures.
"""

import email.utils
import hashlib
import hmac
import json
import random
import time

from twisted.internet import defer
from twisted.trial import unittest

from hermes_tx.events import Change, Event
from hermes_tx.outcomes import Reject, Retry
from hermes_tx.sinks import from_url
from hermes_tx.sinks.httpsink import HELD_BACK
from hermes_tx.sinks.webhook import WebhookSink
from tests.support.faults import event_text
from tests.support.httpserver import (
    DROP, DROP_AFTER, OK, SLOW, ScriptedResource, free_port, serve)
from tests.support.sinkdriver import Driver, assert_delivered_in_order, make_changes, read_change
from tests.support.shared import capture_log

SECRET = "hmac-S3CRET-value"
PASSWORD = "pw-9f8e7d6c"
TOKEN = "tok-0123456789abcdef"


def self_signed(name):
    """
    @return: a C{PrivateCertificate} for C{name} (its subjectAltName), signed
        by itself: no client trusts it.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from twisted.internet import ssl

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return ssl.PrivateCertificate.loadPEM(pem + cert.public_bytes(serialization.Encoding.PEM))


class WebhookTests(unittest.TestCase):
    def serve(self, script=None):
        self.resource = ScriptedResource(script)
        self.server = serve(self, self.resource)
        return self.server.url

    def sink(self, url, **kwargs):
        sink = WebhookSink(url, **kwargs)
        self.addCleanup(sink.tear_down)
        return sink

    @defer.inlineCallbacks
    def test_one_post_per_batch(self):
        url = self.serve()
        sink = self.sink(url, secret=SECRET)
        changes = make_changes(3, 1)
        note = Event("notification", "Chan", '{"x": 1}', 99, 5.0)
        note.data = {"x": 1}
        result = yield sink.execute([Event("start")] + changes + [note, Event("resync")])
        self.assertIsNone(result)
        [(headers, body)] = self.resource.requests
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(headers["x-hermes-signature"],
                         "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest())
        self.assertNotIn("idempotency-key", headers)  # a notification has no id
        sent = json.loads(body)
        self.assertEqual([e["kind"] for e in sent], ["change"] * 3 + ["notification"])
        self.assertEqual(sent[0], {"kind": "change", "id": 1, "topic": "items", "key": "key-0",
                                   "attempts": 0, "created_at": "2023-11-14T22:13:21.000000Z",
                                   "data": changes[0].data})
        self.assertEqual(sent[3], {"kind": "notification", "channel": "Chan",
                                   "payload": '{"x": 1}', "pid": 99, "data": {"x": 1}})
        self.assertEqual((sink.metrics.requests, sink.metrics.sent, sink.metrics.failures),
                         (1, 4, 0))

    @defer.inlineCallbacks
    def test_read_sent_like_an_insert(self):
        """
        A backfilled row (op READ) is posted like any change, its data
        whole: the receiver upserts C{new}.
        """
        url = self.serve()
        sink = self.sink(url)
        read = read_change(5, "key-9", {"k": "key-9", "n": 0})
        self.assertIsNone((yield sink.execute(make_changes(1, 1) + [read])))
        [(_, body)] = self.resource.requests
        sent = json.loads(body)
        self.assertEqual([(e["id"], e["data"]["op"]) for e in sent], [(1, "INSERT"), (5, "READ")])
        self.assertEqual(sent[1]["data"], read.data)

    @defer.inlineCallbacks
    def test_idempotency_key_and_persistent_connection(self):
        url = self.serve()
        sink = self.sink(url)
        connections = []
        for batch in (make_changes(2, 1), make_changes(2, 1, start_id=10)):
            yield sink.execute(batch)
            connections.append(self.resource.last_connection)
        self.assertIs(connections[0], connections[1])
        keys = [h["idempotency-key"] for h, _ in self.resource.requests]
        self.assertEqual(keys, [hashlib.sha256(b"1,2").hexdigest(),
                                hashlib.sha256(b"10,11").hexdigest()])

    @defer.inlineCallbacks
    def test_statuses(self):
        """
        Transient statuses, credentials refused, no such endpoint and
        redirects retry the batch as a whole with one line (Unavailable:
        the other side, not the events); nothing is
        rejected (a change refused alone, before the endpoint accepted
        anything, is retried too).
        """
        answers = [(500, {}, b"oops"), (503, {"Retry-After": "7"}, b""),
                   (429, {"Retry-After": email.utils.formatdate(time.time() + 60, usegmt=True)},
                    b""),
                   (401, {}, b"who are you"), (403, {}, b""), (404, {}, b""),
                   (302, {"Location": "/x"}, b""), (400, {}, b"bad event")]
        url = self.serve(lambda n, body: answers[n])
        sink = self.sink(url)
        outcomes = []
        for _ in answers:
            try:
                yield sink.execute(make_changes(1, 1))
            except (Retry, Reject) as e:
                outcomes.append((type(e).__name__, str(e), getattr(e, "retry_after", "-")))
        self.assertEqual(outcomes[:2], [("Unavailable", "HTTP 500: oops", None),
                                        ("Unavailable", "HTTP 503", 7)])
        self.assertEqual(outcomes[2][0], "Unavailable")
        self.assertTrue(55 <= outcomes[2][2] <= 60, outcomes[2])
        self.assertEqual(outcomes[3:], [
            ("Unavailable", f"authentication refused by {url}: HTTP 401: who are you", None),
            ("Unavailable", f"authentication refused by {url}: HTTP 403", None),
            ("Unavailable", f"{url} not found: HTTP 404", None),
            ("Unavailable", f"{url} redirects (HTTP 302 to /x): redirects are not followed, give the "
                      "sink the final URL", None),
            ("Unavailable", "HTTP 400: bad event" + HELD_BACK, None)])
        self.assertEqual((sink.metrics.requests, sink.metrics.failures, sink.metrics.rejected),
                         (8, 8, 0))

    @defer.inlineCallbacks
    def test_400_finds_the_bad_changes_and_dead_letters_only_them(self):
        """
        The issue's case: a webhook answering 400 for a batch of 200 with 3
        bad changes; the split finds them: 3 rejected, 197 accepted, once
        each.
        """
        bad = {17, 101, 102}

        def script(n, body):
            if bad & {e["id"] for e in json.loads(body)}:
                return (400, {}, b'{"error": "invalid change"}')
            return OK

        url = self.serve(script)
        sink = self.sink(url, max_batch=200)
        changes = make_changes(200, 1)
        outcome = yield sink.execute(changes)
        self.assertEqual(sorted(e.id for e, _ in outcome.rejected), sorted(bad))
        self.assertEqual(outcome.retry, [])
        accepted = [e["id"] for e in self.resource.events()]
        self.assertEqual(sorted(accepted), [c.id for c in changes if c.id not in bad])
        self.assertLess(len(self.resource.requests), 40)

    @defer.inlineCallbacks
    def test_an_endpoint_refusing_everything_dead_letters_nothing(self):
        url = self.serve(lambda n, body: (422, {}, b"schema v2 expected"))
        sink = self.sink(url)
        driver = Driver(sink, make_changes(6, 2), max_batch=6)
        # driven for half a second: the changes are still pending then
        yield self.assertFailure(driver.run(timeout=0.5), AssertionError)
        self.assertEqual(driver.rejected, [])
        self.assertGreater(driver.retries, 6)
        self.assertEqual(self.resource.accepted, [])

    @defer.inlineCallbacks
    def test_413_splits_the_batch(self):
        def script(n, body):
            events = json.loads(body)
            if len(events) > 2 or any(e["data"]["new"]["k"] == "key-4" for e in events):
                return (413, {}, b"too large")
            return OK

        url = self.serve(script)
        sink = self.sink(url)
        changes = make_changes(7, 1)
        outcome = yield sink.execute(changes)
        self.assertEqual([e for e, _ in outcome.rejected], [changes[4]])
        self.assertEqual(outcome.retry, [])
        self.assertEqual(sorted(e["id"] for e in self.resource.events()), [1, 2, 3, 4, 6, 7])

    @defer.inlineCallbacks
    def test_nan_rejected_alone(self):
        url = self.serve()
        sink = self.sink(url)
        bad = Change(5, "t", "k5", 0, 1.0, "NaN", float("nan"))
        surrogate = Event("notification", "ch", "\ud800", 1)
        good = make_changes(1, 1)
        outcome = yield sink.execute([bad, surrogate] + good)
        self.assertEqual([e for e, _ in outcome.rejected], [bad, surrogate])
        self.assertEqual([e["id"] for e in self.resource.events()], [1])

    @defer.inlineCallbacks
    def test_deeply_nested_change_rejected_alone(self):
        """
        A change whose jsonb payload nests 5,000 levels (PostgreSQL
        accepts it; decoding it would end in RecursionError) goes to the
        dead letters alone; the rest of its batch is sent.
        """
        url = self.serve()
        sink = self.sink(url)
        deep = Change(7, "t", "k7", 0, 1.0, "[" * 5000 + "]" * 5000)
        good = make_changes(1, 1)
        outcome = yield sink.execute([deep] + good)
        self.assertEqual([e for e, _ in outcome.rejected], [deep])
        self.assertIn("nested deeper than 128 levels", outcome.rejected[0][1])
        self.assertEqual([e["id"] for e in self.resource.events()], [1])

    @defer.inlineCallbacks
    def test_slow_answer_times_out_and_the_connection_is_dropped(self):
        url = self.serve(lambda n, body: SLOW if n == 0 else OK)
        sink = self.sink(url, timeout=0.3)
        started = time.monotonic()
        e = yield self.assertFailure(sink.execute(make_changes(1, 1)), Retry)
        self.assertIn("no complete answer within 0.3 s", str(e))
        self.assertLess(time.monotonic() - started, 2)
        self.assertEqual((yield sink.execute(make_changes(1, 1))), None)
        hung = self.resource.hanging[0]
        self.assertTrue(hung._disconnected or hung.channel is None)

    @defer.inlineCallbacks
    def test_dropped_connection_retries(self):
        url = self.serve(lambda n, body: DROP if n == 0 else OK)
        sink = self.sink(url)
        e = yield self.assertFailure(sink.execute(make_changes(1, 1)), Retry)
        self.assertIn("request failed", str(e))
        yield sink.execute(make_changes(1, 1))
        self.assertEqual(len(self.resource.accepted), 1)

    @defer.inlineCallbacks
    def test_refused_connection_retries(self):
        sink = self.sink(f"http://127.0.0.1:{free_port()}/", timeout=2)
        e = yield self.assertFailure(sink.execute(make_changes(1, 1)), Retry)
        self.assertIn("ConnectionRefused", str(e))

    @defer.inlineCallbacks
    def test_secrets_never_shown(self):
        """
        The URL's password and token, the basic credentials and the HMAC
        secret appear in no error text, repr, metrics label or log line,
        even when the server echoes what it got.
        """
        def echo(n, body):
            headers = self.resource.requests[-1][0]
            return (401 if n == 0 else 500, {}, json.dumps(headers).encode()
                    + self.resource.last_uri)

        log = capture_log(self)
        url = self.serve(echo)
        secret_file = self.mktemp()
        with open(secret_file, "w") as f:
            f.write(SECRET + "\n")
        url = url.replace("http://", f"http://hermes:{PASSWORD}@") + f"hook?token={TOKEN}"
        sink = from_url(url, secret_file=secret_file, max_batch=10)
        self.addCleanup(sink.tear_down)
        texts = [repr(sink), sink.target]
        for _ in range(2):
            try:
                yield sink.execute(make_changes(1, 1))
            except (Retry, Reject) as e:
                texts.append(str(e))
        headers = self.resource.requests[0][0]
        self.assertTrue(headers["authorization"].startswith("Basic "))
        self.assertIn(TOKEN.encode(), self.resource.last_uri)  # it was sent
        texts.append(repr(self.resource.requests[0][0]["authorization"]))
        self.assertIn("HTTP 401", texts[2])
        self.assertIn("HTTP 500", texts[3])
        texts.extend(event_text(e) for e in log)
        joined = "\n".join(texts[:4] + texts[5:])
        for secret in (PASSWORD, TOKEN, SECRET, headers["authorization"].split()[1]):
            self.assertNotIn(secret, joined)

    @defer.inlineCallbacks
    def test_untrusted_certificate_is_one_line(self):
        """
        https:// goes through Twisted's standard client TLS, which checks
        the certificate as a browser does: a self-signed one is refused,
        the batch retried with one line.
        """
        from twisted.internet import reactor
        from twisted.web import server

        port = reactor.listenSSL(0, server.Site(ScriptedResource()),
                                 self_signed("localhost").options(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        sink = self.sink(f"https://localhost:{port.getHost().port}/hook", timeout=5)
        e = yield self.assertFailure(sink.execute(make_changes(1, 1)), Retry)
        self.assertIn("certificate verify failed", str(e))
        self.assertNotIn("\n", str(e))

    @defer.inlineCallbacks
    def test_short_query_values_scrubbed_from_echoed_bodies(self):
        url = self.serve(lambda n, body: (500, {}, b"no luck for " + self.resource.last_uri))
        sink = self.sink(url + "hook?k=abc12&v=1")
        e = yield self.assertFailure(sink.execute(make_changes(1, 1)), Retry)
        self.assertEqual(str(e), "HTTP 500: no luck for /hook?k=***&v=***")
        self.assertEqual(sink.target, url + "hook?k=***&v=***")

    @defer.inlineCallbacks
    def test_thirty_percent_failures_and_a_restart_nothing_lost_in_order(self):
        """
        30% of requests fail (500, 503 and 429 with Retry-After, connections
        dropped before or after the body was accepted, answers never sent),
        and the server restarts midway (every connection reset, refused for
        0.1 s): every change arrives, per key in id order, a duplicate only
        right after its first copy.
        """
        rng = random.Random(11)

        def script(n, body):
            r = rng.random()
            if r < 0.08:
                return (500, {}, b"")
            if r < 0.14:
                return (503, {"Retry-After": "0"}, b"")
            if r < 0.19:
                return (429, {"Retry-After": "1"}, b"")
            if r < 0.24:
                return DROP
            if r < 0.28:
                return DROP_AFTER
            if r < 0.30:
                return SLOW
            return OK

        url = self.serve(script)
        sink = self.sink(url, timeout=0.3, max_batch=8)
        changes = make_changes(20, 10)
        restarting = []

        def fault(n):
            if n == 20:  # batches go on meanwhile: refused for 0.1 s
                restarting.append(self.server.restart())

        driver = Driver(sink, changes, fault=fault)
        yield driver.run(timeout=60)
        yield restarting[0]
        self.assertEqual(self.server.restarts, 1)
        received = [(e["key"], e["id"]) for e in self.resource.events()]
        assert_delivered_in_order(self, changes, received)
        self.assertEqual(driver.rejected, [])
        self.assertEqual(driver.errors, [])
        self.assertGreater(driver.retries, 10)
        self.assertGreater(len(received), len(changes))  # DROP_AFTER redelivers
