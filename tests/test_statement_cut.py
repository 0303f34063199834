"""
Statements the server cuts short (SQLSTATE 57014: a role's short
C{statement_timeout}) on a real database: the error keeps the server's
message (L{hermes_tx.postgres.connection.HermesCursor}; txpostgres would
make it a bare C{CancelledError}), and an outbox consumer whose claims are
cut keeps its connection, says so in one line, and delivers once claims
fit again (L{hermes_tx.outbox.run}).
"""

import os
import uuid

import psycopg2
import psycopg2.errors
from twisted.internet import defer
from twisted.logger import LogLevel, formatEvent
from twisted.trial import unittest

from hermes_tx.client import Client
from hermes_tx.connectors import PostgresConnector
from hermes_tx.outbox import privileges
from hermes_tx.outbox.consumer import OutboxConsumer
from hermes_tx.postgres.cut import describe_cut, is_cut
from tests.support.outbox import OutboxDatabase
from tests.support.shared import capture_log, sleep, wait_until
from tests.test_outbox_consumer import Recorder


class CutStatementTests(OutboxDatabase, unittest.TestCase):
    """
    A consumer role (exactly the consumer's grants) whose statements are
    cut after 300 ms.
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.role = f"hermes_cut_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        cls.cluster.execute(f'CREATE ROLE "{cls.role}" LOGIN')
        cls.cluster.execute(f"ALTER ROLE \"{cls.role}\" SET statement_timeout = '300ms'")
        conn = psycopg2.connect(cls.dsn)
        try:
            with conn.cursor() as cur:
                privileges.grant(cur, "consumer", cls.role)
            conn.commit()
        finally:
            conn.close()
        cls.role_dsn = cls.cluster.dsn(cls.dbname, user=cls.role)

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        cls.cluster.execute(f'DROP ROLE IF EXISTS "{cls.role}"')

    @defer.inlineCallbacks
    def test_the_server_message_not_a_cancelled_error(self):
        """
        A statement cut by the role's statement_timeout fails with the
        server's error (QueryCanceled, SQLSTATE 57014), said in one line;
        a query whose Deferred we cancel still fails with CancelledError.
        """
        connector = PostgresConnector(self.role_dsn)
        conn = yield connector.connect()
        self.addCleanup(connector.disconnect)
        error = yield self.assertFailure(conn.runQuery("SELECT pg_sleep(2)"), psycopg2.errors.QueryCanceled)
        self.assertTrue(is_cut(error))
        self.assertEqual(describe_cut(error), "canceling statement due to statement timeout (SQLSTATE 57014)")
        self.assertEqual((yield conn.runQuery("SELECT 1")), [[1]])  # the connection is fine
        d = conn.runQuery("SELECT pg_sleep(0.2)")
        conn.cancel(d)
        yield self.assertFailure(d, defer.CancelledError)

    @defer.inlineCallbacks
    def test_cut_claims_cost_no_reconnect(self):
        """
        While another session holds a lock on the outbox, every claim of
        the consumer waits for it until its statement_timeout cuts it: no
        reconnect, one line naming the cause (at most one every ten
        seconds), the connection kept, and so for a figures read (a
        scrape); once the lock goes, the change written meanwhile is
        delivered on the same connection.
        """
        log = capture_log(self)
        recorder = Recorder()
        client = Client(self.role_dsn, role_check_interval=0.5)
        consumer = OutboxConsumer(PostgresConnector(self.role_dsn, application_name="hermes-cut-test"),
                                  ["t"], poll_interval=0.2, liveness_timeout=5.0, stats_interval=0.5)
        client.add_outbox(consumer)
        client.add_processor(recorder)
        client.startService()
        self.addCleanup(lambda: client.stopService() if client.running else None)
        self.emit("t", "a", '{"n": 1}')
        yield wait_until(lambda: len(recorder.seen) == 1, timeout=20, what="the first change")
        backend = self.query("SELECT pid FROM pg_stat_activity WHERE application_name = 'hermes-cut-test'")
        locker = self.connect(autocommit=False)
        with locker.cursor() as cur:
            cur.execute("LOCK TABLE hermes.outbox IN ACCESS EXCLUSIVE MODE")
        try:
            yield sleep(1.0)  # several polls, each claim cut after 300 ms
            consumer.figures()  # a scrape: the figures read is cut too
            yield sleep(1.0)
        finally:
            locker.rollback()
        self.emit("t", "a", '{"n": 2}')
        yield wait_until(lambda: len(recorder.seen) == 2, timeout=20, what="the change after the lock")
        self.assertEqual([n for _, n, _ in recorder.seen], [1, 2])
        self.assertEqual(consumer.reconnects, 0)
        self.assertEqual(
            self.query("SELECT pid FROM pg_stat_activity WHERE application_name = 'hermes-cut-test'"), backend)
        lines = [formatEvent(e) for e in log if e.get("log_level") == LogLevel.warn]
        cut = [line for line in lines if "cut short by the server" in line]
        self.assertEqual(len(cut), 1, lines)
        self.assertIn(f"{consumer.ident}: a claim was cut short by the server: canceling statement due to"
                      " statement timeout (SQLSTATE 57014); claiming again in", cut[0])
        self.assertIn("reading the outbox's figures for /metrics failed: canceling statement due to statement"
                      " timeout (SQLSTATE 57014)", lines)
        self.assertFalse([line for line in lines if "CancelledError" in line or "reconnecting" in line], lines)
