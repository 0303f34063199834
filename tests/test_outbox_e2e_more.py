"""
The durable outbox end to end, continued (see L{tests.test_outbox_e2e}):
a failover to a synchronous standby, a table captured with C{hermes-tx
capture}, and a webhook sink that fails 30% of its requests.
"""

import json
import os
import random
import sys

from twisted.internet import defer, error, threads, utils
from twisted.trial import unittest

from hermes_tx.outbox.schema import install
from tests.support.deliveries import judge
from tests.support.fixtures import PrimaryStandbyFixtures
from tests.support.fleet import ROOT
from tests.support.httpserver import DROP, DROP_AFTER, OK, ScriptedResource, listen
from tests.support.outbox import OutboxDatabase
from tests.support.shared import sleep, wait_until
from tests.support.twistd import run_twistd
from tests.test_outbox_e2e import FAST, _EndToEnd

HERMES_TX = os.path.join(os.path.dirname(sys.executable), "hermes-tx")


class FailoverTests(_EndToEnd, PrimaryStandbyFixtures, unittest.TestCase):
    """
    A primary whose commits wait for its standby (C{synchronous_commit =
    on}, the standby named in C{synchronous_standby_names}).
    """

    @classmethod
    def setUpClass(cls):
        import psycopg2

        super().setUpClass()
        try:
            conn = psycopg2.connect(cls.primary.dsn())
            try:
                install(conn)
            finally:
                conn.close()
            name = f'"hermes-standby-{cls.standby.port}"'
            cls.primary.execute("ALTER SYSTEM SET synchronous_standby_names = %s", (name,))
            cls.primary.execute("ALTER SYSTEM SET synchronous_commit = 'on'")
            cls.primary.execute("SELECT pg_reload_conf()")
            from tests.support.fleet import wait_for

            wait_for(lambda: cls.primary.execute(
                "SELECT sync_state FROM pg_stat_replication")[0][0] == "sync", 10, "a sync standby")
        except BaseException:
            cls.standby.destroy()
            cls.primary.destroy()
            raise

    @defer.inlineCallbacks
    def test_nothing_committed_is_lost_across_a_promotion(self):
        """
        Two instances on a DSN naming both servers deliver while two writer
        threads commit; the primary crashes (immediate shutdown) and the
        standby is promoted.  Every change whose COMMIT the writer saw is
        on the new primary and delivered; per key in commit order; the
        instances resume on the new primary by themselves.
        """
        primary, standby = self.primary, self.standby
        both = (f"host={primary.host},{standby.host} port={primary.port},{standby.port}"
                " user=postgres dbname=postgres")
        fleet = yield self.started_fleet(2, 10, dsn=both, primary_dsn=primary.dsn(), execute_delay=0.001)
        writer = self.writer(dsn=both + " target_session_attrs=read-write", rate=200, threads=2)
        yield sleep(2.0)
        before = len(writer.acknowledged)
        yield threads.deferToThread(primary.stop, "immediate")
        yield threads.deferToThread(standby.promote)
        yield wait_until(lambda: len(writer.acknowledged) > before + 100, timeout=20,
                         what="commits on the new primary")
        yield self.finish(fleet, writer, dsn=standby.dsn())
        self.assertGreater(before, 0)


