# -*- test-case-name: tests.test_breaker -*-
"""
L{Breaker}: the circuit breaker of a processor, for a dependency that is
down, never for one bad event.

A failing event is retried alone, on its own schedule (an outbox change is
released with its own delay; see L{hermes_tx.runtime.settle}); the
processor goes straight on with the next one.  Only when deliveries keep
failing with no success in between (the sink is down, refuses our
credentials, times out) does the whole processor back off: the circuit
I{opens} after L{THRESHOLD} failures in a row, or after two in a row that
are L{SPAN} seconds apart (a dependency that hangs until each request
times out), and nothing is executed while it is open.  A check that finds
the dependency down without any delivery (a sink that cannot connect, or
whose credentials are refused, at start or while nothing is pending:
L{hermes_tx.sinks.check}) opens it at once (L{Breaker.down}).  After the
breaker's backoff one delivery is let through (I{half-open}): a success
closes the circuit (and resets the backoff), a failure opens it again for
longer.  A rejection (the other side answered "never") is not a failure of
the dependency: it resets the count like a success.

An Automat state machine in the manner of Twisted's C{ClientService}: the
open state owns its timer, and time comes from one injected clock.
Whoever must act on a change of state (the outbox consumer stops claiming
while open; the status endpoint answers 503) adds an observer.
"""

from dataclasses import dataclass, field
from typing import Any, List, Optional, Protocol

from automat import TypeMachineBuilder
from twisted.internet import defer
from twisted.logger import Logger

from hermes_tx.runtime.machines import StateName

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"

#: failures in a row, with no success in between, that open the circuit
THRESHOLD = 5
#: two failures in a row this many seconds apart open it too (each
#: delivery then takes that long to fail: a dependency that hangs)
SPAN = 5.0


class BreakerObserver:
    """
    What a breaker tells its observers; every method is optional.
    """

    def breaker_opened(self, breaker):
        """The circuit opened: nothing is executed for a while."""

    def breaker_half_open(self, breaker):
        """One delivery may try whether the dependency is back."""

    def breaker_closed(self, breaker):
        """A delivery succeeded: the circuit is closed again."""


class _Inputs(Protocol):
    def succeeded(self) -> None:
        "A delivery succeeded (or the other side answered)."

    def failed(self, reason: str, now: float) -> None:
        "A delivery failed."

    def trip(self) -> None:
        "Enough failures in a row: open."

    def down(self, reason: str, now: float) -> None:
        "A check found the dependency down: open now."

    def elapsed(self) -> None:
        "The open state's backoff is over."

    def reset(self) -> None:
        "Forget everything (the processor stops)."


@dataclass
class _Core:
    clock: Any
    backoff: Any
    threshold: int
    span: float
    log: Logger
    name: Any  # a callable returning the processor's name
    observers: List[Any] = field(default_factory=list)
    streak: int = 0  # failures in a row
    first_failed_at: Optional[float] = None  # when the streak began
    reason: Optional[str] = None  # the last failure's reason
    timer: Optional[Any] = None
    retry_at: Optional[float] = None  # when the open circuit half-opens
    waiters: List[defer.Deferred] = field(default_factory=list)
    opens: int = 0  # times the circuit opened
    on_elapsed: Any = None  # what the open state's timer calls
    checked: bool = False  # the last failure was a check's, not a delivery's

    def count(self, reason, now, checked=False):
        if self.streak == 0:
            self.first_failed_at = now
        self.streak += 1
        self.reason = reason
        self.checked = checked

    def trips(self, now):
        if self.streak >= self.threshold:
            return True
        return self.streak >= 2 and now - self.first_failed_at >= self.span

    def open(self, machine, first):
        delay = self.backoff.next_delay()
        self.retry_at = self.clock.seconds() + delay
        self.timer = self.clock.callLater(delay, self.on_elapsed)
        if first:
            self.opens += 1
            if self.checked:
                self.log.warn("{name}: {reason}; pausing, next try in {delay:.2g} s",
                              name=self.name(), reason=self.reason, delay=delay)
            else:
                self.log.warn(
                    "{name}: {n} deliveries failed in a row (last: {reason}); "
                    "pausing, next try in {delay:.2g} s",
                    name=self.name(), n=self.streak, reason=self.reason, delay=delay,
                )
            self.notify("breaker_opened")

    def cancel_timer(self):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.retry_at = None

    def release_waiters(self):
        # Fired once the transition is over: a waiter goes on at once and
        # may ask the breaker its state.
        waiters, self.waiters = self.waiters, []
        self.news.extend(waiters)

    def forget(self):
        self.streak = 0
        self.first_failed_at = None
        self.reason = None
        self.checked = False

    def notify(self, method):
        # Observers are told once the transition is over (they may ask the
        # breaker its state): see Breaker._announce.
        self.news.append(method)

    # what to announce once the current transition is over: observer
    # method names, and waiters of admitted() to fire
    news: List[Any] = field(default_factory=list)


