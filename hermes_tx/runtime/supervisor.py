# -*- test-case-name: tests.test_supervisor -*-
"""
L{Supervisor}: the one owner of a component's runs and of their retries.

A run is one life of a component between C{set_up} and C{tear_down}: for a
listener, one connection from connect to loss; for a processor, from start
to stop.  A run ends in one of three ways (L{Outcome}): stopped on request,
lost (its connection went away: start another after a backoff) or
terminated (its error strategy said so: start no other until started
again).  A run that reports stopped though nobody asked leaves the
supervisor idle (with a warning), not restarted.  The supervisor is an
Automat state machine in the manner of Twisted's C{ClientService}: each
state owns its run or its timer.

Its L{Backoff} resets when a run becomes ready (a listener LISTENing): a
connection that was established and working is a success, so the next loss
retries after the shortest delay.
"""

from collections import namedtuple
from dataclasses import dataclass, field
from typing import Any, List, Optional, Protocol

from automat import TypeMachineBuilder
from twisted.internet import defer
from twisted.logger import Logger

from hermes_tx.runtime.machines import StateName

STOPPED, LOST, TERMINATED = "stopped", "lost", "terminated"

#: What a component puts on its error queue when it terminates: the seed's
#: C{(expected, action)} pair, plus the component and the error itself.
ComponentError = namedtuple("ComponentError", "expected action component error")

#: How a run ended: C{kind} is L{STOPPED}, L{LOST} or L{TERMINATED};
#: C{error} is the exception for the last two; C{report} the
#: L{ComponentError} of a termination.
Outcome = namedtuple("Outcome", "kind error report", defaults=(None, None))


class SupervisorObserver:
    """
    What a supervisor tells whoever watches it (the Client); every method
    is optional.
    """

    def run_ready(self, component):
        """A run of C{component} is working (a listener is LISTENing)."""

    def run_lost(self, component, error, delay):
        """A run of C{component} was lost; another follows in C{delay} s."""

    def run_terminated(self, component, error):
        """A run of C{component} was terminated by its error strategy."""


class _Inputs(Protocol):
    def start(self) -> None:
        "Keep a run going."

    def stop(self, waiter: defer.Deferred) -> None:
        "End the run; fire C{waiter} once it has ended."

    def run_ready(self, run: object) -> None:
        "The current run is working."

    def run_lost(self, run: object, outcome: Outcome) -> None:
        "The current run lost its connection."

    def run_terminated(self, run: object, outcome: Outcome) -> None:
        "The current run was terminated by its error strategy."

    def run_finished(self, run: object, outcome: Outcome) -> None:
        "The current run ended after stop()."

    def retry(self) -> None:
        "The backoff delay is over."


@dataclass
class _Core:
    component: Any
    clock: Any
    backoff: Any
    observers: List[Any]
    log: Logger
    run: Optional[Any] = None
    timer: Optional[Any] = None
    stop_waiters: List[defer.Deferred] = field(default_factory=list)
    last_outcome: Optional[Outcome] = None

    def begin_run(self, machine):
        self.timer = None
        run = None
        try:
            run = self.run = self.component.new_run()
            run.on_ready = lambda: self.run is run and machine.run_ready(run)
            run.on_end = lambda outcome: self._run_end(machine, run, outcome)
            run.start()
        except Exception as error:
            # A run that cannot even begin is a bug: end it for good, so
            # the supervisor does not sit "running" with nothing running.
            self.log.failure("{ident}: a run could not start",
                             ident=getattr(self.component, "ident", self.component))
            if run is None:
                run = self.run = object()
            report = ComponentError(False, "TERMINATE", self.component, error)
            machine.run_terminated(run, Outcome(TERMINATED, error, report))

    def _run_end(self, machine, run, outcome):
        if self.run is not run:
            return  # an older run, given up on
        if outcome.kind == STOPPED:
            machine.run_finished(run, outcome)
        elif outcome.kind == LOST:
            machine.run_lost(run, outcome)
        else:
            machine.run_terminated(run, outcome)

    def notify(self, method, *args):
        for observer in list(self.observers):
            call = getattr(observer, method, None)
            if call is None:
                continue
            try:
                call(self.component, *args)
            except Exception:
                self.log.failure("supervisor observer {method} failed", method=method)

    def finish_stopping(self):
        self.run = None
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        waiters, self.stop_waiters = self.stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)


