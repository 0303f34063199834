"""
The Elasticsearch/OpenSearch sink against an in-process stand-in for the
C{_bulk} API (tests.support.fake_es; no Elasticsearch server can be
installed here).
"""

import json
import random

from twisted.internet import defer, task
from twisted.trial import unittest

from hermes_tx.events import Change, Event
from hermes_tx.outcomes import Reject, Retry
from hermes_tx.sinks import SinkURLError, from_url
from hermes_tx.sinks.elasticsearch import ElasticsearchSink
from hermes_tx.sinks.httpsink import HELD_BACK
from tests.support.fake_es import DROP, DROP_AFTER, FakeBulk
from tests.support.faults import event_text
from tests.support.httpserver import serve
from tests.support.shared import capture_log
from tests.support.sinkdriver import Driver, make_changes

PASSWORD = "es-pw-1a2b3c4d"


def change(i, key, op, new=None, **extra):
    data = {"table": "public.t", "op": op, "key": {"id": key}, "old": None, "new": new}
    data.update(extra)
    return Change(i, "t", key, 0, 1.0, json.dumps(data), data)


class ElasticsearchTests(unittest.TestCase):
    def setUp(self):
        self.es = FakeBulk()
        self.server = serve(self, self.es)
        base = self.server.url
        self.url = base.replace("http://", "elasticsearch+http://") + "docs"

    def sink(self, url=None, **kwargs):
        sink = from_url(url or self.url, **kwargs)
        self.addCleanup(sink.tear_down)
        return sink

    @defer.inlineCallbacks
    def test_bulk_body_and_documents(self):
        sink = self.sink()
        note = Event("notification", "ch", '{"n": 1}', 7)
        note.data = {"n": 1}
        plain = Change(4, "t", "k4", 0, 1.0, '{"x": 1}', {"x": 1})
        batch = [Event("start"), change(1, "a", "INSERT", {"id": "a", "v": 1}),
                 change(2, "b", "UPDATE", {"id": "b", "v": 2}), change(3, "c", "DELETE"),
                 plain, note]
        self.assertIsNone((yield sink.execute(batch)))
        [(headers, body)] = self.es.bodies
        self.assertEqual(headers["content-type"], "application/x-ndjson")
        lines = [json.loads(line) for line in body.decode().splitlines()]
        self.assertEqual(lines, [
            {"index": {"_index": "docs", "_id": "a", "version": 1, "version_type": "external"}},
            {"id": "a", "v": 1},
            {"index": {"_index": "docs", "_id": "b", "version": 2, "version_type": "external"}},
            {"id": "b", "v": 2},
            {"delete": {"_index": "docs", "_id": "c", "version": 3, "version_type": "external"}},
            {"index": {"_index": "docs", "_id": "k4", "version": 4, "version_type": "external"}},
            {"x": 1},
            {"index": {"_index": "docs"}},
            {"n": 1}])
        self.assertTrue(body.endswith(b"\n"))
        live = self.es.live("docs")
        self.assertEqual(live["a"], (1, {"id": "a", "v": 1}))
        self.assertEqual(live["k4"], (4, {"x": 1}))
        self.assertEqual(sink.metrics.sent, 5)

    @defer.inlineCallbacks
    def test_stale_retry_and_deleted_document_are_done(self):
        """
        409 (a newer version is there) and 404 on a delete are done, and
        the newer document stays.
        """
        sink = self.sink()
        yield sink.execute([change(5, "k", "UPDATE", {"v": 5})])
        self.assertIsNone((yield sink.execute([change(3, "k", "UPDATE", {"v": 3}),
                                               change(9, "gone", "DELETE")])))
        self.assertEqual(self.es.live("docs")["k"], (5, {"v": 5}))
        yield sink.execute([change(10, "k", "DELETE")])
        self.assertIsNone((yield sink.execute([change(8, "k", "INSERT", {"v": 8})])))
        self.assertNotIn("k", self.es.live("docs"))

    @defer.inlineCallbacks
    def test_read_is_an_upsert(self):
        """
        A backfilled row (op READ) is indexed like an INSERT or UPDATE;
        read before a newer change that was already indexed, it is stale
        (409) and done, the newer document kept.
        """
        sink = self.sink()
        self.assertIsNone((yield sink.execute([change(1, "r", "READ", {"id": "r", "v": 1}),
                                               change(7, "n", "UPDATE", {"id": "n", "v": 7})])))
        [(_, body)] = self.es.bodies
        self.assertEqual(json.loads(body.decode().splitlines()[0]),
                         {"index": {"_index": "docs", "_id": "r", "version": 1, "version_type": "external"}})
        self.assertIsNone((yield sink.execute([change(5, "n", "READ", {"id": "n", "v": 5}),
                                               change(6, "r", "READ", {"id": "r", "v": 6})])))
        live = self.es.live("docs")
        self.assertEqual((live["r"], live["n"]), ((6, {"id": "r", "v": 6}), (7, {"id": "n", "v": 7})))

    @defer.inlineCallbacks
    def test_item_statuses(self):
        self.es.item_429 = 1.0
        sink = self.sink()
        a = change(1, "a", "INSERT", {"v": 1})
        outcome = yield sink.execute([a])
        self.assertEqual([(e, why) for e, why, _ in outcome.retry],
                         [(a, "index 429: es_rejected_execution_exception: queue full")])
        self.es.item_429 = 0
        bad = change(2, "bad", "INSERT", {"__bad__": 1})
        ok = change(3, "ok", "INSERT", {"v": 3})
        outcome = yield sink.execute([bad, ok])
        self.assertEqual(outcome.retry, [])
        self.assertEqual(outcome.rejected, [(bad, "index 400: mapper_parsing_exception: "
                                                  "failed to parse field [__bad__]")])
        self.assertIn("ok", self.es.live("docs"))
        self.assertEqual((sink.metrics.sent, sink.metrics.retried, sink.metrics.rejected),
                         (1, 1, 1))

    @defer.inlineCallbacks
    def test_unsendable_events_rejected_alone(self):
        sink = self.sink()
        odd = change(1, "x", "TRUNCATE")
        no_row = change(2, "y", "UPDATE", None)
        scalar = Change(3, "t", "z", 0, 1.0, "5", 5)
        undecoded = Event("notification", "ch", "text", 1)
        ok = change(4, "ok", "INSERT", {"v": 1})
        outcome = yield sink.execute([odd, no_row, scalar, undecoded, ok])
        self.assertEqual([(e.kind, why) for e, why in outcome.rejected], [
            ("change", "unknown op 'TRUNCATE'"), ("change", "no JSON object to index"),
            ("change", "no JSON object to index"), ("notification", "no JSON object to index")])
        self.assertEqual(list(self.es.live("docs")), ["ok"])

    @defer.inlineCallbacks
    def test_whole_request_statuses(self):
        """
        A 5xx, a 429 and credentials refused give the whole batch back as
        Unavailable (the dependency, not a change, failed; one line naming
        the cause); nothing is rejected.
        """
        answers = [(500, {}), (429, {"Retry-After": "3"}), (401, {}), (403, {})]
        self.es.script = lambda n: answers[n] if n < len(answers) else None
        sink = self.sink()
        got = []
        for _ in answers:
            try:
                yield sink.execute([change(1, "a", "INSERT", {"v": 1})])
            except (Retry, Reject) as e:
                got.append((type(e).__name__, getattr(e, "retry_after", None), str(e)[:40]))
        self.assertEqual([g[:2] for g in got],
                         [("Unavailable", None), ("Unavailable", 3), ("Unavailable", None),
                          ("Unavailable", None)])
        self.assertEqual(got[2][2], f"authentication refused by {self.url}"[:40])

    @defer.inlineCallbacks
    def test_whole_request_400_splits_to_the_change_at_fault(self):
        """
        Elasticsearch refuses a whole bulk request for one action (an _id
        over 512 bytes): the batch is split, that change rejected, the
        others indexed.
        """
        sink = self.sink()
        changes = [change(i, f"k{i}", "INSERT", {"v": i}) for i in range(1, 8)]
        long_id = change(8, "x" * 600, "INSERT", {"v": 8})
        outcome = yield sink.execute(changes[:3] + [long_id] + changes[3:])
        self.assertEqual([(e, why[:45]) for e, why in outcome.rejected],
                         [(long_id, "HTTP 400: {\"error\": {\"type\": \"action_request_")])
        self.assertEqual(sorted(self.es.live("docs")), sorted(f"k{i}" for i in range(1, 8)))

    @defer.inlineCallbacks
    def test_a_read_only_index_retries_and_rejects_nothing(self):
        """
        Items refused for the index's sake (a 403 cluster block, a 400
        index_closed_exception) are retried, never rejected.
        """
        self.es.blocked = True
        sink = self.sink()
        changes = [change(i, f"k{i}", "INSERT", {"v": i}) for i in range(1, 4)]
        outcome = yield sink.execute(changes)
        self.assertEqual(outcome.rejected, [])
        self.assertEqual([(e, why[:34]) for e, why, _ in outcome.retry],
                         [(c, "index 403: cluster_block_exception") for c in changes])
        from hermes_tx.sinks.elasticsearch import item_outcome
        from hermes_tx.outcomes import BatchOutcome
        closed = BatchOutcome()
        item_outcome(closed, changes[0], "index", {"index": {"status": 400, "error": {
            "type": "index_closed_exception", "reason": "closed"}}})
        self.assertEqual((closed.rejected, len(closed.retry)), ([], 1))
        self.es.blocked = False
        self.assertIsNone((yield sink.execute(changes)))

    @defer.inlineCallbacks
    def test_every_item_refused_dead_letters_no_change(self):
        """
        A mapping that refuses every document of a batch (a field's type
        changed): nothing was accepted, so the changes are retried, not
        dead-lettered; once a batch is accepted, a lone bad change is.
        """
        sink = self.sink()
        bad = [change(i, f"b{i}", "INSERT", {"__bad__": i}) for i in range(1, 4)]
        e = yield self.assertFailure(sink.execute(bad), Retry)
        self.assertEqual(str(e), "index 400: mapper_parsing_exception: failed to parse field "
                                 "[__bad__]" + HELD_BACK)
        yield sink.execute([change(5, "ok", "INSERT", {"v": 5})])
        outcome = yield sink.execute(bad[:1])
        self.assertEqual([e for e, _ in outcome.rejected], bad[:1])
        self.assertEqual(sink.metrics.rejected, 1)

    @defer.inlineCallbacks
    def test_413_splits_and_a_single_oversized_change_is_rejected(self):
        self.es.max_body = 400
        sink = self.sink()
        changes = [change(i, f"k{i}", "INSERT", {"v": i}) for i in range(1, 9)]
        huge = change(9, "huge", "INSERT", {"v": "x" * 500})
        outcome = yield sink.execute(changes[:4] + [huge] + changes[4:])
        self.assertEqual([e for e, _ in outcome.rejected], [huge])
        self.assertEqual(sorted(self.es.live("docs")), sorted(f"k{i}" for i in range(1, 9)))
        self.assertGreater(len(self.es.bodies), 3)

    @defer.inlineCallbacks
    def test_a_short_answer_retries(self):
        self.es.bulk = lambda text: []  # "items": [] for two actions
        sink = self.sink()
        e = yield self.assertFailure(sink.execute(make_changes(2, 1)), Retry)
        self.assertEqual(str(e), "bulk answer has 0 items for 2 actions")

    def test_urls(self):
        from tests.test_sink_http import FakeAgent

        agent = FakeAgent()
        sink = ElasticsearchSink("opensearch+https://u:p@h:9243/pre/fix/idx?refresh=wait_for",
                                 agent=agent, clock=task.Clock())
        sink.execute(make_changes(1, 1))
        self.assertEqual(agent.requests[0][:2],
                         (b"POST", b"https://h:9243/pre/fix/_bulk?refresh=wait_for"))
        self.assertEqual(sink.index, "idx")
        for bad in ("elasticsearch+http://h:9200/", "elasticsearch+ftp://h/x",
                    "elasticsearch+http://h/_bulk"):
            self.assertRaises(SinkURLError, ElasticsearchSink, bad)

    @defer.inlineCallbacks
    def test_credentials_from_url_or_secret_file_never_shown(self):
        log = capture_log(self)
        self.es.script = lambda n: (401, {})
        secret_file = self.mktemp()
        with open(secret_file, "w") as f:
            f.write(PASSWORD + "\n")
        url = self.url.replace("://", "://elastic@")
        sink = self.sink(url, secret_file=secret_file)
        e = yield self.assertFailure(sink.execute(make_changes(1, 1)), Retry)
        headers = self.es.bodies[0][0]
        self.assertEqual(headers["authorization"], "Basic " + __import__("base64").b64encode(
            f"elastic:{PASSWORD}".encode()).decode())
        url_sink = self.sink(self.url.replace("://", f"://elastic:{PASSWORD}@"))
        yield self.assertFailure(url_sink.execute(make_changes(1, 1)), Retry)
        self.assertEqual(self.es.bodies[1][0]["authorization"], headers["authorization"])
        texts = [str(e), repr(sink), repr(url_sink), url_sink.target]
        texts += [event_text(x) for x in log]
        for text in texts:
            self.assertNotIn(PASSWORD, text)
            self.assertNotIn(headers["authorization"][6:], text)

    @defer.inlineCallbacks
    def test_thirty_percent_failures_every_version_once_in_order(self):
        """
        With 30% of requests failing (500, 503, 429 with Retry-After, a
        dropped connection before or after applying), 10% of items
        answered 429 and a server restart midway, every change is applied exactly once per key in id
        order (external versions turn redeliveries into 409s), and the
        index ends as the last change of each key says.
        """
        rng = random.Random(5)

        def script(n):
            r = rng.random()
            if r < 0.08:
                return (500, {})
            if r < 0.14:
                return (503, {"Retry-After": "0"})
            if r < 0.20:
                return (429, {"Retry-After": "1"})
            if r < 0.25:
                return DROP
            if r < 0.30:
                return DROP_AFTER
            return None

        self.es.script, self.es.item_429 = script, 0.1
        changes = []
        for c in make_changes(25, 8):
            n = c.data["new"]["n"]
            if n == 5:
                c = change(c.id, c.key, "DELETE")
            elif n == 6:
                c = change(c.id, c.key, "INSERT", {"k": c.key, "n": n})
            changes.append(c)
        sink = self.sink(max_batch=16, timeout=2)
        restarting = []

        def fault(n):
            if n == 15:
                restarting.append(self.server.restart())

        driver = Driver(sink, changes, fault=fault)
        yield driver.run(timeout=60)
        yield restarting[0]
        self.assertEqual((driver.rejected, driver.errors), ([], []))
        self.assertGreater(driver.retries, 10)
        applied = {}
        for op, index, key, version in self.es.applied:
            applied.setdefault(key, []).append(version)
        expected = {}
        for c in changes:
            expected.setdefault(c.key, []).append(c.id)
        self.assertEqual(applied, expected)
        live = self.es.live("docs")
        self.assertEqual(sorted(live), sorted(expected))
        for key, ids in expected.items():
            self.assertEqual(live[key][0], ids[-1])
            self.assertEqual(live[key][1], {"k": key, "n": 7})


class ActionTests(unittest.TestCase):
    def test_unencodable_or_nan_is_unsendable(self):
        from hermes_tx.sinks.base import Unsendable
        from hermes_tx.sinks.elasticsearch import action

        for c in (change(1, "k\ud800", "DELETE"), change(2, "k", "INSERT", {"x": float("nan")}),
                  change(3, "k", "INSERT", {"x": "\udc80"})):
            self.assertRaises(Unsendable, action, c, "docs")
        self.assertEqual(action(change(4, "k", "DELETE"), "i"),
                         ("delete", b'{"delete":{"_index":"i","_id":"k","version":4,'
                                    b'"version_type":"external"}}\n'))