def _build():
    builder = TypeMachineBuilder(_Inputs, _Core)
    closed = builder.state("Closed")
    open_ = builder.state("Open")
    half_open = builder.state("HalfOpen")

    @closed.upon(_Inputs.succeeded).loop()
    def still_fine(inputs, core):
        core.forget()

    @closed.upon(_Inputs.failed).loop()
    def one_more(inputs, core, reason, now):
        core.count(reason, now)
        if core.trips(now):
            # Automat queues an input given while handling one: it runs
            # once this transition is done.
            inputs.trip()

    @closed.upon(_Inputs.trip).to(open_)
    def tripped(inputs, core):
        core.open(inputs, first=True)

    @half_open.upon(_Inputs.succeeded).to(closed)
    def back(inputs, core):
        if core.checked:
            core.log.info("{name}: the dependency answers again ({n} failure(s) before); going on",
                          name=core.name(), n=core.streak)
        else:
            core.log.info("{name}: a delivery succeeded after {n} failed; going on",
                          name=core.name(), n=core.streak)
        core.forget()
        core.backoff.reset()
        core.notify("breaker_closed")

    @closed.upon(_Inputs.down).to(open_)
    def found_down(inputs, core, reason, now):
        core.count(reason, now, checked=True)
        core.open(inputs, first=True)

    @half_open.upon(_Inputs.down).to(open_)
    def still_found_down(inputs, core, reason, now):
        core.count(reason, now, checked=True)
        core.open(inputs, first=False)

    @open_.upon(_Inputs.down).loop()
    def found_down_again(inputs, core, reason, now):
        core.count(reason, now, checked=True)

    @half_open.upon(_Inputs.failed).to(open_)
    def still_down(inputs, core, reason, now):
        core.count(reason, now)
        core.open(inputs, first=False)

    @open_.upon(_Inputs.elapsed).to(half_open)
    def probe(inputs, core):
        core.timer = None
        core.retry_at = None
        core.release_waiters()
        core.notify("breaker_half_open")

    # A delivery that was under way when the circuit opened may still end.
    @open_.upon(_Inputs.failed).loop()
    def late_failure(inputs, core, reason, now):
        core.count(reason, now)

    open_.upon(_Inputs.succeeded).loop().returns(None)

    for state in (closed, open_, half_open):
        @state.upon(_Inputs.reset).to(closed)
        def reset(inputs, core):
            core.cancel_timer()
            core.forget()
            core.backoff.reset()
            core.release_waiters()

    for state in (closed, half_open):
        state.upon(_Inputs.elapsed).loop().returns(None)
    for state in (open_, half_open):
        state.upon(_Inputs.trip).loop().returns(None)
    return builder.build()


_Machine = _build()
_NAMES = {"Closed": CLOSED, "Open": OPEN, "HalfOpen": HALF_OPEN}


class Breaker:
    """
    The circuit of one processor (see the module docstring).

    @ivar state: L{CLOSED}, L{OPEN} or L{HALF_OPEN}.
    @ivar failures: deliveries (and checks) failed in a row so far.
    @ivar reason: the last failure's reason (one line), or C{None}.
    @ivar checked: True when the last failure was a check's (L{down}).
    @ivar retry_at: clock time at which an open circuit half-opens, or
        C{None}.
    @ivar opens: how many times the circuit opened (for metrics).
    """

    def __init__(self, clock, backoff, name="processor", threshold=THRESHOLD, span=SPAN, log=None):
        """
        @param clock: an C{IReactorTime}.
        @param backoff: the L{hermes_tx.runtime.backoff.Backoff} of the open
            state (its delays grow while probes fail; reset on success).
        @param name: what log lines call the processor: a string, or a
            callable returning one (read when a line is logged).
        @param threshold: see L{THRESHOLD}.
        @param span: see L{SPAN}.
        """
        named = name if callable(name) else (lambda: name)
        self._core = _Core(clock, backoff, threshold, span, log or Logger(), named)
        self._core.on_elapsed = self._elapsed
        self._machine = _Machine(self._core)
        self._state = StateName(self._machine, "Closed")

    @property
    def state(self):
        return _NAMES[self._state.name]

    def _announce(self):
        core = self._core
        while core.news:
            method = core.news.pop(0)
            if isinstance(method, defer.Deferred):
                method.callback(None)  # a waiter of admitted()
                continue
            for observer in list(core.observers):
                call = getattr(observer, method, None)
                if call is None:
                    continue
                try:
                    call(self)
                except Exception:
                    core.log.failure("breaker observer {method} failed", method=method)

    def _elapsed(self):
        self._machine.elapsed()
        self._announce()

    @property
    def failures(self):
        return self._core.streak

    @property
    def reason(self):
        return self._core.reason

    @property
    def retry_at(self):
        return self._core.retry_at

    @property
    def checked(self):
        """
        True when the last failure was a check's (L{down}), not a
        delivery's.
        """
        return self._core.checked

    @property
    def opens(self):
        return self._core.opens

    def add_observer(self, observer):
        """
        @param observer: a L{BreakerObserver} (or any object with some of its
            methods).
        """
        self._core.observers.append(observer)

    def succeeded(self):
        """
        A delivery succeeded, or the other side answered for good (a
        rejection).
        """
        self._machine.succeeded()
        self._announce()

    def failed(self, reason):
        """
        A delivery failed (an exception, a retry, a timeout).

        @param reason: one line, without secrets.
        """
        self._machine.failed(reason, self._core.clock.seconds())
        self._announce()

    def down(self, reason):
        """
        A check found the dependency down (no delivery failed: none may be
        pending): open the circuit now, or keep it open (half-open: for
        longer).

        @param reason: one line, without secrets.
        """
        self._machine.down(reason, self._core.clock.seconds())
        self._announce()

    def admitted(self):
        """
        @return: C{None} when a delivery may start now (closed, or
            half-open: the probe), else a Deferred firing when it may (the
            circuit half-opens, or is reset).  Cancelling it withdraws the
            wait.
        """
        if self.state != OPEN:
            return None
        waiter = defer.Deferred(canceller=self._withdraw)
        self._core.waiters.append(waiter)
        return waiter

    def _withdraw(self, waiter):
        if waiter in self._core.waiters:
            self._core.waiters.remove(waiter)

    def reset(self):
        """
        Close the circuit and forget the failures (the processor stops).
        """
        self._machine.reset()
        self._announce()
