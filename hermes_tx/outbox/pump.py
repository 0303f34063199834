# -*- test-case-name: tests.test_outbox_pump,tests.test_outbox_run -*-
"""
L{ClaimPump}: when an outbox consumer claims, as an Automat state machine.

Claims never overlap on the consumer's connection.  Whatever may have made
changes claimable (a wake-up, the poll, acknowledgements that freed the
next change of a key, room in the queue, the processor's circuit closing)
asks the pump; asked while a claim is in flight, exactly one more claim
follows it, since the one in flight may have been made before the reason
to ask.  A claim that came back full asks for the next one itself.  A claim
function that fails (a bug: its run handles a failed statement itself) is
logged with its traceback, and the next reason to claim claims again.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, List, Protocol

from automat import TypeMachineBuilder
from twisted.internet import defer
from twisted.logger import Logger

from hermes_tx.runtime.machines import StateName

log = Logger()


class _Inputs(Protocol):
    def want(self) -> None:
        "Changes may be claimable."

    def finished(self, more: bool) -> None:
        "The claim in flight is handled; more: claim again at once."

    def stop(self, waiter: defer.Deferred) -> None:
        "Claim no more; fire waiter once no claim is in flight."



@dataclass
class _Core:
    claim: Callable[[], Any]
    waiters: List[defer.Deferred] = field(default_factory=list)

    def begin(self, machine):
        d = defer.maybeDeferred(self.claim)
        d.addErrback(lambda f: log.failure("claiming failed", f))
        d.addBoth(lambda more: machine.finished(more is True))

    def release(self):
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter.callback(None)


def _build():
    builder = TypeMachineBuilder(_Inputs, _Core)
    idle = builder.state("Idle")
    claiming = builder.state("Claiming")
    claiming_again = builder.state("ClaimingThenAgain")
    stopping = builder.state("Stopping")
    stopped = builder.state("Stopped")

    @idle.upon(_Inputs.want).to(claiming)
    def claim(inputs, core):
        core.begin(inputs)

    claiming.upon(_Inputs.want).to(claiming_again).returns(None)
    claiming_again.upon(_Inputs.want).loop().returns(None)

    @claiming.upon(_Inputs.finished).to(idle)
    def done(inputs, core, more):
        if more:
            inputs.want()  # runs once this transition is over

    @claiming_again.upon(_Inputs.finished).to(idle)
    def and_again(inputs, core, more):
        inputs.want()

    @idle.upon(_Inputs.stop).to(stopped)
    @stopped.upon(_Inputs.stop).loop()
    def stop_now(inputs, core, waiter):
        waiter.callback(None)

    @claiming.upon(_Inputs.stop).to(stopping)
    @claiming_again.upon(_Inputs.stop).to(stopping)
    @stopping.upon(_Inputs.stop).loop()
    def wait_for_it(inputs, core, waiter):
        core.waiters.append(waiter)

    @stopping.upon(_Inputs.finished).to(stopped)
    def last(inputs, core, more):
        core.release()

    for state in (stopping, stopped):
        state.upon(_Inputs.want).loop().returns(None)
    return builder.build()


_Machine = _build()
_NAMES = {"Idle": "idle", "Claiming": "claiming", "ClaimingThenAgain": "claiming",
          "Stopping": "stopping", "Stopped": "stopped"}


class ClaimPump:
    """
    @ivar state: C{"idle"}, C{"claiming"}, C{"stopping"} (waiting for the
        claim in flight) or C{"stopped"}.
    """

    def __init__(self, claim):
        """
        @param claim: makes one claim (when there is room for one):
            returns a Deferred firing once its rows are handled, with True
            to claim again at once (it came back full); or C{None} when no
            claim was made.
        """
        self._machine = _Machine(_Core(claim))
        self._state = StateName(self._machine, "Idle")

    @property
    def state(self):
        return _NAMES[self._state.name]

    def want(self):
        """
        Changes may be claimable: claim now, or right after the claim in
        flight.
        """
        self._machine.want()

    def stop(self):
        """
        Claim no more.

        @return: a Deferred firing once no claim is in flight (its rows
            handled).
        """
        waiter = defer.Deferred()
        self._machine.stop(waiter)
        return waiter
