# -*- test-case-name: tests.test_listeners -*-
"""
L{PostgresNotificationListener}: LISTEN on PostgreSQL channels and queue
every notification, reconnecting when the connection is lost.

Items on the queue are L{Event}s.  C{kind} is:
  - C{"notification"}: one NOTIFY, with C{channel}, C{payload}, C{pid};
  - C{"start"}: listening has begun (when C{fire_on_start}); work done while
    nobody listened can be caught up now;
  - C{"resync"}: listening has begun again after a lost connection.
    PostgreSQL keeps nothing for absent listeners, so notifications sent
    during the gap are gone: re-scan whatever they would have told you.
"""

from psycopg2 import sql
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from hermes_tx import strategies
from hermes_tx.components import Component, ComponentError, _one_line
from hermes_tx.exceptions import InvalidConfigurationException, StandbyServerError

#: PostgreSQL truncates identifiers longer than this many bytes (NAMEDATALEN-1).
MAX_CHANNEL_BYTES = 63

STOPPED, CONNECTING, LISTENING, WAITING = "stopped", "connecting", "listening", "waiting"


class Event:
    """
    One item on a listener's queue.

    @ivar kind: C{"notification"}, C{"start"} or C{"resync"}.
    @ivar channel: the channel name, exactly as sent (C{None} for start and
        resync).
    @ivar payload: the payload text (C{""} when none was sent; C{None} for
        start and resync).
    @ivar pid: the process id of the notifying backend (C{None} for start and
        resync).
    @ivar received_at: when the listener read it, in seconds since the epoch
        (from the listener's clock).
    """

    __slots__ = ("kind", "channel", "payload", "pid", "received_at")

    def __init__(self, kind, channel=None, payload=None, pid=None, received_at=None):
        self.kind = kind
        self.channel = channel
        self.payload = payload
        self.pid = pid
        self.received_at = received_at

    def as_dict(self):
        """
        @return: the event as a dict with keys C{kind}, C{channel},
            C{payload}, C{pid}, C{received_at}.
        """
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self):
        return f"<Event {self.kind} {self.channel!r} {self.payload!r} pid={self.pid}>"


def validate_channels(notif_channel):
    """
    @param notif_channel: one channel name or a list of them.
    @return: the names as a list, duplicates removed, order kept.
    @raise InvalidConfigurationException: a name is not a non-empty string
        of at most 63 bytes (UTF-8) without NUL.
    """
    names = [notif_channel] if isinstance(notif_channel, str) else list(notif_channel or ())
    if not names:
        raise InvalidConfigurationException("at least one channel is required")
    for name in names:
        if not isinstance(name, str) or not name:
            raise InvalidConfigurationException(f"channel name must be a non-empty string: {name!r}")
        if "\x00" in name:
            raise InvalidConfigurationException(f"channel name contains NUL: {name!r}")
        size = len(name.encode("utf-8"))
        if size > MAX_CHANNEL_BYTES:
            raise InvalidConfigurationException(
                f"channel name is {size} bytes, PostgreSQL allows {MAX_CHANNEL_BYTES}: {name!r}"
            )
    return list(dict.fromkeys(names))


def listen_statement(channels):
    """
    @return: one SQL statement LISTENing on every channel, each quoted as an
        identifier: C{MyChan}, C{my-chan} and C{a "q"} are exact,
        case-sensitive names, and nothing in a name can inject SQL.
    """
    return sql.SQL("; ").join(sql.SQL("LISTEN {}").format(sql.Identifier(c)) for c in channels)


class PostgresNotificationListener(Component):
    """
    A component that LISTENs and queues L{Event}s.  It owns its connector's
    connection: do not share the connector.

    When the connection is lost it reconnects (first retry within 0.1 s,
    doubling up to C{backoff_limit} seconds, with jitter; the count resets
    once a connection has lasted C{stable_after} seconds), LISTENs again and
    queues a C{"resync"} event.

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
    ):
        """
        @param pg_connector: a L{hermes_tx.connectors.PostgresConnector}.
        @param notif_channel: a channel name or a list of them.
        @param notif_queue: where L{Event}s go (a C{DeferredQueue}); C{None}
            lets the Client wire it.
        @param error_strategy: classifies connection errors; C{None} means
            L{strategies.CommonErrorStrategy}.
        @param error_queue: where a terminating listener reports.
        @param fire_on_start: queue a C{"start"} event when listening first
            begins.
        @param backoff_limit: the longest wait between reconnects, seconds.
        @param clock: an C{IReactorTime}; C{None} means the reactor.
        @param stable_after: seconds a connection must last before the
            reconnect backoff starts again from the shortest delay.
        @raise InvalidConfigurationException: a channel name is invalid.
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
        self.state = STOPPED
        #: C{None}, or a callable given each connection error as it happens
        #: (a L{hermes_tx.client.Client} sets it to check the server's role).
        self.on_trouble = None
        self._listened_before = False
        self._listening_since = None
        self._retry = None

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
            self.notif_queue = defer.DeferredQueue()
        self._stopping = False
        self._terminated = False
        self._backoff_attempts = 0
        self._listened_before = False
        self._run_done = defer.Deferred()
        d = defer.maybeDeferred(self.set_up)
        d.addCallbacks(lambda _: self._listen(), self._run_failed)

    def stopService(self):
        """
        Stop listening: close the connection and C{tear_down()}.

        @return: a Deferred that fires when done.
        """
        service.Service.stopService(self)
        self._stopping = True
        self.state = STOPPED
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self.pg_connector.disconnect()
        if self._run_done is not None and not self._run_done.called:
            self._finish_run(None)
        return self.join()

    def terminate(self, report):
        Component.terminate(self, report)
        self.state = STOPPED
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
        first = not self._listened_before
        self._listened_before = True
        self.log.info(
            "{ident}: listening on {channels}",
            ident=self.ident, channels=", ".join(repr(c) for c in self.channels),
        )
        if not first:
            self.notif_queue.put(Event("resync", received_at=self._listening_since))
        elif self.fire_on_start:
            self.notif_queue.put(Event("start", received_at=self._listening_since))

    def _listen_failed(self, failure):
        if not self._stopping and self.state == CONNECTING:
            self._handle_loss(failure.value)

    def _connection_lost(self, reason):
        if not self._stopping and self.state in (CONNECTING, LISTENING):
            self._handle_loss(reason.value)

    def _handle_loss(self, error):
        if self.state == LISTENING and (
            self.clock.seconds() - self._listening_since >= self.stable_after
        ):
            self._backoff_attempts = 0
        self.state = WAITING
        self.pg_connector.disconnect()
        if self.on_trouble is not None:
            self.on_trouble(error)
        expected, action = self.error_strategy.handle_exception(error)
        if action in (strategies.BACKOFF, strategies.CONTINUE):
            delay = self.reconnect_delay()
            self.log.warn(
                "{ident}: {error}; reconnecting in {delay:.2f} s",
                ident=self.ident, error=_one_line(error), delay=delay,
            )
            self._retry = self.clock.callLater(delay, self._listen)
        else:
            self.log.warn("{ident}: terminated by {error}", ident=self.ident, error=_one_line(error))
            self.terminate(ComponentError(expected, action, self, error))

    def _on_notifies(self, batch):
        # The hot path: one clock read per batch, one Event per notification.
        now = self.clock.seconds()
        put = self.notif_queue.put
        for n in batch:
            put(Event("notification", n.channel, n.payload, n.pid, now))
