# -*- test-case-name: tests.test_client_memory,tests.test_listeners -*-
"""
L{ListenRun}: one connection's life of a
L{hermes_tx.listeners.PostgresNotificationListener}: connect, check on that
very connection that the server is not a standby, LISTEN, deliver (pausing
for back-pressure, probing for liveness), until the connection is lost or
the listener stops.
"""

from hermes_tx import strategies
from hermes_tx.channels import listen_statement
from hermes_tx.exceptions import ConnectionLostError, StandbyServerError
from hermes_tx.liveness import LivenessProbe
from hermes_tx.runs import Run
from hermes_tx.supervisor import LOST, STOPPED, TERMINATED, ComponentError, Outcome

CONNECTING, LISTENING = "connecting", "listening"


class ListenRun(Run):
    """
    One connection's life: connecting, listening, ended.  It owns the
    connection, its liveness probe and its back-pressure pause.

    @ivar state: C{"connecting"}, C{"listening"} or C{"ended"}.
    """

    def __init__(self, listener):
        Run.__init__(self, listener)
        self.listener = listener
        self.connector = listener.pg_connector
        self.state = CONNECTING
        self.conn = None
        self._probe = None
        self._paused = False

    def _work(self):
        d = self.connector.connect()
        d.addCallback(self._issue_listen)
        d.addCallbacks(self._listening, self._failed)

    def _issue_listen(self, conn):
        if self.state != CONNECTING:
            return None
        self.conn = conn
        # Set the sink before LISTEN so nothing that arrives with its reply
        # is missed.
        conn.notify_sink = self._notifies
        conn.notify_on_lost(self._lost)
        # A standby answers LISTEN with an error every time (SQLSTATE 25006):
        # ask its role first, on the same connection, and never LISTEN there.
        d = conn.runQuery("SELECT pg_is_in_recovery()")

        def listen(rows):
            if rows[0][0]:
                raise StandbyServerError("the server is a standby; not listening there")
            return conn.runOperation(listen_statement(self.listener.channels))

        return d.addCallback(listen).addCallback(lambda _: conn)

    def _listening(self, conn):
        if conn is None or self.state != CONNECTING:
            return
        self.state = LISTENING
        listener = self.listener
        if listener.liveness_timeout is not None:
            self._probe = LivenessProbe(
                listener.clock,
                lambda: conn.runQuery("SELECT 1"),
                self._probe_unanswered,
                interval=listener.liveness_interval,
                timeout=listener.liveness_timeout,
                activity=lambda: listener.last_notification_at,
            )
            self._probe.start()
        listener._began_listening(listener.clock.seconds())
        self.on_ready()

    def _failed(self, failure):
        if self.state == CONNECTING:
            self._loss(failure.value)

    def _lost(self, reason):
        if self.state in (CONNECTING, LISTENING):
            self._loss(reason.value)

    def _probe_unanswered(self):
        if self.state == LISTENING:
            self._loss(ConnectionLostError(
                f"no answer to the liveness probe within {self.listener.liveness_timeout:g} s"
            ))

    def _loss(self, error):
        self._close()
        listener = self.listener
        expected, action = listener.error_strategy.handle_exception(error)
        if action in (strategies.BACKOFF, strategies.CONTINUE):
            self.end(Outcome(LOST, error))
        else:
            self.end(Outcome(TERMINATED, error, ComponentError(expected, action, listener, error)))

    def _close(self):
        # One place that ends the connection's life: its timers and itself.
        self.state = "ended"
        if self._probe is not None:
            self._probe.stop()
            self._probe = None
        self.connector.disconnect()

    def _end_work(self):
        self._close()
        self.end(Outcome(STOPPED))

    def _terminate_work(self, report):
        self._close()
        self.end(Outcome(TERMINATED, report.error, report))

    # -- notifications and back-pressure --------------------------------------

    def _notifies(self, batch):
        if self.listener._on_notifies(batch) and self.state == LISTENING:
            self._pause()

    def _pause(self):
        # Back-pressure: the processor is behind.  Stop reading; the server
        # keeps the notifications, so nothing is lost and no resync is due.
        conn = self.conn
        if conn is None or self._paused:
            return
        self._paused = True
        conn.pause_reading()
        self.listener.pauses += 1
        if self._probe is not None:
            self._probe.stop()  # a probe's reply would read the whole backlog
        self.listener.notif_queue.on_space(self._resume)

    def _resume(self):
        if self.state != LISTENING or not self._paused:
            return
        self._paused = False
        if self._probe is not None:
            self._probe.start()
        self.conn.resume_reading()
