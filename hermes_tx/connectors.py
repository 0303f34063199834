# -*- test-case-name: tests.test_connectors -*-
"""
L{PostgresConnector}: one asynchronous PostgreSQL connection, made and
remade on demand, over txpostgres (through L{HermesConnection}, which files
down txpostgres's sharp edges).

Each connection attempt is an object of its own (L{hermes_tx.postgres.attempt.ConnectAttempt}) owning
its name lookups, its libpq connection and its timeout, so abandoning one
(a timeout, L{PostgresConnector.disconnect}) leaves nothing behind.
"""

import psycopg2
import psycopg2.extensions
import psycopg2.extras
from twisted.internet import defer

from hermes_tx.postgres import dsn as dsnlib
from hermes_tx.postgres.attempt import ConnectAttempt
from hermes_tx.postgres.connection import HermesConnection  # noqa: F401 (its home before hermes_tx.postgres.connection)
from hermes_tx.postgres.hosts import reactor_resolver, split_hosts

#: target_session_attrs values that already mean "a primary" for LISTEN.
_PRIMARY_ATTRS = ("primary", "read-write")


class PostgresConnector:
    """
    Owns one connection to PostgreSQL.

    Connections are asynchronous, therefore autocommit, and carry
    C{application_name} so operators can find them in C{pg_stat_activity}.

    With a multi-host DSN the connector seeks the primary: it connects with
    C{target_session_attrs=primary} unless the DSN asks for C{read-write}
    (or C{seek_primary=False}), or, once L{pin} named the host that is the
    primary, to that host alone.  Host names are resolved off the reactor
    thread and given to libpq as C{hostaddr}.

    @ivar dsn: the DSN as given, with hermes_tx's keywords added (may hold a
        password: never log it).
    @ivar safe_dsn: C{dsn} with passwords redacted, for messages.
    @ivar hosts: the L{hermes_tx.postgres.hosts.HostEntry}s of the DSN, in order.
    @ivar pinned: the entry connections go to, or C{None} for all of them.
    @ivar connection: the open L{HermesConnection}, or C{None}.
    """

    def __init__(
        self,
        dsn,
        cursor_factory=psycopg2.extras.DictCursor,
        application_name="hermes",
        connect_timeout=10.0,
        reactor=None,
        seek_primary=True,
        resolver=None,
    ):
        """
        @param dsn: a dict of libpq keywords, a C{key=value} string or a
            C{postgresql://} URI, multi-host ones included.
        @param cursor_factory: the psycopg2 cursor class for queries.
        @param application_name: set unless the DSN sets it.
        @param connect_timeout: seconds a connection attempt may take before
            it is abandoned (libpq ignores its own C{connect_timeout} in
            asynchronous mode).
        @param reactor: the reactor; C{None} means the global one.
        @param seek_primary: connect to a primary when the DSN has several
            hosts (C{target_session_attrs=primary}); C{False} leaves the
            DSN's own choice.
        @param resolver: a function taking a host name and returning a
            Deferred firing with its addresses; C{None} uses the reactor's
            threaded resolver.
        @raise hermes_tx.exceptions.InvalidConfigurationException: the DSN
            does not parse.
        """
        # The secrets of the DSN as given: a password libpq splits wrongly
        # (an "@" in a URI's password) shows up in its messages in pieces.
        self._secrets = dsnlib.secrets(dsn)
        self.dsn = dsnlib.normalize(dsn, application_name=application_name)
        self.safe_dsn = self.scrub(self.dsn)
        self.params = dsnlib.parse(self.dsn)
        self.hosts = split_hosts(self.params)
        self.cursor_factory = cursor_factory
        self.connect_timeout = connect_timeout
        self.seek_primary = seek_primary
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.resolve = resolver or reactor_resolver(reactor)
        self.pinned = None
        self.connection = None
        self._attempt = None  # the ConnectAttempt in progress

    def __repr__(self):
        return f"<PostgresConnector {self.safe_dsn!r}>"

    @property
    def is_connected(self):
        return self.connection is not None and self.connection.is_open

    def scrub(self, text):
        """
        @return: C{text} (a libpq message, say) without the DSN's secrets.
        """
        return dsnlib.scrub(dsnlib.redact(str(text)), self._secrets)

    # -- where to connect ---------------------------------------------------

    def pin(self, entry):
        """
        Connect to one host of the DSN from now on (the one found to be the
        primary), or to all of them again with C{None}.  The open
        connection, if any, is left alone.

        @param entry: a L{hermes_tx.postgres.hosts.HostEntry} (matched against this
            DSN's hosts by host, address and port, then by host and port),
            or C{None}.
        @return: True when connections now go to that host alone.
        """
        self.pinned = None
        if entry is None or len(self.hosts) < 2:
            return False
        for same in (lambda e: e == entry, lambda e: (e.host, e.port) == (entry.host, entry.port)):
            for candidate in self.hosts:
                if same(candidate):
                    self.pinned = candidate
                    return True
        return False

    def attempt_params(self):
        entries = [self.pinned] if self.pinned is not None else list(self.hosts)
        params = dict(self.params)
        if len(entries) > 1 and self.seek_primary:
            if params.get("target_session_attrs") not in _PRIMARY_ATTRS:
                params["target_session_attrs"] = "primary"
        elif len(entries) == 1 and len(self.hosts) > 1:
            params.pop("target_session_attrs", None)  # one host: nothing to choose
        return params, entries

    # -- connecting ---------------------------------------------------------

    def connect(self):
        """
        @return: a Deferred firing with the open L{HermesConnection},
            connecting first if needed.  When no connection can be made it
            fails with libpq's C{psycopg2.OperationalError} (first line,
            secrets removed), or L{hermes_tx.exceptions.ConnectFailedError}
            (timed out, a host name that does not resolve).
        """
        if self.is_connected:
            return defer.succeed(self.connection)
        if self._attempt is not None:
            return self._attempt.wait()
        attempt = self._attempt = ConnectAttempt(self)
        waited = attempt.wait()
        attempt.start()  # may settle at once
        return waited

    def attempt_done(self, attempt, conn):
        if attempt is not self._attempt:
            return
        self._attempt = None
        if conn is not None:
            self.connection = conn
            conn.notify_on_lost(lambda reason: self._lost(conn))

    def _lost(self, conn):
        # Only the current connection: a connection closed and replaced
        # already must not clear its successor.
        if conn is self.connection:
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
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.abandon()
        return defer.succeed(None)

    # -- queries ------------------------------------------------------------

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
