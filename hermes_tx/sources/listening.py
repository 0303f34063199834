# -*- test-case-name: tests.test_client_memory,tests.test_listeners,tests.test_listencheck -*-
"""
L{ListenRun}: one connection's life of a
L{hermes_tx.listeners.PostgresNotificationListener}: connect, check on that
very connection that the server is not a standby, LISTEN, deliver (pausing
for back-pressure, probing for liveness, proving that the LISTEN hears),
until the connection is lost or the listener stops.
"""

from hermes_tx.exceptions import ConnectionLostError
from hermes_tx.postgres.channels import listen_statement
from hermes_tx.postgres.liveness import LivenessProbe
from hermes_tx.sources.run import ConnectionRun

CONNECTING, LISTENING = "connecting", "listening"


class ListenRun(ConnectionRun):
    """
    One connection's life (see L{ConnectionRun}): it owns the connection's
    liveness probe, its back-pressure pause and its L{ListenCheck} (which
    LISTENs on the listener's private C{check_channel} too, and keeps what
    arrives there from the queue).

    @ivar state: C{"connecting"}, C{"listening"}, C{"stopping"} or
        C{"ended"}.
    """

    purpose = "listening"
    working_state = LISTENING

    def __init__(self, listener):
        ConnectionRun.__init__(self, listener)
        self.listener = listener
        self._probe = None
        self._paused_conn = None  # the connection whose reading is paused
        self._check = None
        self._own_pid = None

    def listen_statement(self):
        channels = self.listener.channels
        private = self.listener.hearing.channel
        if private is not None:
            channels = channels + [private]
        return listen_statement(channels)

    def start_working(self, session):
        listener = self.listener
        if listener.liveness_timeout is not None:
            self._probe = LivenessProbe(
                listener.clock,
                lambda: session.query("SELECT 1"),
                self._probe_unanswered,
                interval=listener.liveness_interval,
                timeout=listener.liveness_timeout,
                activity=lambda: listener.last_notification_at,
            )
            self._probe.start()
        self._check = listener.hearing.check()
        if self._check is not None:
            # Through a proxy this is the proxy's key, not a server pid: all
            # that matters is that hermes NOTIFYs nothing on this connection.
            self._own_pid = session.conn.get_backend_pid()
        listener.began_listening(listener.clock.seconds())
        self.on_ready()
        if self._check is not None and self.is_working:
            self._check.start()

    def _probe_unanswered(self):
        self.lose(ConnectionLostError(
            f"no answer to the liveness probe within {self.listener.liveness_timeout:g} s"
        ))

    def stop_working(self):
        if self._probe is not None:
            self._probe.stop()
            self._probe = None
        if self._check is not None:
            self._check.stop()
        self._paused_conn = None

    # -- notifications and back-pressure --------------------------------------

    def notifies(self, batch):
        batch = self.listener.hearing.sift(batch, self._check, self._own_pid)
        if batch and self.listener.receive(batch) and self.is_working:
            self._pause()

    def _pause(self):
        # Back-pressure: the processor is behind.  Stop reading; the server
        # keeps the notifications, so nothing is lost and no resync is due.
        conn = self.session.conn
        if self._paused_conn is conn:
            return
        self._paused_conn = conn
        conn.pause_reading()
        self.listener.pauses += 1
        if self._probe is not None:
            self._probe.stop()  # a probe's reply would read the whole backlog
        if self._check is not None:
            self._check.pause()  # its notification cannot be read meanwhile
        self.listener.queue.on_space(self._resume)

    def _resume(self):
        conn, self._paused_conn = self._paused_conn, None
        if conn is None or not self.is_working:
            return
        if self._probe is not None:
            self._probe.start()
        if self._check is not None:
            self._check.resume()
        conn.resume_reading()
