# -*- test-case-name: tests.test_connectors -*-
"""
L{PostgresConnector}: one asynchronous PostgreSQL connection, made and
remade on demand, over txpostgres (through L{HermesConnection}, which files
down txpostgres's sharp edges).
"""

import psycopg2
import psycopg2.extras
from twisted.internet import defer
from twisted.python.failure import Failure

from hermes_tx import dsn as dsnlib
from hermes_tx.connection import HermesConnection
from hermes_tx.exceptions import ConnectionLostError


class PostgresConnector:
    """
    Owns one connection to PostgreSQL.

    Connections are asynchronous, therefore autocommit, and carry
    C{application_name} so operators can find them in C{pg_stat_activity}.

    @ivar dsn: the string handed to libpq (may hold a password: never log it).
    @ivar safe_dsn: C{dsn} with passwords redacted, for messages.
    @ivar connection: the open L{HermesConnection}, or C{None}.
    """

    def __init__(
        self,
        dsn,
        cursor_factory=psycopg2.extras.DictCursor,
        application_name="hermes",
        connect_timeout=10.0,
        reactor=None,
    ):
        """
        @param dsn: a dict of libpq keywords, a C{key=value} string or a
            C{postgresql://} URI; multi-host strings pass through untouched.
        @param cursor_factory: the psycopg2 cursor class for queries.
        @param application_name: set unless the DSN sets it.
        @param connect_timeout: seconds a connection attempt may take before
            it is abandoned (libpq ignores its own C{connect_timeout} in
            asynchronous mode).
        @param reactor: the reactor; C{None} means the global one.
        @raise hermes_tx.exceptions.InvalidConfigurationException: the DSN
            does not parse.
        """
        self.dsn = dsnlib.normalize(dsn, application_name=application_name)
        self.safe_dsn = dsnlib.redact(self.dsn)
        self.cursor_factory = cursor_factory
        self.connect_timeout = connect_timeout
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.connection = None
        self._waiters = []  # Deferreds waiting for the connection in progress
        self._pending = None  # the HermesConnection being connected

    def __repr__(self):
        return f"<PostgresConnector {self.safe_dsn!r}>"

    @property
    def is_connected(self):
        return self.connection is not None and self.connection.is_open

    def connect(self):
        """
        @return: a Deferred firing with the open L{HermesConnection},
            connecting first if needed.  Fails with the psycopg2 error (or
            L{ConnectionLostError} on timeout) when the server cannot be
            reached.
        """
        if self.is_connected:
            return defer.succeed(self.connection)
        waiter = defer.Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            self._connect()
        return waiter

    def _connect(self):
        conn = self._pending = HermesConnection(reactor=self.reactor)
        timed_out = []

        def give_up():
            # Closing the socket fails the pending poll; cancelling the
            # txpostgres Deferred instead would raise out of its canceller.
            timed_out.append(True)
            conn.close()

        timer = self.reactor.callLater(self.connect_timeout, give_up)

        def connected(_):
            self.connection = conn
            conn.notify_on_lost(self._lost)
            return conn

        def failed(failure):
            if timed_out:
                failure = Failure(
                    ConnectionLostError(f"no connection within {self.connect_timeout:g} s")
                )
            else:
                conn.close()
            return failure

        def done(result):
            if timer.active():
                timer.cancel()
            self._pending = None
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(result)

        # maybeDeferred: a connect that raises (a stale reactor registration)
        # must fail this attempt, not leave the waiters waiting for ever.
        d = defer.maybeDeferred(conn.connect, self.dsn, cursor_factory=self.cursor_factory)
        d.addCallbacks(connected, failed).addBoth(done)

    def _lost(self, reason):
        self.connection = None

    def disconnect(self):
        """
        Close the connection, if any, and abandon a connection attempt in
        progress (its waiters fail).  Safe to call at any time.

        @return: a Deferred firing with C{None}.
        """
        conn, self.connection = self.connection, None
        if conn is not None:
            conn.close()
        if self._pending is not None:
            self._pending.close()
        return defer.succeed(None)

    def runQuery(self, query, params=None):
        """
        Run one statement (connecting if needed).

        @param query: SQL text or a C{psycopg2.sql.Composable}.
        @param params: its parameters.
        @return: a Deferred firing with all result rows.
        """
        return self.connect().addCallback(lambda conn: conn.runQuery(query, params))

    def runOperation(self, query, params=None):
        """
        Like L{runQuery} for a statement whose result is not wanted.
        """
        return self.connect().addCallback(lambda conn: conn.runOperation(query, params))

    def cursor(self):
        """
        @return: a Deferred firing with a txpostgres cursor (of
            C{cursor_factory} rows) on the connection.  Its C{execute}
            returns a Deferred; run one statement at a time.
        """
        return self.connect().addCallback(lambda conn: conn.cursor())

    def is_server_master(self):
        """
        @return: a Deferred firing True when the server is a primary, False
            when it is a standby in recovery (asks C{pg_is_in_recovery()}).
        """
        d = self.runQuery("SELECT pg_is_in_recovery()")
        return d.addCallback(lambda rows: not rows[0][0])
