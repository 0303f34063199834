"""
Sink URLs: parsing, redaction, secret files and scrubbing.
"""

import os

from twisted.trial import unittest

from hermes_tx.sinks import SinkURLError, from_url, sink_class
from hermes_tx.sinks.urls import Secrets, SinkURL, read_secret, redact_url


class RedactTests(unittest.TestCase):
    def test_password_masked(self):
        self.assertEqual(redact_url("amqp://bob:hunter2@mq:5672/vh?exchange=x", ("exchange",)),
                         "amqp://bob:***@mq:5672/vh?exchange=x")

    def test_user_without_password(self):
        """
        An HTTP URL's user name with no password is a token: masked.  A
        broker's user name (its password may come from a secret file) is
        kept.
        """
        self.assertEqual(redact_url("https://sk_live_123@h/p"), "https://***@h/p")
        self.assertEqual(redact_url("https://sk_live_123:@h/p"), "https://***@h/p")
        self.assertEqual(redact_url("elasticsearch+https://tok@h/i"), "elasticsearch+https://***@h/i")
        self.assertEqual(redact_url("amqp://guest@h/v?exchange=x", ("exchange",)),
                         "amqp://guest@h/v?exchange=x")

    def test_token_user_scrubbed(self):
        from hermes_tx.sinks.urls import Secrets

        secrets = Secrets()
        secrets.add_basic_auth("sk_live_123", None)
        self.assertEqual(secrets.scrub("401 for sk_live_123"), "401 for ***")

    def test_query_values_masked_unless_safe(self):
        self.assertEqual(redact_url("https://h/hook?token=abc&v=1", ("v",)),
                         "https://h/hook?token=***&v=1")

    def test_fragment_dropped(self):
        self.assertEqual(redact_url("https://h/p#secret"), "https://h/p")

    def test_unparsable(self):
        self.assertEqual(redact_url("http://h:notaport/"), "<unparsable URL>")

    def test_password_with_at_and_colon(self):
        url = "redis://:p%40ss:w@rd@h:1/0?stream=s"
        self.assertNotIn("w@rd", redact_url(url, ("stream",)))
        parsed = SinkURL(url, ("stream",))
        self.assertEqual(parsed.host, "h")


class SinkURLTests(unittest.TestCase):
    def test_fields(self):
        u = SinkURL("elasticsearch+https://el%40stic:pa%2Fss@es.local:9243/my-index?x=1")
        self.assertEqual((u.scheme, u.host, u.port, u.username, u.password, u.path),
                         ("elasticsearch+https", "es.local", 9243, "el@stic", "pa/ss", "my-index"))
        self.assertEqual(u.params, {"x": "1"})
        self.assertNotIn("pa", repr(u).replace("path", ""))

    def test_bad_port_is_one_clear_line(self):
        e = self.assertRaises(SinkURLError, SinkURL, "redis://:secretpw@h:99999999/0")
        self.assertNotIn("secretpw", str(e))
        self.assertNotIn("\n", str(e))

    def test_int_param(self):
        u = SinkURL("redis://h/0?maxlen=10&bad=x")
        self.assertEqual(u.int_param("maxlen"), 10)
        self.assertIsNone(u.int_param("missing"))
        self.assertRaises(SinkURLError, u.int_param, "bad")


class SecretFileTests(unittest.TestCase):
    def write(self, text):
        path = self.mktemp()
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        return path

    def test_trailing_newline_stripped_once(self):
        self.assertEqual(read_secret(self.write("s3cret\n")), "s3cret")
        self.assertEqual(read_secret(self.write("s3cret\r\n")), "s3cret")
        self.assertEqual(read_secret(self.write("s3cret\n\n")), "s3cret\n")
        self.assertEqual(read_secret(self.write(" s3cret ")), " s3cret ")

    def test_missing_or_empty(self):
        e = self.assertRaises(SinkURLError, read_secret, os.path.join(self.mktemp(), "nope"))
        self.assertIn("cannot read", str(e))
        self.assertRaises(SinkURLError, read_secret, self.write("\n"))


class ScrubTests(unittest.TestCase):
    def test_scrub(self):
        s = Secrets("pa ss", None, "")
        s.add_basic_auth("bob", "hunter2")
        text = "a pa ss b pa%20ss c hunter2 d Ym9iOmh1bnRlcjI= e"
        self.assertEqual(s.scrub(text), "a *** b *** c *** d *** e")


    def test_query_values(self):
        """
        A query value of 8 characters or more is scrubbed wherever it
        shows; a shorter one where it follows its name, as an echoed URL
        shows it (raw or quoted).
        """
        s = Secrets()
        s.add_param("token", "ab1")
        s.add_param("sig", "a b/")
        s.add_param("key", "0123456789")
        text = "GET /h?token=ab1&sig=a%20b%2F&sig=a+b%2F ab1 key 0123456789"
        self.assertEqual(s.scrub(text), "GET /h?token=***&sig=***&sig=*** ab1 key ***")


class FromURLTests(unittest.TestCase):
    def test_unknown_scheme(self):
        e = self.assertRaises(SinkURLError, from_url, "ftp://u:topsecret@h/x")
        self.assertIn("unknown scheme 'ftp'", str(e))
        self.assertNotIn("topsecret", str(e))

    def test_schemes(self):
        names = {s: sink_class(f"{s}://h/x").__name__
                 for s in ("http", "https", "elasticsearch+http", "opensearch+https",
                           "redis", "amqp")}
        self.assertEqual(names, {
            "http": "WebhookSink", "https": "WebhookSink",
            "elasticsearch+http": "ElasticsearchSink", "opensearch+https": "ElasticsearchSink",
            "redis": "RedisStreamSink", "amqp": "AmqpSink"})

    def test_options_reach_the_sink(self):
        sink = from_url("https://h/hook", max_batch=7, timeout=3, name="w")
        self.assertEqual((sink.max_batch, sink.timeout, sink.name), (7, 3.0, "w"))
