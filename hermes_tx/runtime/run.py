# -*- test-case-name: tests.test_run,tests.test_components -*-
"""
Runs: one life of a component between C{set_up} and C{tear_down}, owned by
its L{hermes_tx.runtime.supervisor.Supervisor}.

  - L{Run}: the lifecycle every run has, an Automat state machine: setting
    up, working, ending (asked to stop), tearing down, ended; a stop bounded
    by the component's C{shutdown_timeout}, whose timer the machine owns;
    a termination.
  - L{ConsumerRun}: a L{hermes_tx.components.Component}'s run: its
    L{hermes_tx.runtime.loop.ConsumerLoop} until stopped or terminated.

A source's run (one connection) is L{hermes_tx.sources.run.ConnectionRun}.
"""

from dataclasses import dataclass
from typing import Any, Optional, Protocol

import psycopg2
from automat import TypeMachineBuilder
from twisted.internet import defer
from twisted.python.failure import Failure

from hermes_tx import strategies
from hermes_tx.exceptions import HermesException, one_line
from hermes_tx.runtime.loop import ConsumerLoop
from hermes_tx.runtime.supervisor import STOPPED, TERMINATED, ComponentError, Outcome


class _Inputs(Protocol):
    def start(self) -> None:
        "Begin: set_up."

    def set_up_done(self) -> None:
        "set_up succeeded."

    def set_up_failed(self, failure: Failure) -> None:
        "set_up failed."

    def stop(self) -> None:
        "End the run on request."

    def terminate(self, outcome: Outcome) -> None:
        "End the run for good."

    def work_ended(self, outcome: Outcome) -> None:
        "The work is over (asked to, or on its own)."

    def torn_down(self) -> None:
        "tear_down is over."

    def expired(self) -> None:
        "The stop took longer than the component's shutdown_timeout."


@dataclass
class _Core:
    run: Any
    component: Any
    outcome: Optional[Outcome] = None  # what the run will report
    timer: Optional[Any] = None  # the shutdown deadline

    def set_up(self, machine):
        d = defer.maybeDeferred(self.component.set_up)
        d.addCallbacks(lambda _: machine.set_up_done(), machine.set_up_failed)

    def tear_down(self, machine):
        component = self.component
        d = defer.maybeDeferred(component.tear_down)
        d.addErrback(lambda f: component.log.failure(
            "{ident}: tear_down failed", failure=f, ident=component.ident))
        d.addBoth(lambda _: machine.torn_down())

    def arm(self, machine):
        timeout = getattr(self.component, "shutdown_timeout", None)
        if timeout is not None and self.timer is None:
            self.timer = self.component.clock.callLater(timeout, machine.expired)

    def disarm(self):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def report(self, outcome):
        self.disarm()
        self.run.ended(outcome)

    def late(self, what):
        component = self.component
        component.log.warn("{ident}: {what} did not finish within {t:g} s; stopped anyway",
                           ident=component.ident, what=what, t=component.shutdown_timeout)
        self.timer = None
        self.report(Outcome(STOPPED))


def _build():
    builder = TypeMachineBuilder(_Inputs, _Core)
    created = builder.state("Created")
    setting_up = builder.state("SettingUp")
    set_up_ending = builder.state("SettingUpThenEnding")
    working = builder.state("Working")
    ending = builder.state("Ending")
    tearing_down = builder.state("TearingDown")
    ended = builder.state("Ended")
    # Reported already (the shutdown deadline passed); what is still pending
    # is finished quietly, so nothing set_up made is left behind.
    late_set_up = builder.state("LateSettingUp")
    late_work = builder.state("LateWorking")
    late_tear_down = builder.state("LateTearingDown")

    @created.upon(_Inputs.start).to(setting_up)
    def begin(inputs, core):
        core.set_up(inputs)

    @setting_up.upon(_Inputs.set_up_done).to(working)
    def work(inputs, core):
        core.run.begin_work()

    @setting_up.upon(_Inputs.set_up_failed).to(ended)
    @set_up_ending.upon(_Inputs.set_up_failed).to(ended)
    def set_up_failed(inputs, core, failure):
        core.report(core.run.set_up_failed_outcome(failure))

    @setting_up.upon(_Inputs.stop).to(set_up_ending)
    def stop_after_set_up(inputs, core):
        core.outcome = Outcome(STOPPED)
        core.arm(inputs)

    @setting_up.upon(_Inputs.terminate).to(set_up_ending)
    def terminate_after_set_up(inputs, core, outcome):
        core.outcome = outcome

    @set_up_ending.upon(_Inputs.set_up_done).to(tearing_down)
    def no_work(inputs, core):
        core.tear_down(inputs)

    @working.upon(_Inputs.stop).to(ending)
    def end_work(inputs, core):
        core.arm(inputs)
        core.run.end_work()

    @working.upon(_Inputs.terminate).to(ending)
    def terminate_work(inputs, core, outcome):
        core.run.terminate_work(outcome.report)

    @working.upon(_Inputs.work_ended).to(tearing_down)
    @ending.upon(_Inputs.work_ended).to(tearing_down)
    def work_over(inputs, core, outcome):
        core.outcome = outcome
        core.tear_down(inputs)

    # A stop after a termination, or while the tear_down of work that
    # ended on its own runs, is bounded all the same.
    @ending.upon(_Inputs.stop).loop()
    @set_up_ending.upon(_Inputs.stop).loop()
    @tearing_down.upon(_Inputs.stop).loop()
    def stop_while_ending(inputs, core):
        core.arm(inputs)

    @tearing_down.upon(_Inputs.torn_down).to(ended)
    def over(inputs, core):
        core.report(core.outcome)

    @set_up_ending.upon(_Inputs.expired).to(late_set_up)
    def set_up_late(inputs, core):
        core.late("set_up")

    @ending.upon(_Inputs.expired).to(late_work)
    def work_late(inputs, core):
        # tear_down begins first: one that is done at once is done before
        # anyone hears of the end.
        core.tear_down(inputs)
        core.late("the item in progress")

    @tearing_down.upon(_Inputs.expired).to(late_tear_down)
    def tear_down_late(inputs, core):
        core.late("tear_down")

    @late_set_up.upon(_Inputs.set_up_done).to(late_tear_down)
    def clean_up_after_set_up(inputs, core):
        core.tear_down(inputs)

    @late_set_up.upon(_Inputs.set_up_failed).to(ended)
    def set_up_failed_late(inputs, core, failure):
        # Reported stopped already: the error is said all the same.
        core.run.set_up_failed_outcome(failure)
    late_tear_down.upon(_Inputs.torn_down).to(ended).returns(None)
    late_work.upon(_Inputs.torn_down).loop().returns(None)
    late_work.upon(_Inputs.work_ended).to(ended).returns(None)

    # Inputs that come too late, or twice, change nothing.
    for state in (ended, late_set_up, late_work, late_tear_down):
        state.upon(_Inputs.stop).loop().returns(None)
    for state in (set_up_ending, ending, tearing_down, ended, late_set_up, late_work, late_tear_down):
        state.upon(_Inputs.terminate).loop().returns(None)
    ended.upon(_Inputs.torn_down).loop().returns(None)
    for state in (tearing_down, ended, late_set_up, late_tear_down):
        state.upon(_Inputs.work_ended).loop().returns(None)
    for state in (setting_up, working, ended, late_set_up, late_work, late_tear_down):
        state.upon(_Inputs.expired).loop().returns(None)
    created.upon(_Inputs.stop).to(ended).returns(None)
    return builder.build()


