# -*- test-case-name: tests.test_client_memory,tests.test_listeners -*-
"""
L{ListenRun}: one connection's life of a
L{hermes_tx.listeners.PostgresNotificationListener}: connect, check on that
very connection that the server is not a standby, LISTEN, deliver (pausing
for back-pressure, probing for liveness, proving that the LISTEN hears),
until the connection is lost or the listener stops.
"""

from operator import attrgetter

from hermes_tx.exceptions import ConnectionLostError
from hermes_tx.postgres.channels import listen_statement
from hermes_tx.postgres.liveness import LivenessProbe
from hermes_tx.sources.listencheck import ListenCheck, sift
from hermes_tx.sources.run import ConnectionRun

CONNECTING, LISTENING = "connecting", "listening"

_channel_of = attrgetter("channel")


class ListenRun(ConnectionRun):
    """
    One connection's life: connecting, listening, ended.  It owns the
    connection, its liveness probe, its back-pressure pause and its
    L{ListenCheck} (which LISTENs on the listener's private
    C{check_channel} too, and keeps what arrives there from the queue).

    @ivar state: C{"connecting"}, C{"listening"} or C{"ended"}.
    """

    purpose = "listening"

    def __init__(self, listener):
        ConnectionRun.__init__(self, listener)
        self.listener = listener
        self._probe = None
        self._paused = False
        self._private = listener.check_channel  # None: no listen check
        self._check = None
        self._own_pid = None

    def _listen_statement(self):
        channels = self.listener.channels
        if self._private is not None:
            channels = channels + [self._private]
        return listen_statement(channels)

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
        if self._private is not None:
            # Through a proxy this is the proxy's key, not a server pid: all
            # that matters is that hermes NOTIFYs nothing on this connection.
            self._own_pid = conn.get_backend_pid()
            self._check = ListenCheck(
                listener.clock, listener.listen_probe, self._private,
                listener.listen_heard, listener.listen_deaf, listener.listen_unproven,
                interval=listener.listen_check_interval, timeout=listener.listen_check_timeout,
            )
        listener._began_listening(listener.clock.seconds())
        self.on_ready()
        if self._check is not None and self.state == LISTENING:
            self._check.start()

    def _probe_unanswered(self):
        if self.state == LISTENING:
            self._loss(ConnectionLostError(
                f"no answer to the liveness probe within {self.listener.liveness_timeout:g} s"
            ))

    def _close(self):
        if self._probe is not None:
            self._probe.stop()
            self._probe = None
        if self._check is not None:
            self._check.stop()
        ConnectionRun._close(self)

    # -- notifications and back-pressure --------------------------------------

    def _notifies(self, batch):
        private = self._private
        check = self._check
        if private is not None and private in map(_channel_of, batch):
            # The listen check's probes: never the processor's.
            batch, payloads = sift(batch, private)
            if check is not None:
                for payload in payloads:
                    check.received(payload)
            if not batch:
                return
        if check is not None and batch[-1].pid != self._own_pid:
            check.others_heard()
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
        if self._check is not None:
            self._check.pause()  # its notification cannot be read meanwhile
        self.listener.notif_queue.on_space(self._resume)

    def _resume(self):
        if self.state != LISTENING or not self._paused:
            return
        self._paused = False
        if self._probe is not None:
            self._probe.start()
        if self._check is not None:
            self._check.resume()
        self.conn.resume_reading()