def _build():
    builder = TypeMachineBuilder(_Inputs, _Core)
    idle = builder.state("Idle")
    running = builder.state("Running")
    backing_off = builder.state("BackingOff")
    stopping = builder.state("Stopping")
    restarting = builder.state("StoppingToRestart")
    terminated = builder.state("Terminated")
    ends = (_Inputs.run_lost, _Inputs.run_terminated, _Inputs.run_finished)

    @idle.upon(_Inputs.start).to(running)
    @backing_off.upon(_Inputs.retry).to(running)
    @terminated.upon(_Inputs.start).to(running)
    def begin(inputs, core):
        core.begin_run(inputs)

    @idle.upon(_Inputs.stop).loop()
    @terminated.upon(_Inputs.stop).to(idle)
    def already_stopped(inputs, core, waiter):
        core.stop_waiters.append(waiter)
        core.finish_stopping()

    @running.upon(_Inputs.run_ready).loop()
    def ready(inputs, core, run):
        core.backoff.reset()
        core.notify("run_ready")

    @running.upon(_Inputs.run_lost).to(backing_off)
    def lost(inputs, core, run, outcome):
        core.last_outcome = outcome
        core.run = None
        delay = core.backoff.next_delay()
        core.timer = core.clock.callLater(delay, inputs.retry)
        core.notify("run_lost", outcome.error, delay)

    @running.upon(_Inputs.run_terminated).to(terminated)
    def ended_for_good(inputs, core, run, outcome):
        core.last_outcome = outcome
        core.run = None
        core.notify("run_terminated", outcome.error)

    @running.upon(_Inputs.stop).to(stopping)
    def stop_run(inputs, core, waiter):
        core.stop_waiters.append(waiter)
        core.run.stop()

    @backing_off.upon(_Inputs.stop).to(idle)
    def cancel_retry(inputs, core, waiter):
        core.stop_waiters.append(waiter)
        core.finish_stopping()

    @stopping.upon(_Inputs.stop).loop()
    @restarting.upon(_Inputs.stop).to(stopping)
    def also_wait(inputs, core, waiter):
        core.stop_waiters.append(waiter)

    for end in ends:
        @stopping.upon(end).to(idle)
        def stopped(inputs, core, run, outcome):
            core.finish_stopping()

        @restarting.upon(end).to(running)
        def stopped_then_start(inputs, core, run, outcome):
            core.finish_stopping()
            core.begin_run(inputs)

    @running.upon(_Inputs.run_finished).to(idle)
    def ended_unasked(inputs, core, run, outcome):
        # Nobody asked this run to stop (a consumer loop that failed ends
        # so): it is over all the same.  Keeping it as the current run
        # would make the next stop() wait for an end that already came.
        core.log.warn("{ident}: a run ended though no stop was asked",
                      ident=getattr(core.component, "ident", repr(core.component)))
        core.finish_stopping()

    stopping.upon(_Inputs.start).to(restarting).returns(None)
    restarting.upon(_Inputs.start).loop().returns(None)
    for state in (running, backing_off):
        state.upon(_Inputs.start).loop().returns(None)
    # Inputs that arrive late from a run or a timer already left behind
    # change nothing.
    for state in (idle, backing_off, stopping, restarting, terminated):
        state.upon(_Inputs.run_ready).loop().returns(None)
    for end in ends:
        for state in (idle, backing_off, terminated):
            state.upon(end).loop().returns(None)
    for state in (idle, running, stopping, restarting, terminated):
        state.upon(_Inputs.retry).loop().returns(None)
    return builder.build()


_Machine = _build()
_NAMES = {"Idle": "idle", "Running": "running", "BackingOff": "waiting", "Stopping": "stopping",
          "StoppingToRestart": "stopping", "Terminated": "terminated"}


class Supervisor:
    """
    Runs a component: starts a run, restarts lost runs after its backoff,
    stops the run on request.

    @ivar state: C{"idle"}, C{"running"}, C{"waiting"} (backing off before
        the next run), C{"stopping"} or C{"terminated"}.
    @ivar backoff: the L{hermes_tx.runtime.backoff.Backoff} between lost runs.
    @ivar last_outcome: the L{Outcome} of the last run that was lost or
        terminated, or C{None}.
    """

    def __init__(self, component, clock, backoff, log=None):
        """
        @param component: has C{new_run()} returning a run object with
            C{start()}, C{stop()} and the attributes C{on_ready} and
            C{on_end} (set by the supervisor; C{on_end} takes an
            L{Outcome}).
        @param clock: an C{IReactorTime} for the backoff timer.
        @param backoff: a L{hermes_tx.runtime.backoff.Backoff}.
        """
        self._core = _Core(component, clock, backoff, [], log or Logger())
        self._machine = _Machine(self._core)
        self._state = StateName(self._machine, "Idle")

    @property
    def state(self):
        return _NAMES[self._state.name]

    @property
    def backoff(self):
        return self._core.backoff

    @property
    def run(self):
        """
        The current run, or C{None}.
        """
        return self._core.run

    @property
    def last_outcome(self):
        return self._core.last_outcome

    def add_observer(self, observer):
        """
        @param observer: a L{SupervisorObserver} (or any object with some of
            its methods).
        """
        self._core.observers.append(observer)

    def start(self):
        self._machine.start()

    def stop(self):
        """
        @return: a Deferred firing once the current run (if any) has ended.
        """
        waiter = defer.Deferred()
        self._machine.stop(waiter)
        return waiter