class CaptureTests(OutboxDatabase, unittest.TestCase):
    @defer.inlineCallbacks
    def test_captured_table_to_json_lines(self):
        """
        C{hermes-tx capture} on a table with a quoted name and a composite
        key; INSERT, UPDATE, DELETE and an UPDATE of the key, committed by
        plain SQL, come out of C{twistd hermes --outbox} (the default
        JSON-lines processor) as changes with the payload the README
        describes, each key's in commit order.
        """
        self.query('CREATE SCHEMA "Sales"')
        self.query('CREATE TABLE "Sales"."Order Lines" (order_id int, line int, item text,'
                   ' qty int, note text, PRIMARY KEY (order_id, line))')
        command = HERMES_TX if os.path.exists(HERMES_TX) else sys.executable
        prefix = [] if command == HERMES_TX else ["-m", "hermes_tx.outbox"]
        out, err, code = yield utils.getProcessOutputAndValue(
            command, prefix + ["capture", "--dsn", self.dsn, "--table", '"Sales"."Order Lines"',
                               "--topic", "lines"],
            env={"PYTHONPATH": ROOT, "PATH": os.environ.get("PATH", "")}, path=ROOT,
        )
        self.assertEqual(code, 0, (out, err))
        proto, transport = run_twistd(["--dsn", self.dsn, "--outbox", "lines", "--poll-interval", "30"])
        try:
            yield wait_until(lambda: b"consuming outbox topics" in proto.err, timeout=30,
                             what="consuming")
            conn = self.connect()
            for statement in [
                "INSERT INTO \"Sales\".\"Order Lines\" VALUES (1, 1, 'tea', 2, NULL),"
                " (1, 2, 'ünï ☃ \"q\"', 1, 'x')",
                'UPDATE "Sales"."Order Lines" SET qty = 3 WHERE order_id = 1 AND line = 1',
                'DELETE FROM "Sales"."Order Lines" WHERE line = 2',
                'UPDATE "Sales"."Order Lines" SET line = 5 WHERE line = 1',
            ]:
                self.execute(statement, conn=conn)
            yield wait_until(lambda: proto.out.count(b"\n") >= 6, timeout=10, what="six changes")
            yield wait_until(lambda: not self.outbox(), timeout=10, what="an empty outbox")
        finally:
            transport.signalProcess("TERM")
        ended = yield proto.ended
        self.assertIsInstance(ended, error.ProcessDone, proto.err.decode())
        records = proto.records()
        self.assertEqual({r["kind"] for r in records}, {"change"})
        self.assertEqual({r["topic"] for r in records}, {"lines"})
        self.assertEqual([r["attempts"] for r in records], [0] * 6)
        for record in records:
            self.assertEqual(json.loads(record["payload"]), record["data"])
        by_id = sorted(records, key=lambda r: r["id"])
        table = '"Sales"."Order Lines"'
        tea2 = {"order_id": 1, "line": 1, "item": "tea", "qty": 2, "note": None}
        tea3 = dict(tea2, qty=3)
        odd = {"order_id": 1, "line": 2, "item": 'ünï ☃ "q"', "qty": 1, "note": "x"}

        def change(op, key, old, new):
            return {"table": table, "op": op, "key": {"order_id": 1, "line": key}, "old": old, "new": new}

        self.assertEqual([(r["key"], r["data"]) for r in by_id], [
            ("[1, 1]", change("INSERT", 1, None, tea2)),
            ("[1, 2]", change("INSERT", 2, None, odd)),
            ("[1, 1]", change("UPDATE", 1, tea2, tea3)),
            ("[1, 2]", change("DELETE", 2, odd, None)),
            ("[1, 1]", change("DELETE", 1, tea3, None)),
            ("[1, 5]", change("INSERT", 5, None, dict(tea3, line=5))),
        ])
        for key in ("[1, 1]", "[1, 2]"):
            delivered = [r["id"] for r in records if r["key"] == key]
            self.assertEqual(delivered, sorted(delivered), key)


class SinkTests(_EndToEnd, OutboxDatabase, unittest.TestCase):
    keys = [f"key-{i}" for i in range(20)]

    @defer.inlineCallbacks
    def test_webhook_failing_30_percent(self):
        """
        C{twistd hermes --outbox t --sink http://...} against a server
        that fails 30% of the requests (500, 503, connection dropped before
        or after taking the body): every change arrives, per key in commit
        order (a batch taken but not confirmed comes again), and the outbox
        ends empty.
        """
        rng = random.Random(30)
        failures = []

        def script(number, body):
            r = rng.random()
            if r >= 0.3:
                return OK
            action = ((500, {}, b"boom") if r < 0.12 else (503, {"Retry-After": "0"}, b"busy")
                      if r < 0.2 else DROP if r < 0.25 else DROP_AFTER)
            failures.append(action)
            return action

        resource = ScriptedResource(script)
        url = listen(self, resource) + "hook"
        # A change whose requests fail six times in a row (30% each: it
        # happens to one of 400 changes in a run in four) would wait
        # 0.05 + 0.15 + 0.45 + 1.35 + 4.05 + 12.15 s and then 36.45 s for
        # its seventh try, eight times in a row (a run in forty) 109 s
        # more: past the test's time.  With at most 2 s between tries, ten
        # tries take at most about 14 s.
        fleet = yield self.started_fleet(1, 10, sink=url,
                                         extra=FAST + ["--backoff-limit", "1", "--max-retry-delay", "2"])
        writer = self.writer(rate=100, threads=1, limit=200)
        yield wait_until(writer.done, timeout=30, what="the writer's 200 changes")
        yield wait_until(lambda: self.outbox_state()[0] == 0, timeout=60, interval=0.2,
                         what="an empty outbox")
        fleet.stop()
        yield wait_until(fleet.stopped, timeout=30, what="twistd stopped")
        counts = dict(self.query("SELECT key, n FROM e2e_counters"))
        tokens = {(k, n): w for k, n, w in self.query("SELECT key, n, w FROM e2e_history")}
        events = resource.events()
        verdict = judge([(e["key"], e["data"]["n"], e["data"]["w"]) for e in events], counts, tokens)
        self.assertEqual(verdict.expected, 400)
        self.assertEqual((verdict.missing, verdict.disorder, verdict.phantoms), ([], [], []),
                         verdict.summary())
        self.assertGreaterEqual(len(failures), 3)
        self.assertEqual({e["topic"] for e in events}, {"t"})
        self.assertEqual(fleet.unclean(), [])
