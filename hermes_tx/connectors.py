# -*- test-case-name: tests.test_connectors -*-
"""
L{PostgresConnector}: one asynchronous PostgreSQL connection, made and
remade on demand, over txpostgres.

txpostgres 1.7.0 (unmaintained since 2019) works under current Twisted but
has sharp edges; L{HermesConnection} subclasses its C{Connection} to file
them down.  Each workaround is marked "txpostgres workaround" below.
"""

import psycopg2
import psycopg2.extras
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import txpostgres

from hermes_tx import dsn as dsnlib
from hermes_tx.exceptions import ConnectionLostError


class HermesConnection(txpostgres.Connection):
    """
    A txpostgres connection that reports its own death and hands NOTIFYs over
    in batches.

    @ivar notify_sink: C{None}, or a callable given each batch of
        C{psycopg2.extensions.Notify} (a list, in arrival order) as soon as
        the socket is read.  When set it replaces the observers.
    """

    log = Logger()

    def __init__(self, reactor=None):
        txpostgres.Connection.__init__(self, reactor=reactor)
        self.notify_sink = None
        self._lost_observers = []
        self._closing = False
        self._gone = False
        self._established = False
        self._paused = False

    def connect(self, *args, **kwargs):
        d = txpostgres.Connection.connect(self, *args, **kwargs)

        def established(result):
            self._established = True
            return result

        return d.addCallback(established)

    def notify_on_lost(self, observer):
        """
        Call C{observer(failure)} once if the connection is lost by anything
        but L{close}: backend terminated, server down, network gone.
        """
        self._lost_observers.append(observer)

    @property
    def is_open(self):
        """
        True while the connection is usable as far as we know.
        """
        return self._connection is not None and not self._connection.closed and not self._gone

    def close(self):
        """
        Close the connection on purpose: lost observers are not called.
        """
        self._closing = True
        if self._connection is not None:
            txpostgres.Connection.close(self)

    def pause_reading(self):
        """
        Stop reading from the socket (back-pressure): PostgreSQL keeps what
        arrives meanwhile.
        """
        self._paused = True
        self.reactor.removeReader(self)

    def resume_reading(self):
        """
        Read again after L{pause_reading}, delivering first what a query's
        reply brought in meanwhile.
        """
        self._paused = False
        if self.is_open:
            self.reactor.addReader(self)
            self.checkForNotifies()

    def doRead(self):
        try:
            return self._doRead()
        except psycopg2.Error as e:
            # txpostgres workaround: when no query is waiting, txpostgres
            # re-raises poll() errors out of doRead (the FATAL a terminated
            # backend sends, "server closed the connection unexpectedly"), so
            # the reactor logs "Unhandled Error".  Deliver what arrived before
            # the error, then return it: the reactor then calls
            # connectionLost with it, as it does for any dropped socket.
            self.checkForNotifies()
            return e

    def _doRead(self):
        result = txpostgres.Connection.doRead(self)
        # txpostgres re-adds itself as a reader after every read; a sink that
        # paused reading meanwhile must stay paused.
        if self._paused:
            self.reactor.removeReader(self)
        return result

    def connectionLost(self, reason):
        txpostgres.Connection.connectionLost(self, reason)
        # While connecting, a multi-host DSN makes libpq drop the socket to a
        # host that failed and go on to the next one; the reactor reports
        # that as a lost connection, but polling goes on (a real failure
        # fails connect's Deferred).  Only an established connection can be
        # lost: reporting it earlier left the connection marked gone for
        # good, so its connector leaked it and opened another for every
        # query, and its lost observers were never called.
        if self._established:
            self._report_lost(reason)

    def cursorFinished(self, cursor):
        txpostgres.Connection.cursorFinished(self, cursor)
        if self._paused:
            self.reactor.removeReader(self)  # txpostgres re-added it
        # A connection that dies during a query is seen by the cursor, not by
        # our doRead: psycopg2 marks it closed and the query's Deferred fails.
        if self._connection.closed:
            self._report_lost(Failure(ConnectionLostError("connection lost during a query")))

    def _report_lost(self, reason):
        if self._gone:
            return
        self._gone = True
        if self._closing:
            return
        for observer in self._lost_observers:
            try:
                observer(reason)
            except Exception:
                self.log.failure("connection-lost observer failed")

    def checkForNotifies(self):
        # txpostgres workaround: the stock method sends every notification
        # through a Cooperator, a maybeDeferred and a callLater (measured at
        # 0.17x a plain psycopg2 loop).  Swap the list out in O(1) and hand
        # the whole batch over directly.
        conn = self._connection
        if conn is None or not conn.notifies:
            return
        batch, conn.notifies = conn.notifies, []
        if self.notify_sink is not None:
            self.notify_sink(batch)
            return
        observers = self.getNotifyObservers()
        for notify in batch:
            for observer in observers:
                try:
                    observer(notify)
                except Exception:
                    self.log.failure("notify observer failed")


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
            elif conn._connection is not None:
                conn.close()
            return failure

        def done(result):
            if timer.active():
                timer.cancel()
            self._pending = None
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(result)

        d = conn.connect(self.dsn, cursor_factory=self.cursor_factory)
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
        if self._pending is not None and self._pending._connection is not None:
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
