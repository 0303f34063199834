# -*- test-case-name: tests.test_client_memory,tests.test_listeners -*-
"""
L{ListenRun}: one connection's life of a
L{hermes_tx.listeners.PostgresNotificationListener}: connect, check on that
very connection that the server is not a standby, LISTEN, deliver (pausing
for back-pressure, probing for liveness), until the connection is lost or
the listener stops.
"""

from hermes_tx.exceptions import ConnectionLostError
from hermes_tx.postgres.channels import listen_statement
from hermes_tx.postgres.liveness import LivenessProbe
from hermes_tx.sources.run import ConnectionRun

CONNECTING, LISTENING = "connecting", "listening"


class ListenRun(ConnectionRun):
    """
    One connection's life: connecting, listening, ended.  It owns the
    connection, its liveness probe and its back-pressure pause.

    @ivar state: C{"connecting"}, C{"listening"} or C{"ended"}.
    """

    purpose = "listening"

    def __init__(self, listener):
        ConnectionRun.__init__(self, listener)
        self.listener = listener
        self._probe = None
        self._paused = False

    def _listen_statement(self):
        return listen_statement(self.listener.channels)

    def _working(self, conn):
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

    def _probe_unanswered(self):
        if self.state == LISTENING:
            self._loss(ConnectionLostError(
                f"no answer to the liveness probe within {self.listener.liveness_timeout:g} s"
            ))

    def _close(self):
        if self._probe is not None:
            self._probe.stop()
            self._probe = None
        ConnectionRun._close(self)

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
