"""
Tests for L{hermes_tx.connectors} against a real PostgreSQL server.
"""

import psycopg2
import psycopg2.extensions
import psycopg2.extras
from twisted.internet import defer
from twisted.trial import unittest

from hermes_tx import strategies
from hermes_tx.connectors import PostgresConnector
from hermes_tx.exceptions import ConnectionLostError, InvalidConfigurationException
from tests.support.shared import shared_primary, wait_until


class ConnectorTests(unittest.TestCase):
    def setUp(self):
        self.cluster = shared_primary()

    def connector(self, dsn=None, **kwargs):
        c = PostgresConnector(self.cluster.dsn() if dsn is None else dsn, **kwargs)
        self.addCleanup(c.disconnect)
        return c

    @defer.inlineCallbacks
    def test_application_name_and_autocommit(self):
        """
        Connections carry application_name (default "hermes") for
        pg_stat_activity, and each statement commits on its own.
        """
        c = self.connector(application_name="hermes-conn-test")
        rows = yield c.runQuery("SELECT current_setting('application_name')")
        self.assertEqual(rows[0][0], "hermes-conn-test")
        self.assertEqual(len(self.cluster.backend_pids("hermes-conn-test")), 1)
        yield c.runOperation("CREATE TABLE IF NOT EXISTS autocommit_check (v int)")
        yield c.runOperation("INSERT INTO autocommit_check VALUES (1)")
        # Seen from another connection at once: no transaction was left open.
        self.assertEqual(self.cluster.execute("SELECT count(*) FROM autocommit_check")[0][0] >= 1, True)
        default = self.connector()
        rows = yield default.runQuery("SELECT current_setting('application_name')")
        self.assertEqual(rows[0][0], "hermes")

    @defer.inlineCallbacks
    def test_dict_cursor_by_default(self):
        c = self.connector()
        cursor = yield c.cursor()
        yield cursor.execute("SELECT 1 AS one, 'two' AS two")
        row = cursor.fetchone()
        self.assertIsInstance(row, psycopg2.extras.DictRow)
        self.assertEqual((row["one"], row["two"]), (1, "two"))

    @defer.inlineCallbacks
    def test_is_server_master_on_primary(self):
        self.assertIs((yield self.connector().is_server_master()), True)

    @defer.inlineCallbacks
    def test_dict_dsn_and_uri(self):
        for dsn in (self.cluster.dsn_dict(), self.cluster.uri()):
            rows = yield self.connector(dsn).runQuery("SELECT 42")
            self.assertEqual(rows[0][0], 42)

    @defer.inlineCallbacks
    def test_multi_host_dsn_passes_through(self):
        """
        A multi-host DSN reaches libpq with its host and port lists intact:
        the first host refuses, the second answers.
        """
        raw = f"host=127.0.0.1,127.0.0.1 port=1,{self.cluster.port} user=postgres dbname=postgres"
        c = self.connector(raw)
        parsed = psycopg2.extensions.parse_dsn(c.dsn)
        self.assertEqual((parsed["host"], parsed["port"]),
                         ("127.0.0.1,127.0.0.1", f"1,{self.cluster.port}"))
        rows = yield c.runQuery("SELECT inet_server_port()")
        self.assertEqual(rows[0][0], self.cluster.port)

    @defer.inlineCallbacks
    def test_refused_is_an_expected_backoff(self):
        c = self.connector("host=127.0.0.1 port=1 user=postgres")
        error = yield self.assertFailure(c.connect(), psycopg2.OperationalError)
        self.assertEqual(strategies.CommonErrorStrategy().handle_exception(error),
                         (True, strategies.BACKOFF))
        self.assertFalse(c.is_connected)

    @defer.inlineCallbacks
    def test_missing_database_is_an_expected_backoff(self):
        c = self.connector(self.cluster.dsn(dbname="no_such_db"))
        error = yield self.assertFailure(c.connect(), psycopg2.OperationalError)
        self.assertEqual(strategies.CommonErrorStrategy().handle_exception(error),
                         (True, strategies.BACKOFF))

    @defer.inlineCallbacks
    def test_sql_error_is_continue(self):
        c = self.connector()
        error = yield self.assertFailure(c.runQuery("SELEC 1"), psycopg2.ProgrammingError)
        self.assertEqual(error.pgcode, "42601")
        self.assertEqual(strategies.CommonErrorStrategy().handle_exception(error),
                         (True, strategies.CONTINUE))
        # The connection is still usable after a statement error.
        rows = yield c.runQuery("SELECT 1")
        self.assertEqual(rows[0][0], 1)

    @defer.inlineCallbacks
    def test_terminated_backend_reports_loss_once(self):
        """
        pg_terminate_backend on an idle connection: the lost observers are
        called once, the connector forgets the connection, and the next
        query reconnects.  No "Unhandled Error" is logged.
        """
        c = self.connector(application_name="hermes-conn-kill")
        conn = yield c.connect()
        lost = []
        conn.notify_on_lost(lost.append)
        self.assertEqual(self.cluster.terminate_backends("hermes-conn-kill"), 1)
        yield wait_until(lambda: lost, what="loss reported")
        self.assertEqual(len(lost), 1)
        self.assertFalse(c.is_connected)
        rows = yield c.runQuery("SELECT 1")
        self.assertEqual(rows[0][0], 1)

    @defer.inlineCallbacks
    def test_loss_during_query(self):
        """
        A backend terminated while running a query fails that query with a
        connection error and reports the loss.
        """
        c = self.connector(application_name="hermes-conn-query")
        conn = yield c.connect()
        lost = []
        conn.notify_on_lost(lost.append)
        d = c.runQuery("SELECT pg_sleep(5)")
        yield wait_until(lambda: self.cluster.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'hermes-conn-query'"
            " AND state = 'active'")[0][0], what="query running")
        self.cluster.terminate_backends("hermes-conn-query")
        error = yield self.assertFailure(d, psycopg2.Error)
        self.assertTrue(strategies.is_connection_error(error), repr(error))
        self.assertEqual(len(lost), 1)

    def test_bad_dsn_is_a_configuration_error(self):
        e = self.assertRaises(InvalidConfigurationException, PostgresConnector,
                              "password=hunter2 oops")
        self.assertNotIn("hunter2", str(e))

    def test_repr_hides_password(self):
        c = PostgresConnector("host=x password=hunter2")
        self.assertNotIn("hunter2", repr(c))
        self.assertNotIn("hunter2", c.safe_dsn)


class ConnectTimeoutTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_unanswered_connect_times_out(self):
        """
        A server that accepts TCP but never answers: the attempt is abandoned
        after connect_timeout with ConnectionLostError.
        """
        from twisted.internet import protocol, reactor

        port = reactor.listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        c = PostgresConnector(f"host=127.0.0.1 port={port.getHost().port} sslmode=disable",
                              connect_timeout=0.3)
        error = yield self.assertFailure(c.connect(), ConnectionLostError)
        self.assertIn("0.3", str(error))
        self.assertFalse(c.is_connected)


class HostNameTests(unittest.TestCase):
    """
    Issue 8 item 9: host names are looked up off the reactor thread and
    handed to libpq as hostaddr, so libpq never resolves (and blocks).
    """

    @defer.inlineCallbacks
    def test_names_are_resolved_by_the_given_resolver(self):
        cluster = shared_primary()
        asked = []

        def resolve(name):
            asked.append(name)
            return defer.succeed(["127.0.0.1"])

        c = PostgresConnector(f"host=db.invalid port={cluster.port} user=postgres dbname=postgres",
                              resolver=resolve)
        self.addCleanup(c.disconnect)
        conn = yield c.connect()
        self.assertEqual(asked, ["db.invalid"])
        params = conn._connection.get_dsn_parameters()
        self.assertEqual((params["host"], params["hostaddr"]), ("db.invalid", "127.0.0.1"))

    @defer.inlineCallbacks
    def test_a_name_that_does_not_resolve(self):
        """
        Nothing resolves: one clear error, from our lookup, not libpq's.
        """
        from hermes_tx.exceptions import ConnectFailedError

        c = PostgresConnector("host=nowhere.invalid port=5432",
                              resolver=lambda name: defer.succeed([]))
        error = yield self.assertFailure(c.connect(), ConnectFailedError)
        self.assertEqual(str(error), "could not translate host name 'nowhere.invalid' to an address")

    @defer.inlineCallbacks
    def test_the_reactor_resolver_for_localhost(self):
        cluster = shared_primary()
        c = PostgresConnector(f"host=localhost port={cluster.port} user=postgres dbname=postgres")
        self.addCleanup(c.disconnect)
        conn = yield c.connect()
        self.assertIn(conn._connection.get_dsn_parameters()["hostaddr"], ("127.0.0.1", "::1"))
