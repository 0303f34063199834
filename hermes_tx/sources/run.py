# -*- test-case-name: tests.test_connection_run,tests.test_listeners,tests.test_outbox_consumer -*-
"""
L{ConnectionRun}: a source's run: one connection, from connect (and the
check that it is not a standby) to its loss.

The connection's life is an Automat state machine: connecting, preparing
(the role check and C{LISTEN} on that very connection), working (the
subclass: listening, consuming), draining (a stop lets the subclass finish
what it owes, the outbox its acknowledgements, until the component's
C{shutdown_timeout} if it has one) and closed.  The machine
owns the connection and its L{hermes_tx.postgres.session.Session}, whose
every query has a deadline (the source's C{liveness_timeout}): a server
that stops answering is a lost connection, whatever the query.  The
subclass owns its timers and hands them back when the working state ends.
"""

from dataclasses import dataclass
from typing import Any, Protocol

from automat import TypeMachineBuilder
from twisted.internet import defer

from hermes_tx import strategies
from hermes_tx.exceptions import ConnectionLostError, StandbyServerError
from hermes_tx.postgres.session import Session
from hermes_tx.runtime.machines import StateName
from hermes_tx.runtime.run import Run
from hermes_tx.runtime.supervisor import LOST, STOPPED, TERMINATED, ComponentError, Outcome

#: what L{ConnectionRun.state} says before the subclass works, while it
#: drains for a stop, and once the connection is closed (while the subclass
#: works, it says the subclass's L{ConnectionRun.working_state})
CONNECTING, WORKING, STOPPING, ENDED = "connecting", "working", "stopping", "ended"


class _Inputs(Protocol):
    def begin(self) -> None:
        "Connect."

    def connected(self, conn: Any) -> None:
        "The connection is made."

    def prepared(self) -> None:
        "Not a standby, and LISTENing."

    def failed(self, error: Exception) -> None:
        "Connecting or preparing failed, or the connection was lost."

    def stop(self) -> None:
        "End on request (drain first when working)."

    def terminate(self, report: Any) -> None:
        "End for good."

    def drained(self) -> None:
        "The subclass finished what it owed."


@dataclass
class _Core:
    run: Any

    @property
    def session(self):
        return self.run.session

    @property
    def component(self):
        return self.run.component

    def connect(self, machine):
        d = self.component.pg_connector.connect()
        d.addCallbacks(machine.connected, lambda f: machine.failed(f.value))

    def prepare(self, machine, conn):
        run = self.run
        run.session = Session(conn, self.component.clock, run.query_deadline(), machine.failed)
        # The sink before LISTEN, so nothing that arrives with its reply is
        # missed.
        conn.notify_sink = run.notified
        # A standby answers LISTEN (and writes) with an error every time
        # (SQLSTATE 25006): ask its role first, on the same connection.
        d = self.session.query("SELECT pg_is_in_recovery()")

        def listen(rows):
            if rows[0][0]:
                raise StandbyServerError(f"the server is a standby; not {run.purpose} there")
            return self.session.operation(run.listen_statement())

        d.addCallback(listen)
        d.addCallbacks(lambda _: machine.prepared(), lambda f: machine.failed(f.value))

    def close(self):
        if self.session is not None:
            self.session.close()
        self.component.pg_connector.disconnect()

    def classify(self, error):
        """
        @return: the L{Outcome} of a connection that went, as the error
            strategy says: lost (retried after a backoff) or terminated.
        """
        component = self.component
        expected, action = component.error_strategy.handle_exception(error)
        if action in (strategies.BACKOFF, strategies.CONTINUE):
            return Outcome(LOST, error)
        return Outcome(TERMINATED, error, ComponentError(expected, action, component, error))


