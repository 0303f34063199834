# -*- test-case-name: tests.test_listeners -*-
"""
L{PostgresNotificationListener}: LISTEN on PostgreSQL channels and queue
every notification as an L{Event} (see L{hermes_tx.events} for the start,
notification and resync kinds).

Each connection is one run (L{hermes_tx.sources.listening.ListenRun}): connect, check on that very
connection that the server is not a standby, LISTEN, deliver, until the
connection is lost or the listener stops.  The listener's
L{hermes_tx.runtime.supervisor.Supervisor} starts the next run after its backoff,
which starts again from the shortest delay once a run was LISTENing.

Each run also proves that its LISTEN hears
(L{hermes_tx.sources.listencheck.ListenCheck}): a probe notification sent
from another connection must come back.  When it does not (a
transaction-pooling proxy is the usual cause) the listener says so in one
line and is not ready (L{PostgresNotificationListener.deaf}) until a probe
comes back.
"""

from collections import Counter
from operator import attrgetter

from twisted.logger import Logger

from hermes_tx.events import PAYLOAD_FORMATS, Event, decode_json_payload
from hermes_tx.exceptions import InvalidConfigurationException
from hermes_tx.postgres.channels import validate_channels
from hermes_tx.runtime.loglimit import LogLimit
from hermes_tx.sources.component import ConnectedComponent
from hermes_tx.sources.hearing import Hearing
from hermes_tx.sources.listening import LISTENING, ListenRun

#: The listener's states besides C{STOPPED} (which is also the outcome of a
#: run stopped on request: the same word), C{CONNECTING} and C{LISTENING}
#: (its run's states).
WAITING = "waiting"

_channel_of = attrgetter("channel")

#: a connection made again within this many seconds of its loss is not
#: logged (the loss was, with the delay before trying again)
QUIET_RECONNECT = 1.0

#: seconds between two log lines about payloads that are not JSON
UNDECODABLE_EVERY = 10.0



