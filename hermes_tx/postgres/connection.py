# -*- test-case-name: tests.test_connectors,tests.test_sink_nats -*-
"""
L{HermesConnection}: a txpostgres connection with its sharp edges filed
down.

txpostgres 1.7.0 (unmaintained since 2019) works under current Twisted, but
raises out of the reactor after a terminated backend, dispatches each
notification through a Cooperator, cannot pause reading, and trips over
libpq replacing its socket while connecting (so connecting is done here,
with L{hermes_tx.postgres.socketwait}, and txpostgres gets the established connection).  Each workaround below is marked
"txpostgres workaround" and covered by tests.test_connectors and
tests.test_faults.  txpostgres registers a query's cursor on its
connection's socket, which only a reactor keeping a descriptor's first
registration (epoll) forgives; the workarounds keep one registration per
socket, so hermes also runs on Twisted's asyncio reactor (which the NATS
sink needs), tested by tests.sink_nats_asyncio.
"""

import psycopg2
from twisted.internet import defer, main
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import txpostgres

from hermes_tx.exceptions import ConnectionLostError
from hermes_tx.postgres.socketwait import poll_steps, wait_steps


class HermesCursor(txpostgres.Cursor):
    """
    txpostgres workaround: its cursors turn every C{QueryCanceledError}
    into a bare C{defer.CancelledError}, also a statement the server cut
    short on its own (the role's C{statement_timeout},
    C{pg_cancel_backend}: SQLSTATE 57014), so the server's message is lost
    and the error looks like a cancellation of ours.  This cursor keeps the
    server's error unless the query's Deferred was cancelled (then it is
    a C{CancelledError}, as txpostgres documents).
    """

    #: the query's Deferred that we cancelled, if any
    _cancelled_query = None

    def _cancel(self, d):
        self._cancelled_query = d
        return txpostgres.Cursor._cancel(self, d)

    def _handleCancellation(self, f):
        if self._cancelled_query is not None:
            return txpostgres.Cursor._handleCancellation(self, f)
        return f


class HermesConnection(txpostgres.Connection):
    """
    A txpostgres connection that reports its own death and hands NOTIFYs over
    in batches.

    @ivar notify_sink: C{None}, or a callable given each batch of
        C{psycopg2.extensions.Notify} (a list, in arrival order) as soon as
        the socket is read.  When set it replaces the observers.
    """

    log = Logger()
    cursorFactory = HermesCursor

    def __init__(self, reactor=None):
        txpostgres.Connection.__init__(self, reactor=reactor)
        self.notify_sink = None
        self._lost_observers = []
        self._closing = False
        self._gone = False
        self._established = False
        self._paused = False
        self._waiter = None  # the pgwait.StepWaiter while connecting

    def connect(self, dsn, cursor_factory=None):
        """
        Connect asynchronously, following libpq's socket.

        txpostgres workaround: its C{connect} registers this object with the
        reactor while libpq is still connecting, and this object's
        C{fileno()} is whatever socket libpq has I{now}; with a multi-host
        DSN libpq closes one host's socket and opens the next host's inside
        C{PQconnectPoll}, leaving the reactor with a descriptor libpq closed
        (C{EBADF}, or a new socket with the same number never polled).  So
        the connection is made with L{hermes_tx.postgres.socketwait} (one registration
        per wait, removed before each poll) and only the established
        connection, whose socket no longer changes, is handed to txpostgres.

        @param dsn: the libpq connection string.
        @param cursor_factory: the psycopg2 cursor class, or C{None}.
        @return: a Deferred firing with this connection once established.
        """
        if self._connection is not None:
            return defer.fail(txpostgres.AlreadyConnected())
        try:
            self._connection = psycopg2.connect(dsn, async_=True, cursor_factory=cursor_factory)
        except Exception:
            return defer.fail()
        self._waiter = wait_steps(self.reactor, poll_steps(self._connection))
        return self._waiter.done.addCallback(self._established_now)

    def _established_now(self, _):
        self._waiter = None
        self._established = True
        # From here on txpostgres reads the socket: notifications and queries.
        self.reactor.addReader(self)
        return self

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
        if self._waiter is not None:
            # Still connecting: drop the registration before the socket.
            waiter, self._waiter = self._waiter, None
            waiter.cancel()
        if self._connection is None:
            return
        # txpostgres workaround: its close() lets removeReader/removeWriter
        # raise when libpq has dropped or replaced its socket (a stale epoll
        # registration), hiding the error that made us close.
        # A query's cursor is registered on the same socket: a reactor that
        # tracks registrations per object (the asyncio reactor) keeps it
        # after the connection's own is gone.
        for pollable in [self] + list(self._cursors):
            for remove in (self.reactor.removeReader, self.reactor.removeWriter):
                try:
                    remove(pollable)
                except (OSError, ValueError, KeyError):
                    pass
        if not self._connection.closed:
            self._connection.close()
        done = Failure(main.CONNECTION_DONE)
        for cursor in set(self._cursors):
            cursor.connectionLost(done)
        self.connectionLost(done)

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
        except (OSError, ValueError, KeyError):
            # txpostgres workaround: when libpq drops the socket of an
            # established connection (fileno() is -1) while psycopg2 still
            # says open, txpostgres's re-adding the reader raises out of
            # epoll.  Nothing is left to poll: fail whatever waits and report
            # the connection lost.
            return self._abandon(ConnectionLostError("the server closed the connection"))

    def _doRead(self):
        # txpostgres.Connection.doRead, except that the connection reads
        # again only when no cursor does and no sink paused reading.
        # txpostgres re-adds it as a reader after delivering notifications
        # even when an observer started a query meanwhile, whose cursor now
        # waits on the same socket: a reactor that keeps a descriptor's
        # first registration (epoll) ignores that, one that keeps the last
        # (the asyncio reactor: one callback per descriptor) hands the
        # query's answer to the connection, and the query never ends.
        # cursorFinished and resume_reading add the connection back.
        self.reactor.removeReader(self)
        if not self._connection.closed:
            self.continuePolling()
        self.checkForNotifies()
        if not self._connection.closed and not self._cursors and not self._paused:
            self.reactor.addReader(self)
        return None

    def _abandon(self, error):
        waiting, self._pollingD = self._pollingD, None
        if not self._connection.closed:
            self._connection.close()
        if waiting is not None:
            self.reactor.callLater(0, waiting.errback, Failure(error))
        return error

    def connectionLost(self, reason):
        txpostgres.Connection.connectionLost(self, reason)
        # Only an established connection can be lost: a failed connect fails
        # connect's Deferred, and close() while connecting is not news.
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