_Machine = _build()


class Run:
    """
    One run: C{set_up}, the work, C{tear_down}, then C{on_end(outcome)}.
    Subclasses implement L{begin_work}, L{end_work} and L{terminate_work}, and
    call L{work_ended} once their work is over (asked to, or on its own:
    a lost connection, a termination).

    A stop waits for the work to end and for C{tear_down}, within the
    component's C{shutdown_timeout} (if it has one): past it the run is
    reported stopped whatever is still pending (an item in progress, a
    slow C{set_up} or C{tear_down}); what finishes later is cleaned up
    (C{tear_down} after a late C{set_up}) and touches no later run.

    @ivar on_ready: set by the supervisor; call once the work is under way.
    @ivar on_end: set by the supervisor; called once with the L{Outcome}.
    """

    def __init__(self, component):
        self.component = component
        self.on_ready = lambda: None
        self.on_end = lambda outcome: None
        self._ended = defer.Deferred()
        self._machine = _Machine(_Core(self, component))

    def when_ended(self):
        """
        @return: a Deferred firing (with C{None}) once the run has ended.
        """
        d = defer.Deferred()
        self._ended.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    def start(self):
        self._machine.start()

    def stop(self):
        """
        End the run on request (the subclass decides how fast), within the
        component's C{shutdown_timeout}.
        """
        self._machine.stop()

    def terminate(self, report):
        """
        End the run for good with C{report} (a
        L{hermes_tx.runtime.supervisor.ComponentError}).
        """
        self._machine.terminate(Outcome(TERMINATED, report.error, report))

    def work_ended(self, outcome):
        """
        The subclass's work is over: C{tear_down}, then report C{outcome}.
        Only the first call counts.
        """
        self._machine.work_ended(outcome)

    def ended(self, outcome):
        # The machine's report: once.
        if not self._ended.called:
            self._ended.callback(outcome)
            self.on_end(outcome)

    def set_up_failed_outcome(self, failure):
        """
        set_up raised: that ends this run, reported like a TERMINATE.  An
        environment's or a database's refusal is one line; a bug gets its
        traceback.

        @return: the L{Outcome} to report.
        """
        component = self.component
        if failure.check(OSError, psycopg2.Error, HermesException):
            component.log.error("{ident}: set_up failed: {error}", ident=component.ident,
                                error=one_line(failure.value))
        else:
            component.log.failure("{ident}: set_up failed", failure=failure, ident=component.ident)
        report = ComponentError(False, strategies.TERMINATE, component, failure.value)
        return Outcome(TERMINATED, failure.value, report)

    def begin_work(self):
        raise NotImplementedError

    def end_work(self):
        raise NotImplementedError

    def terminate_work(self, report):
        self.work_ended(Outcome(TERMINATED, report.error, report))


class ConsumerRun(Run):
    """
    A run of a L{Component}: its L{ConsumerLoop} until stopped (the item in
    progress may take up to C{shutdown_timeout} seconds) or terminated.
    """

    loop = None

    def begin_work(self):
        component = self.component
        self.loop = ConsumerLoop(component, component.clock)
        self.on_ready()
        d = self.loop.run(*component.chain_defaults)
        d.addErrback(
            lambda f: component.log.failure("{ident}: consumer loop failed", failure=f,
                                            ident=component.ident)
        )
        d.addBoth(lambda _: self._loop_ended())

    def _loop_ended(self):
        # A new run starts with a closed circuit: what failed before a stop
        # (a standby period, a shutdown) is old news.
        self.component.breaker.reset()
        report = self.loop.report
        if report is not None:
            self.work_ended(Outcome(TERMINATED, report.error, report))
        else:
            self.work_ended(Outcome(STOPPED))

    def end_work(self):
        self.loop.stop()

    def terminate_work(self, report):
        self.loop.terminate(report)
