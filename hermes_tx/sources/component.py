# -*- test-case-name: tests.test_components,tests.test_listeners -*-
"""
L{ConnectedComponent}: a source that owns a connector and follows the
primary (the listener and the outbox consumer): its runs are connections
(L{hermes_tx.sources.run.ConnectionRun}), and each lost connection is one
log line (at most L{LOSS_LINES} a second).
"""

from hermes_tx.exceptions import InvalidConfigurationException, one_line
from hermes_tx.runtime.component import BaseComponent
from hermes_tx.runtime.loglimit import LogLimit
from hermes_tx.runtime.queue import EventQueue

#: at most this many lines a second about lost connections (the others are
#: counted in the next line)
LOSS_LINES = 5


class ConnectedComponent(BaseComponent):
    """
    A source that owns a connector (C{pg_connector}) and puts events on a
    queue (C{queue}; the seed's C{notif_queue}): the listener and the
    outbox consumer.  Its runs
    are connections (L{hermes_tx.sources.run.ConnectionRun}); it follows the
    primary when a multi-host DSN's primary moves.

    @ivar state: C{"stopped"}, C{"connecting"}, the run's working state
        (C{"listening"}; C{"starting"}, then C{"consuming"} once a claim
        came back), C{"waiting"} (for the next run) or C{"stopping"}.
    @ivar reconnects: lost connections so far (for metrics).
    """

    pg_connector = None
    queue = None

    def __init__(self, pg_connector, notif_queue=None, queue=None, **kwargs):
        """
        @param pg_connector: a L{hermes_tx.connectors.PostgresConnector}.
        @param notif_queue: the seed's name of C{queue}.
        @param queue: where events go; C{None} lets the Client wire it
            (or, at start, makes an unbounded queue).
        @param kwargs: for L{BaseComponent}.
        """
        BaseComponent.__init__(self, **kwargs)
        self.pg_connector = pg_connector
        if queue is not None and notif_queue is not None and queue is not notif_queue:
            raise InvalidConfigurationException("pass queue or notif_queue (its seed name), not both")
        self.queue = queue if queue is not None else notif_queue
        self.reconnects = 0
        self._lost_at = None  # when the connection was lost, while it is made again
        self._loss_lines = LogLimit(self.clock, LOSS_LINES, 1.0)
        self.supervisor.add_observer(self)  # run_lost, run_terminated below

    @property
    def notif_queue(self):
        """
        The seed's name of C{queue}.
        """
        return self.queue

    @notif_queue.setter
    def notif_queue(self, queue):
        self.queue = queue

    @property
    def state(self):
        supervised = self.supervisor.state
        if supervised == "running":
            run = self.supervisor.run
            return getattr(run, "state", "connecting")
        if supervised in ("idle", "terminated"):
            return "stopped"
        return supervised  # "waiting" or "stopping"

    def startService(self):
        if self.queue is None:
            self.queue = EventQueue()
        BaseComponent.startService(self)

    # -- what its supervisor tells it (one line each) ----------------------------

    def run_lost(self, component, error, delay):
        """
        Its connection was lost: count it, and one line (at most
        L{LOSS_LINES} a second; the next line counts those left out).
        """
        self.reconnects += 1
        if self._lost_at is None:
            self._lost_at = self.clock.seconds()
        more = self._loss_lines.allow()
        if more is None:
            return  # losses in quick succession: the next line counts them
        self.log.warn(
            "{ident}: {error}; reconnecting in {delay:.2f} s{more}",
            ident=self.ident, error=self.describe_loss(error), delay=delay, more=more,
        )

    def run_terminated(self, component, error):
        """
        Its error strategy ended it for good: one line.
        """
        self.log.warn("{ident}: terminated by {error}", ident=self.ident,
                      error=self.describe_loss(error))

    def describe_loss(self, error):
        """
        @return: one line saying why a connection was lost, scrubbed of the
            DSN's secrets (a subclass may say more: the outbox consumer names
            a missing grant and how to give it).
        """
        return self._scrubbed(one_line(error))

    def _scrubbed(self, line):
        scrub = getattr(self.pg_connector, "scrub", None)
        return line if scrub is None else scrub(line)

    def back_since(self, when):
        """
        A connection works again at C{when}: how long it was away (seconds),
        or C{None} when it was not lost.
        """
        lost_at, self._lost_at = self._lost_at, None
        return None if lost_at is None else when - lost_at

    def follow_primary(self, entry):
        """
        The Client found the primary at C{entry} (a
        L{hermes_tx.postgres.hosts.HostEntry} of a multi-host DSN): connect there
        from now on, moving a connection that is elsewhere (a new run).
        """
        connector = self.pg_connector
        before = getattr(connector, "pinned", None)
        pin = getattr(connector, "pin", None)
        if pin is None or not pin(entry) or connector.pinned == before:
            return
        if before is not None and self.supervisor.state in ("running", "waiting"):
            self.supervisor.stop()
            self.supervisor.start()