class PostgresNotificationListener(ConnectedComponent):
    """
    A component that LISTENs and queues L{Event}s.  It owns its connector's
    connection: do not share the connector.

    When the connection is lost the run ends and another begins after a
    backoff (0.1 s, doubling up to C{backoff_limit} seconds, with jitter;
    a run that was LISTENing resets it), which LISTENs again and queues a
    C{"resync"} event.  A liveness probe (C{SELECT 1} every
    C{liveness_interval} seconds) declares a connection dead that does not
    answer within C{liveness_timeout} seconds.  A listen check proves that
    each LISTEN hears: a probe notification on a private channel
    (C{check_channel}) is sent from a new, short-lived connection once
    LISTEN succeeded, and again every C{listen_check_interval} seconds
    while nothing else arrives; if it does not come back within
    C{listen_check_timeout} seconds the listener logs one line and is
    L{deaf}.

    @ivar state: C{"stopped"}, C{"connecting"}, C{"listening"},
        C{"waiting"} (for the next run) or C{"stopping"}.
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
        liveness_timeout=10.0,
        liveness_interval=1.0,
        payload_format="text",
        listen_check_timeout=5.0,
        listen_check_interval=30.0,
        listen_probe=None,
        queue=None,
    ):
        """
        @param pg_connector: a L{hermes_tx.connectors.PostgresConnector}.
        @param notif_channel: a channel name or a list of them.
        @param notif_queue: the seed's name of C{queue}.
        @param queue: where L{Event}s go: an
            L{hermes_tx.runtime.queue.EventQueue} (whose bound pauses reading when
            full) or a C{DeferredQueue}; C{None} lets the Client wire it (or,
            at start, makes an unbounded EventQueue).
        @param error_strategy: classifies connection errors; C{None} means
            L{strategies.CommonErrorStrategy}.
        @param error_queue: where a terminating listener reports.
        @param fire_on_start: queue a C{"start"} event when listening first
            begins.
        @param backoff_limit: the longest wait between reconnects, seconds.
        @param clock: an C{IReactorTime}; C{None} means the reactor.
        @param liveness_timeout: seconds a liveness probe may go unanswered
            before the connection is declared dead (C{None}: no probe).
        @param liveness_interval: seconds between liveness probes.
        @param payload_format: C{"text"} (payloads as sent) or C{"json"}
            (also decode each payload into C{event.data}; one that does not
            decode is logged and delivered with C{event.decode_error}).
        @param listen_check_timeout: seconds a listen-check probe may take
            to be sent, then to come back (C{None}: no listen check).
        @param listen_check_interval: seconds between listen-check probes
            while nothing else shows the LISTEN hears.
        @param listen_probe: C{send(channel, payload)} returning a Deferred
            that fires once that NOTIFY is committed, sending each probe;
            C{None}: a new, short-lived connection per probe
            (L{hermes_tx.sources.listencheck.new_connection_sender}) when
            C{pg_connector} is a L{hermes_tx.connectors.PostgresConnector},
            else no listen check.
        @raise InvalidConfigurationException: a channel name or the payload
            format is invalid.
        """
        ConnectedComponent.__init__(
            self, pg_connector, notif_queue, queue=queue, error_strategy=error_strategy,
            error_queue=error_queue, backoff_limit=backoff_limit, clock=clock,
        )
        self.channels = validate_channels(notif_channel)
        self.fire_on_start = fire_on_start
        self.liveness_timeout = liveness_timeout
        self.liveness_interval = liveness_interval
        if payload_format not in PAYLOAD_FORMATS:
            raise InvalidConfigurationException(
                f"payload format must be 'text' or 'json', not {payload_format!r}"
            )
        self.payload_format = payload_format
        self._listened_before = False
        #: notifications received, by channel (for metrics)
        self.received = Counter()
        #: resync events queued so far (for metrics)
        self.resyncs = 0
        #: times reading paused because the queue was full (back-pressure)
        self.pauses = 0
        #: when the last notification arrived (clock seconds), or None
        self.last_notification_at = None
        self._undecodable_lines = LogLimit(self.clock, 1, UNDECODABLE_EVERY)
        #: whether its LISTEN hears (the listen checks' verdicts)
        self.hearing = Hearing(self, self.channels, listen_check_timeout, listen_check_interval,
                               listen_probe)

    @property
    def is_listening(self):
        return self.state == LISTENING

    @property
    def hears(self):
        """
        True while listening and not L{deaf}.
        """
        return self.state == LISTENING and self.hearing.deaf is None

    def new_run(self):
        return ListenRun(self)

    @property
    def deaf(self):
        """
        Why the last listen-check probe says the LISTEN hears nothing (and
        the usual cause), or C{None}.
        """
        return self.hearing.deaf

    @property
    def check_channel(self):
        """
        The listen check's private channel, or C{None} (no check).
        """
        return self.hearing.channel

    @property
    def listen_probes(self):
        """
        Listen-check probes by outcome: heard, deaf, failed (for metrics).
        """
        return self.hearing.probes

    # -- events ---------------------------------------------------------------

    def began_listening(self, when):
        """
        A run is LISTENing (its connection was made at C{when}): queue
        C{start} the first time (when C{fire_on_start}), C{resync} after
        any gap.
        """
        first = not self._listened_before
        self._listened_before = True
        away = self.back_since(when)
        # Back after a blip (the loss line said "reconnecting in 0.10 s"):
        # silence means it worked, and back-to-back kills stay a line each.
        if away is None or away >= QUIET_RECONNECT:
            self.log.info(
                "{ident}: listening on {channels}",
                ident=self.ident, channels=", ".join(repr(c) for c in self.channels),
            )
        if not first:
            self.resyncs += 1
            self.queue.put(Event("resync", received_at=when))
        elif self.fire_on_start:
            self.queue.put(Event("start", received_at=when))

    def receive(self, batch):
        """
        Queue notifications (a list of psycopg2 C{Notify}), as the run reads
        them.  The hot path, once per socket read: one clock read, one Event
        per notification (a comprehension), counting in C (Counter.update),
        one hand-over to the queue.

        @return: True when the queue is full now (the caller pauses).
        """
        now = self.last_notification_at = self.clock.seconds()
        events = [Event("notification", n.channel, n.payload, n.pid, now) for n in batch]
        if len(self.channels) == 1:
            self.received[self.channels[0]] += len(events)
        else:
            self.received.update(map(_channel_of, batch))
        if self.payload_format == "json":
            self._decode(events)
        queue = self.queue
        if hasattr(queue, "put_many"):
            queue.put_many(events)
            return queue.is_full
        for event in events:
            queue.put(event)
        return False

    def _decode(self, events):
        for event in events:
            if not decode_json_payload(event):
                self._undecodable(event)

    def _undecodable(self, event):
        # Anyone allowed to NOTIFY can send what does not decode: one line,
        # then at most one line per UNDECODABLE_EVERY seconds with a count.
        more = self._undecodable_lines.allow()
        if more is None:
            return
        self.log.warn(
            "{ident}: payload on channel {channel!r} is not JSON ({error}); "
            "delivered with decode_error set{more}",
            ident=self.ident, channel=event.channel, error=event.decode_error, more=more,
        )
