# -*- test-case-name: tests.test_listeners,tests.test_outbox_consumer -*-
"""
L{ConnectionRun}: a source's run: one connection, from connect (and the
check that it is not a standby) to its loss.
"""

from hermes_tx import strategies
from hermes_tx.exceptions import StandbyServerError
from hermes_tx.runtime.run import Run
from hermes_tx.runtime.supervisor import (
    LOST,
    STOPPED,
    TERMINATED,
    ComponentError,
    Outcome,
)


class ConnectionRun(Run):
    """
    One connection of a L{hermes_tx.sources.component.ConnectedComponent}: connect,
    check on that very connection that the server is not a standby, LISTEN,
    then work (the subclass) until the connection is lost or the component
    stops.  The subclass implements L{_working} and may extend L{_close}.

    @ivar state: C{"connecting"}, the subclass's working state, or
        C{"ended"}.
    @ivar conn: the connection, once made.
    """

    #: what a standby is refused for, in the loss's message
    purpose = "working"

    def __init__(self, component):
        Run.__init__(self, component)
        self.state = "connecting"
        self.conn = None

    def _work(self):
        d = self.component.pg_connector.connect()
        d.addCallback(self._prepare)
        d.addCallbacks(self._prepared, self._failed)

    def _listen_statement(self):
        """
        @return: the statement LISTENing for what wakes this run.
        """
        raise NotImplementedError

    def _notifies(self, batch):
        """
        Notifications arrived (a list of psycopg2 C{Notify}).
        """

    def _prepare(self, conn):
        if self.state != "connecting":
            return None
        self.conn = conn
        # Set the sink before LISTEN so nothing that arrives with its reply
        # is missed.
        conn.notify_sink = self._notifies
        conn.notify_on_lost(lambda reason: self._loss(reason.value))
        # A standby answers LISTEN (and writes) with an error every time
        # (SQLSTATE 25006): ask its role first, on the same connection.
        d = conn.runQuery("SELECT pg_is_in_recovery()")

        def listen(rows):
            if rows[0][0]:
                raise StandbyServerError(f"the server is a standby; not {self.purpose} there")
            return conn.runOperation(self._listen_statement())

        return d.addCallback(listen).addCallback(lambda _: conn)

    def _prepared(self, conn):
        if conn is not None and self.state == "connecting":
            self._working(conn)

    def _working(self, conn):
        """
        The connection is made and LISTENing: set C{state}, start working,
        call C{on_ready}.
        """
        raise NotImplementedError

    def _failed(self, failure):
        if self.state == "connecting":
            self._loss(failure.value)

    def _loss(self, error):
        """
        The connection went (or could not be made): end the run, lost (to
        be retried) or terminated, as the error strategy says.
        """
        if self.state == "ended" or self._tearing_down:
            return
        self._close()
        component = self.component
        expected, action = component.error_strategy.handle_exception(error)
        if action in (strategies.BACKOFF, strategies.CONTINUE):
            self.end(Outcome(LOST, error))
        else:
            self.end(Outcome(TERMINATED, error, ComponentError(expected, action, component, error)))

    def _close(self):
        """
        End the connection's life (a subclass stops its timers first).
        """
        self.state = "ended"
        self.component.pg_connector.disconnect()

    def _end_work(self):
        self._close()
        self.end(Outcome(STOPPED))

    def _terminate_work(self, report):
        self._close()
        self.end(Outcome(TERMINATED, report.error, report))
