# -*- test-case-name: tests.test_connectors -*-
"""
L{ConnectAttempt}: one attempt of a L{hermes_tx.connectors.PostgresConnector}
to connect, owning its name lookups, its libpq connection and its timeout,
so abandoning it (a timeout, a disconnect) leaves nothing behind.
"""

import psycopg2
import psycopg2.extensions
from twisted.internet import defer
from twisted.python.failure import Failure

from hermes_tx.exceptions import ConnectFailedError, ConnectionLostError
from hermes_tx.postgres.connection import HermesConnection
from hermes_tx.postgres.hosts import join_hosts, resolve_entries


class ConnectAttempt:
    """
    One attempt to connect: look the host names up, let libpq connect (to
    the pinned host, or seeking a primary among all), give up after the
    connector's C{connect_timeout}.
    """

    def __init__(self, connector):
        self.connector = connector
        self.reactor = connector.reactor
        self._waiters = []
        self._conn = None
        self._timer = None
        self._result = None  # the connection or a Failure, once known

    def wait(self):
        d = defer.Deferred()
        if self._result is not None:
            d.callback(self._result)
        else:
            self._waiters.append(d)
        return d

    def start(self):
        self._timer = self.reactor.callLater(self.connector.connect_timeout, self._time_out)
        params, entries = self.connector.attempt_params()
        d = resolve_entries(entries, self.connector.resolve)
        d.addCallback(self._resolved, params)
        d.addErrback(self._failed)

    def _resolved(self, found, params):
        if self._result is not None:
            return  # abandoned or timed out during the lookups
        entries, unresolved = found
        if not entries:
            names = ", ".join(repr(n) for n in unresolved)
            raise ConnectFailedError(f"could not translate host name {names} to an address")
        self._conn = HermesConnection(reactor=self.reactor)
        libpq_dsn = psycopg2.extensions.make_dsn(**join_hosts(params, entries))
        d = self._conn.connect(libpq_dsn, cursor_factory=self.connector.cursor_factory)
        d.addCallbacks(self._connected, self._failed)

    def _connected(self, conn):
        self._settle(conn)

    def _failed(self, failure):
        if self._result is not None:
            return
        error = failure.value
        text = str(error).strip().splitlines()
        text = self.connector.scrub(text[0] if text else type(error).__name__)
        if isinstance(error, defer.CancelledError):
            error = ConnectionLostError("connection attempt abandoned")
        elif isinstance(error, psycopg2.Error):
            # The same class libpq's failure had (its SQLSTATE is None for
            # connection failures), with the secrets taken out.
            error = type(error)(text)
        elif isinstance(error, ConnectionLostError):
            error = type(error)(text)
        else:
            error = ConnectFailedError(text)
        self._settle(Failure(error))

    def _time_out(self):
        self._timer = None
        self._settle(Failure(ConnectFailedError(
            f"no connection within {self.connector.connect_timeout:g} s"
        )))

    def abandon(self):
        """
        Give up: close what was opened; waiters fail.
        """
        self._settle(Failure(ConnectionLostError("connection attempt abandoned")))

    def _settle(self, result):
        if self._result is not None:
            return
        self._result = result
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if isinstance(result, Failure) and self._conn is not None:
            self._conn.close()
        self.connector.attempt_done(self, None if isinstance(result, Failure) else result)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(result)