def _build():
    builder = TypeMachineBuilder(_Inputs, _Core)
    idle = builder.state("Idle")
    connecting = builder.state("Connecting")
    preparing = builder.state("Preparing")
    working = builder.state("Working")
    draining = builder.state("Draining")
    closed = builder.state("Closed")

    @idle.upon(_Inputs.begin).to(connecting)
    def connect(inputs, core):
        core.connect(inputs)

    @connecting.upon(_Inputs.connected).to(preparing)
    def prepare(inputs, core, conn):
        core.prepare(inputs, conn)

    @preparing.upon(_Inputs.prepared).to(working)
    def work(inputs, core):
        core.run.start_working(core.session)

    @connecting.upon(_Inputs.failed).to(closed)
    @preparing.upon(_Inputs.failed).to(closed)
    def not_made(inputs, core, error):
        core.close()
        core.run.work_ended(core.classify(error))

    @working.upon(_Inputs.failed).to(closed)
    def lost(inputs, core, error):
        core.run.stop_working()
        core.close()
        core.run.work_ended(core.classify(error))

    @connecting.upon(_Inputs.stop).to(closed)
    @preparing.upon(_Inputs.stop).to(closed)
    def stop_early(inputs, core):
        core.close()
        core.run.work_ended(Outcome(STOPPED))

    @connecting.upon(_Inputs.terminate).to(closed)
    @preparing.upon(_Inputs.terminate).to(closed)
    def terminate_early(inputs, core, report):
        core.close()
        core.run.work_ended(Outcome(TERMINATED, report.error, report))

    @working.upon(_Inputs.terminate).to(closed)
    def terminate(inputs, core, report):
        core.run.stop_working()
        core.close()
        core.run.work_ended(Outcome(TERMINATED, report.error, report))

    @working.upon(_Inputs.stop).to(draining)
    def drain(inputs, core):
        d = defer.maybeDeferred(core.run.drain)
        d.addErrback(lambda f: core.component.log.failure(
            "{ident}: finishing before the stop failed", failure=f, ident=core.component.ident))
        d.addBoth(lambda _: inputs.drained())

    @draining.upon(_Inputs.drained).to(closed)
    def drained(inputs, core):
        core.run.stop_working()
        core.close()
        core.run.work_ended(Outcome(STOPPED))

    @draining.upon(_Inputs.failed).to(closed)
    def lost_while_draining(inputs, core, error):
        # Stopping anyway: what was owed and not written is written on the
        # next connection, or its claims expire.
        core.run.stop_working()
        core.close()
        core.run.work_ended(Outcome(STOPPED))

    # Inputs that arrive late (a connect, a query's answer after the
    # connection's end) or twice change nothing.
    for state in (draining, closed):
        state.upon(_Inputs.stop).loop().returns(None)
        state.upon(_Inputs.terminate).loop().returns(None)
    closed.upon(_Inputs.failed).loop().returns(None)
    closed.upon(_Inputs.drained).loop().returns(None)
    closed.upon(_Inputs.prepared).loop().returns(None)
    closed.upon(_Inputs.connected).loop().returns(None)
    return builder.build()


_Machine = _build()
_NAMES = {"Idle": CONNECTING, "Connecting": CONNECTING, "Preparing": CONNECTING,
          "Working": WORKING, "Draining": STOPPING, "Closed": ENDED}


class ConnectionRun(Run):
    """
    One connection of a L{hermes_tx.sources.component.ConnectedComponent}:
    connect, check on that very connection that the server is not a
    standby, LISTEN, then work (the subclass) until the connection is lost
    or the component stops.

    Subclasses set L{purpose} and L{working_state} and implement
    L{listen_statement}, L{start_working} and L{stop_working}, and may implement
    L{notifies} and L{drain}.  They report a dead connection with
    L{lose}.

    @ivar session: the L{Session} of the connection, once made.
    """

    #: what a standby is refused for, in the loss's message
    purpose = "working"
    #: what L{state} says while the subclass works
    working_state = "working"

    def __init__(self, component):
        Run.__init__(self, component)
        self.session = None
        self._connection = _Machine(_Core(self))
        self._phase = StateName(self._connection, "Idle")

    @property
    def state(self):
        """
        C{"connecting"}, the subclass's L{working_state}, C{"stopping"}
        (draining before a stop) or C{"ended"}.
        """
        current = _NAMES[self._phase.name]
        return self.working_state if current == WORKING else current

    @property
    def is_working(self):
        return self._phase.name == "Working"

    def query_deadline(self):
        """
        @return: the seconds any query of this run may take before the
            connection counts as dead: the component's C{liveness_timeout}.
        """
        return getattr(self.component, "liveness_timeout", None)

    def lose(self, error):
        """
        The connection is dead, or unusable (a query of the subclass
        failed): end the run, lost or terminated as the error strategy says.
        """
        self._connection.failed(error)

    def ended(self, outcome):
        Run.ended(self, outcome)
        if self._phase.name == "Draining":
            # Reported before the drain finished (the component's
            # shutdown_timeout passed): the connection goes now, so nothing
            # of this run touches the next one (a late drain would close
            # the connector's next connection).
            self._connection.failed(ConnectionLostError("stopped before it finished"))

    def notified(self, batch):
        """
        Notifications arrived (a list of psycopg2 C{Notify}).
        """
        if self.session is not None:
            self.session.saw_notifications()
        self.notifies(batch)

    def notifies(self, batch):
        """
        The subclass's notifications (by default: ignored).
        """

    # -- Run ------------------------------------------------------------------

    def begin_work(self):
        self._connection.begin()

    def end_work(self):
        self._connection.stop()

    def terminate_work(self, report):
        self._connection.terminate(report)

    # -- the subclass's part ----------------------------------------------------

    def listen_statement(self):
        """
        @return: the statement LISTENing for what wakes this run.
        """
        raise NotImplementedError

    def start_working(self, session):
        """
        The connection is made and LISTENing: start working (timers,
        queries on C{session}); call C{on_ready} once the work proved to
        work.
        """
        raise NotImplementedError

    def stop_working(self):
        """
        The working state ends (the connection is lost, or closed after a
        stop): cancel every timer.
        """

    def drain(self):
        """
        A stop: finish what is owed on the connection first.

        @return: a Deferred firing when done (or C{None}).
        """
