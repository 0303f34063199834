# -*- test-case-name: tests.test_listeners -*-
"""
L{PostgresNotificationListener}: LISTEN on PostgreSQL channels and queue
every notification as an L{Event} (see L{hermes_tx.events} for the start,
notification and resync kinds), reconnecting when the connection is lost.
"""

from collections import Counter
from operator import attrgetter

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from hermes_tx import strategies
from hermes_tx.channels import listen_statement, validate_channels
from hermes_tx.components import Component, ComponentError
from hermes_tx.events import PAYLOAD_FORMATS, Event, decode_json_payload
from hermes_tx.exceptions import (
    ConnectionLostError,
    InvalidConfigurationException,
    StandbyServerError,
    one_line,
)
from hermes_tx.liveness import LivenessProbe
from hermes_tx.queues import EventQueue

STOPPED, CONNECTING, LISTENING, WAITING = "stopped", "connecting", "listening", "waiting"

_channel_of = attrgetter("channel")


class PostgresNotificationListener(Component):
    """
    A component that LISTENs and queues L{Event}s.  It owns its connector's
    connection: do not share the connector.

    When the connection is lost it reconnects (first retry within 0.1 s,
    doubling up to C{backoff_limit} seconds, with jitter; the count resets
    once a connection has lasted C{stable_after} seconds), LISTENs again and
    queues a C{"resync"} event.  A liveness probe (C{SELECT 1} every
    C{liveness_interval} seconds) declares a connection dead that does not
    answer within C{liveness_timeout} seconds.

    @ivar state: C{"stopped"}, C{"connecting"}, C{"listening"} or
        C{"waiting"} (for a reconnect).
    """

    log = Logger()

    def __init__(
        self,
        pg_connector,
        notif_channel,
        notif_queue=None,
        error_strategy=None,
        error_queue=None,
        fire_on_start=True,
        backoff_limit=16,
        clock=None,
        stable_after=10.0,
        liveness_timeout=10.0,
        liveness_interval=1.0,
        payload_format="text",
    ):
        """
        @param pg_connector: a L{hermes_tx.connectors.PostgresConnector}.
        @param notif_channel: a channel name or a list of them.
        @param notif_queue: where L{Event}s go: an
            L{hermes_tx.queues.EventQueue} (whose bound pauses reading when
            full) or a C{DeferredQueue}; C{None} lets the Client wire it (or,
            at start, makes an unbounded EventQueue).
        @param error_strategy: classifies connection errors; C{None} means
            L{strategies.CommonErrorStrategy}.
        @param error_queue: where a terminating listener reports.
        @param fire_on_start: queue a C{"start"} event when listening first
            begins.
        @param backoff_limit: the longest wait between reconnects, seconds.
        @param clock: an C{IReactorTime}; C{None} means the reactor.
        @param stable_after: seconds a connection must last before the
            reconnect backoff starts again from the shortest delay.
        @param liveness_timeout: seconds a liveness probe may go unanswered
            before the connection is declared dead (C{None}: no probe).
        @param liveness_interval: seconds between liveness probes.
        @param payload_format: C{"text"} (payloads as sent) or C{"json"}
            (also decode each payload into C{event.data}; one that does not
            decode is logged and delivered with C{event.decode_error}).
        @raise InvalidConfigurationException: a channel name or the payload
            format is invalid.
        """
        Component.__init__(
            self,
            error_strategy=error_strategy,
            error_queue=error_queue,
            backoff_limit=backoff_limit,
            clock=clock,
        )
        self.pg_connector = pg_connector
        self.channels = validate_channels(notif_channel)
        self.notif_queue = notif_queue
        self.fire_on_start = fire_on_start
        self.stable_after = stable_after
        self.liveness_timeout = liveness_timeout
        self.liveness_interval = liveness_interval
        if payload_format not in PAYLOAD_FORMATS:
            raise InvalidConfigurationException(
                f"payload format must be 'text' or 'json', not {payload_format!r}"
            )
        self.payload_format = payload_format
        self.state = STOPPED
        self._probe = None
        #: C{None}, or a callable given each connection error as it happens
        #: (a L{hermes_tx.client.Client} sets it to check the server's role).
        self.on_trouble = None
        self._listened_before = False
        self._listening_since = None
        self._retry = None
        #: notifications received, by channel (for metrics)
        self.received = Counter()
        #: reconnect attempts and resync events so far (for metrics)
        self.reconnects = 0
        self.resyncs = 0
        #: times reading paused because the queue was full (back-pressure)
        self.pauses = 0
        #: when the last notification arrived (clock seconds), or None
        self.last_notification_at = None

    @property
    def is_listening(self):
        return self.state == LISTENING

    def reconnect_delay(self):
        """
        @return: seconds to wait before the next reconnect, counting it.
        """
        policy = strategies.backoff_policy(initial=0.1, factor=2.0, max_delay=self.backoff_limit)
        delay = policy(self._backoff_attempts)
        self._backoff_attempts += 1
        return delay

    # -- IService -----------------------------------------------------------

    def startService(self):
        service.Service.startService(self)
        if self.notif_queue is None:
            self.notif_queue = EventQueue()
        self._begin_run()
        d = defer.maybeDeferred(self.set_up)
        d.addCallbacks(lambda _: self._listen(), self._run_failed)

    def stopService(self):
        """
        Stop listening: close the connection and C{tear_down()}.

        @return: a Deferred that fires when done.
        """
        service.Service.stopService(self)
        self._stopping = True
        self._drop_connection(STOPPED)
        if self._run_done is not None and not self._run_done.called:
            self._finish_run(None)
        return self.join()

    def terminate(self, report):
        Component.terminate(self, report)
        self._drop_connection(STOPPED)

    def _drop_connection(self, state):
        # One place that ends a connection's life: its timers and itself.
        self.state = state
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._probe is not None:
            self._probe.stop()
            self._probe = None
        self.pg_connector.disconnect()

    # -- connecting and listening -------------------------------------------

    def _listen(self):
        self._retry = None
        if self._stopping:
            return
        self.state = CONNECTING
        d = self.pg_connector.connect()
        d.addCallback(self._issue_listen)
        d.addCallbacks(self._listening, self._listen_failed)

    def _issue_listen(self, conn):
        if self._stopping:
            self.pg_connector.disconnect()
            return None
        # Set the sink before LISTEN so nothing that arrives with its reply
        # is missed.
        conn.notify_sink = self._on_notifies
        conn.notify_on_lost(self._connection_lost)
        # A standby answers LISTEN with an error every time (SQLSTATE 25006):
        # ask its role first, on the same connection, and never LISTEN there.
        d = conn.runQuery("SELECT pg_is_in_recovery()")

        def listen(rows):
            if rows[0][0]:
                raise StandbyServerError("the server is a standby; not listening there")
            return conn.runOperation(listen_statement(self.channels))

        return d.addCallback(listen).addCallback(lambda _: conn)

    def _listening(self, conn):
        if self._stopping or conn is None or self.state != CONNECTING:
            return
        self.state = LISTENING
        self._listening_since = self.clock.seconds()
        if self.liveness_timeout is not None:
            self._probe = LivenessProbe(
                self.clock,
                lambda: conn.runQuery("SELECT 1"),
                self._probe_unanswered,
                interval=self.liveness_interval,
                timeout=self.liveness_timeout,
                activity=lambda: self.last_notification_at,
            )
            self._probe.start()
        first = not self._listened_before
        self._listened_before = True
        self.log.info(
            "{ident}: listening on {channels}",
            ident=self.ident, channels=", ".join(repr(c) for c in self.channels),
        )
        if not first:
            self.resyncs += 1
            self.notif_queue.put(Event("resync", received_at=self._listening_since))
        elif self.fire_on_start:
            self.notif_queue.put(Event("start", received_at=self._listening_since))

    def _listen_failed(self, failure):
        if not self._stopping and self.state == CONNECTING:
            self._handle_loss(failure.value)

    def _connection_lost(self, reason):
        if not self._stopping and self.state in (CONNECTING, LISTENING):
            self._handle_loss(reason.value)

    def _probe_unanswered(self):
        if not self._stopping and self.state == LISTENING:
            self._handle_loss(ConnectionLostError(
                f"no answer to the liveness probe within {self.liveness_timeout:g} s"
            ))

    def _handle_loss(self, error):
        if self.state == LISTENING and (
            self.clock.seconds() - self._listening_since >= self.stable_after
        ):
            self._backoff_attempts = 0
        self._drop_connection(WAITING)
        if self.on_trouble is not None:
            self.on_trouble(error)
        expected, action = self.error_strategy.handle_exception(error)
        if action in (strategies.BACKOFF, strategies.CONTINUE):
            delay = self.reconnect_delay()
            self.log.warn(
                "{ident}: {error}; reconnecting in {delay:.2f} s",
                ident=self.ident, error=one_line(error), delay=delay,
            )
            self.reconnects += 1
            self._retry = self.clock.callLater(delay, self._listen)
        else:
            self.log.warn("{ident}: terminated by {error}", ident=self.ident, error=one_line(error))
            self.terminate(ComponentError(expected, action, self, error))

    def _on_notifies(self, batch):
        # The hot path, once per socket read: one clock read, one Event per
        # notification (a comprehension), counting in C (Counter.update),
        # one hand-over to the queue.
        now = self.last_notification_at = self.clock.seconds()
        events = [Event("notification", n.channel, n.payload, n.pid, now) for n in batch]
        if len(self.channels) == 1:
            self.received[self.channels[0]] += len(events)
        else:
            self.received.update(map(_channel_of, batch))
        if self.payload_format == "json":
            self._decode(events)
        queue = self.notif_queue
        if hasattr(queue, "put_many"):
            queue.put_many(events)
            if queue.is_full and self.state == LISTENING:
                self._pause()
        else:
            for event in events:
                queue.put(event)

    def _decode(self, events):
        for event in events:
            if not decode_json_payload(event):
                self.log.warn(
                    "{ident}: payload on channel {channel!r} is not JSON ({error}); "
                    "delivered with decode_error set",
                    ident=self.ident, channel=event.channel, error=event.decode_error,
                )

    def _pause(self):
        # Back-pressure: the processor is behind.  Stop reading; the server
        # keeps the notifications, so nothing is lost and no resync is due.
        conn = self.pg_connector.connection
        if conn is None or conn._paused:
            return
        conn.pause_reading()
        self.pauses += 1
        if self._probe is not None:
            self._probe.stop()  # a probe's reply would read the whole backlog
        self.notif_queue.on_space(lambda: self._resume(conn))

    def _resume(self, conn):
        if conn is not self.pg_connector.connection or self.state != LISTENING:
            return
        if self._probe is not None:
            self._probe.start()
        conn.resume_reading()
