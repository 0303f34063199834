# -*- test-case-name: tests.test_monitor -*-
"""
L{RoleMonitor}: when to check the server's role, as an Automat state
machine in the manner of Twisted's C{ClientService}.

Checks never overlap.  One runs at start; then one every C{interval}
seconds while some host answers, or after a backoff while none does; and
one whenever asked (a failover file changed, a component lost its
connection).  Asking during a check makes exactly one more check follow
it, and the asker gets I{that} check's result, since the running one may
have asked before whatever made them ask.

Only the checks the schedule made count toward the backoff: checks asked
for by bursts of file events while the server is down do not stretch the
wait for the next scheduled one.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Protocol

from automat import TypeMachineBuilder
from twisted.internet import defer
from twisted.logger import Logger

from hermes_tx.failover.roles import PRIMARY, UNKNOWN, RoleResult


class _Inputs(Protocol):
    def start(self) -> None:
        "Begin checking."

    def stop(self) -> None:
        "Stop checking; a check in flight is forgotten."

    def request(self, waiter: defer.Deferred) -> None:
        "Check as soon as possible; fire C{waiter} with that check's result."

    def check_done(self, result: object) -> None:
        "The check in flight finished."

    def tick(self) -> None:
        "The scheduled time for the next check has come."


@dataclass
class _Core:
    clock: Any
    run_check: Callable[[], defer.Deferred]
    apply: Callable[[RoleResult], None]
    interval: float
    backoff: Any
    log: Logger
    check: Optional[defer.Deferred] = None
    scheduled: bool = False  # the check in flight was made by the schedule
    waiters: List[defer.Deferred] = field(default_factory=list)
    followers: List[defer.Deferred] = field(default_factory=list)
    timer: Optional[Any] = None
    last: Optional[RoleResult] = None
    failover_interval: Optional[float] = None
    failover_window: float = 60.0
    primary_seen_at: Optional[float] = None

    def begin(self, machine, waiters, scheduled):
        self.waiters = waiters
        self.scheduled = scheduled
        check = self.check = defer.maybeDeferred(self.run_check)

        def done(result):
            if self.check is check:
                self.check = None
                machine.check_done(result)

        def failed(failure):
            self.log.failure("role check raised", failure)
            return RoleResult.unknown()

        check.addErrback(failed).addCallback(done)

    def count(self, result):
        """
        Count C{result} toward the backoff: an answer resets it; a
        scheduled check nobody answered advances it, whether or not a
        follow-up was asked for meanwhile.

        @return: the seconds until the next scheduled check.
        """
        if result.role == PRIMARY:
            self.primary_seen_at = self.clock.seconds()
        if result.role != UNKNOWN:
            self.backoff.reset()
            delay = self.interval
        elif self.scheduled:
            delay = self.backoff.next_delay()
        else:
            delay = self.backoff.policy(self.backoff.attempts)
        if result.role != PRIMARY and self._failing_over():
            delay = min(delay, self.failover_interval)
        return delay

    def _failing_over(self):
        """
        True for C{failover_window} seconds after a primary was last seen:
        a promotion is coming, look often.
        """
        return (
            self.failover_interval is not None
            and self.primary_seen_at is not None
            and self.clock.seconds() - self.primary_seen_at < self.failover_window
        )

    def finish(self, result):
        """
        @return: the seconds until the next scheduled check (see L{count}).
        """
        delay = self.count(result)
        self.last = result
        try:
            self.apply(result)
        except Exception:
            self.log.failure("applying a role check failed")
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter.callback(result)
        return delay

    def schedule(self, machine, delay):
        self.timer = self.clock.callLater(delay, machine.tick)

    def cancel_timer(self):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def abandon(self):
        self.check = None
        self.cancel_timer()
        waiters = self.waiters + self.followers
        self.waiters, self.followers = [], []
        for waiter in waiters:
            waiter.callback(RoleResult.unknown())


def _build():
    builder = TypeMachineBuilder(_Inputs, _Core)
    stopped = builder.state("Stopped")
    checking = builder.state("Checking")
    checking_again = builder.state("CheckingThenAgain")
    waiting = builder.state("Waiting")

    @stopped.upon(_Inputs.start).to(checking)
    def first_check(inputs, core):
        core.begin(inputs, [], scheduled=True)

    @waiting.upon(_Inputs.tick).to(checking)
    def scheduled_check(inputs, core):
        core.timer = None
        core.begin(inputs, [], scheduled=True)

    @waiting.upon(_Inputs.request).to(checking)
    def check_now(inputs, core, waiter):
        core.cancel_timer()
        core.begin(inputs, [waiter], scheduled=False)

    @checking.upon(_Inputs.request).to(checking_again)
    @checking_again.upon(_Inputs.request).loop()
    def follow_up(inputs, core, waiter):
        core.followers.append(waiter)

    @checking.upon(_Inputs.check_done).to(waiting)
    def checked(inputs, core, result):
        core.schedule(inputs, core.finish(result))

    @checking_again.upon(_Inputs.check_done).to(checking)
    def checked_then_again(inputs, core, result):
        core.finish(result)
        followers, core.followers = core.followers, []
        core.begin(inputs, followers, scheduled=False)

    @checking.upon(_Inputs.stop).to(stopped)
    @checking_again.upon(_Inputs.stop).to(stopped)
    @waiting.upon(_Inputs.stop).to(stopped)
    def forget(inputs, core):
        core.abandon()

    @stopped.upon(_Inputs.request).loop()
    def not_checking(inputs, core, waiter):
        waiter.callback(RoleResult.unknown())

    stopped.upon(_Inputs.stop).loop().returns(None)
    for state in (checking, checking_again, waiting):
        state.upon(_Inputs.start).loop().returns(None)
    for state in (stopped, checking, checking_again):
        state.upon(_Inputs.tick).loop().returns(None)
    for state in (stopped, waiting):
        state.upon(_Inputs.check_done).loop().returns(None)
    return builder.build()


_Machine = _build()


class RoleMonitor:
    """
    Schedules role checks and hands each result to C{apply}.

    @ivar last: the last L{RoleResult}, or C{None}.
    """

    def __init__(self, clock, run_check, apply, interval, backoff, log=None,
                 failover_interval=None, failover_window=60.0):
        """
        @param clock: an C{IReactorTime}.
        @param run_check: a callable returning a Deferred firing with a
            L{RoleResult} (see L{hermes_tx.failover.roles.check_roles}).
        @param apply: called with each L{RoleResult}, before anyone waiting
            for that check is told.
        @param interval: seconds between checks while some host answers.
        @param backoff: a L{hermes_tx.runtime.backoff.Backoff} for the checks while
            no host answers.
        @param failover_interval: C{None}, or the longest wait between
            checks for C{failover_window} seconds after the primary was last
            seen (while a failover is under way, look often).
        """
        self._core = _Core(clock, run_check, apply, interval, backoff, log or Logger(),
                           failover_interval=failover_interval,
                           failover_window=failover_window)
        self._machine = _Machine(self._core)

    @property
    def last(self):
        return self._core.last

    @property
    def backoff(self):
        return self._core.backoff

    def start(self):
        self._machine.start()

    def stop(self):
        self._machine.stop()

    def check_now(self):
        """
        @return: a Deferred firing with the L{RoleResult} of a check that
            begins after this call (the next one if one is running), once
            C{apply} has seen it.  While stopped: an unknown result at once.
        """
        waiter = defer.Deferred()
        self._machine.request(waiter)
        return waiter
