"""
The HTTP sinks reach host names that IDNA 2008 refuses (a Docker Compose
service name such as C{hook_service}) and internationalized ones, through
real servers; the names are known to the sink's reactor
(L{tests.support.httpserver.NamedReactor}, as Docker's DNS knows them).
"""

from twisted.internet import defer
from twisted.trial import unittest

from hermes_tx.outcomes import Retry
from hermes_tx.sinks import SinkURLError, from_url
from hermes_tx.sinks.httpconnect import ascii_host, idna_refuses, request_uri
from tests.support.fake_es import FakeBulk
from tests.support.faults import event_text
from tests.support.httpserver import NamedReactor, ScriptedResource, serve
from tests.support.shared import capture_log
from tests.support.sinkdriver import make_changes


class HostnameTests(unittest.TestCase):
    def sink(self, url, **kwargs):
        sink = from_url(url, **kwargs)
        self.addCleanup(sink.tear_down)
        return sink

    @defer.inlineCallbacks
    def test_webhook_to_a_compose_service_name(self):
        resource = ScriptedResource()
        port = serve(self, resource).number
        named = NamedReactor({"hook_service": "127.0.0.1"})
        sink = self.sink(f"http://hook_service:{port}/hook?x=1", reactor=named)
        self.assertIsNone((yield sink.execute(make_changes(3, 1))))
        self.assertIsNone((yield sink.execute(make_changes(2, 1, start_id=4))))
        self.assertEqual([e["id"] for e in resource.events()], [1, 2, 3, 4, 5])
        headers = resource.requests[0][0]
        self.assertEqual(headers["host"], f"hook_service:{port}")
        self.assertEqual(resource.last_uri, b"/hook?x=1")
        self.assertEqual(named.nameResolver.asked, ["hook_service"])  # one pooled connection

    @defer.inlineCallbacks
    def test_elasticsearch_to_a_compose_service_name(self):
        es = FakeBulk()
        port = serve(self, es).number
        named = NamedReactor({"es_node.internal": "127.0.0.1"})
        sink = self.sink(f"elasticsearch+http://es_node.internal:{port}/docs", reactor=named)
        self.assertIsNone((yield sink.execute(make_changes(4, 1))))
        self.assertEqual(sorted(es.live("docs")), ["key-0", "key-1", "key-2", "key-3"])

    @defer.inlineCallbacks
    def test_internationalized_name(self):
        resource = ScriptedResource()
        port = serve(self, resource).number
        named = NamedReactor({"xn--bcher-kva.example": "127.0.0.1"})
        sink = self.sink(f"http://bücher.example:{port}/ä?q=ü", reactor=named)
        self.assertIsNone((yield sink.execute(make_changes(1, 1))))
        self.assertEqual(resource.requests[0][0]["host"], f"xn--bcher-kva.example:{port}")
        self.assertEqual(resource.last_uri, b"/%C3%A4?q=%C3%BC")

    @defer.inlineCallbacks
    def test_a_name_that_does_not_resolve_is_one_line(self):
        """
        Through the system resolver: the name reaches it as it is (no IDNA
        traceback), and not resolving it is a retry with one line.
        """
        log = capture_log(self)
        sink = self.sink("http://no_such_service.invalid:8080/hook", timeout=10)
        e = yield self.assertFailure(sink.execute(make_changes(1, 1)), Retry)
        self.assertIn("DNSLookupError", str(e))
        self.assertIn("no address for 'no_such_service.invalid'", str(e))
        self.assertNotIn("\n", str(e))
        texts = "\n".join(event_text(x) for x in log)
        self.assertNotIn("Traceback", texts)
        self.assertNotIn("idna", texts.lower())

    def test_https_to_such_a_name_is_refused_at_start_up(self):
        for url in ("https://hook_service/x?token=s3cretvalue", "elasticsearch+https://es_1:9200/i"):
            e = self.assertRaises(SinkURLError, from_url, url)
            self.assertIn("a TLS certificate cannot be checked against the host name", str(e))
            self.assertNotIn("\n", str(e))
            self.assertNotIn("s3cretvalue", str(e))

    def test_not_a_host_name_is_refused_at_start_up(self):
        for url in ("http://bad host/x", "http://a..b/x", "http://a!b/", "http://ex%41mple/"):
            e = self.assertRaises(SinkURLError, from_url, url)
            self.assertIn("is not a host name", str(e))


class HostTextTests(unittest.TestCase):
    def test_ascii_host(self):
        self.assertEqual(ascii_host("hook_service"), "hook_service")
        self.assertEqual(ascii_host("Hook.Example."), "Hook.Example.")
        self.assertEqual(ascii_host("::1"), "::1")
        self.assertEqual(ascii_host("bücher.example"), "xn--bcher-kva.example")
        self.assertRaises(ValueError, ascii_host, "")
        self.assertRaises(ValueError, ascii_host, "a" * 64)

    def test_idna_refuses(self):
        self.assertTrue(idna_refuses("hook_service"))
        self.assertFalse(idna_refuses("hook-service.example"))
        self.assertFalse(idna_refuses("127.0.0.1"))
        self.assertFalse(idna_refuses("::1"))

    def test_request_uri(self):
        self.assertEqual(request_uri("http://[::1]:80/p%20q?a=b c"),
                         (b"http://[::1]:80/p%20q?a=b%20c", "::1"))
        self.assertEqual(request_uri("HTTP://h_1"), (b"http://h_1/", "h_1"))
