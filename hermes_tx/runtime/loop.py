# -*- test-case-name: tests.test_components -*-
"""
L{ConsumerLoop}: one run of a L{hermes_tx.components.Component} taking
items from its pipe and running C{pre_execute -> execute -> post_execute}
on each (or on each batch).

It runs once per notification, so it avoids what costs: no Deferred per
item while items are queued (they are popped straight from the pipe's
pending list), no call to the default C{pre_execute}/C{post_execute}, and no
C{isinstance(x, Deferred)} on values of types already known to be plain
(Deferred's ABC metaclass makes each such check cost about as much as a
trivial step).  It gives the reactor a turn whenever
L{ConsumerLoop.turn_budget} seconds of work have passed since the last one
(the clock is read after every item), so a backlog worked through by a
synchronous processor, however slow each item, cannot starve liveness
probes, role checks and the status endpoint.

Before each item it asks the processor's circuit breaker
(L{hermes_tx.runtime.breaker}) whether it may go on: while the circuit is
open (deliveries kept failing: a dependency is down) it waits.  What
happens to an item after C{execute} is in L{hermes_tx.runtime.settle}.
"""

from twisted.internet import defer, task
from twisted.python.failure import Failure

from hermes_tx.events import Event
from hermes_tx.exceptions import ExecuteTimeout
from hermes_tx.outcomes import BatchOutcome
from hermes_tx.runtime.breaker import CLOSED
from hermes_tx.runtime.settle import settle_failure, settle_outcome, settle_success

_PLAIN_TYPES = {type(None)}


def _is_deferred(value):
    """
    C{isinstance(value, Deferred)}, remembering the types that are not.
    """
    kind = type(value)
    if kind in _PLAIN_TYPES:
        return False
    if isinstance(value, defer.Deferred):
        return True
    _PLAIN_TYPES.add(kind)
    return False


class ConsumerLoop:
    """
    The loop of one run.  It owns its waits (for the pipe, for a backoff,
    for a slow C{execute}) and nothing outlives it.

    @ivar current: the item (or batch) being processed, or C{None}.
    @ivar started_at: clock time at which C{current} was taken.
    @ivar report: the L{hermes_tx.components.ComponentError} that
        terminated the loop, or C{None}.
    @ivar failing: C{None}, or C{(reason, since)} while notifications that
        were not delivered are being tried again (no progress until one
        succeeds).
    """

    #: seconds of uninterrupted work after which the reactor gets a turn
    turn_budget = 0.01

    def __init__(self, component, clock):
        self.component = component
        self.clock = clock
        self.current = None
        self.started_at = None
        self.report = None
        self.failing = None
        self.breaker = component.breaker
        self._stopping = False
        self._waits = set()  # Deferreds to cancel when stopping
        # whether the last delivery failed: the breaker then hears of the
        # next success (successes in a row cost it nothing)
        self._last_failed = False

    def succeeded(self):
        """
        A delivery succeeded (or the other side answered for good).
        """
        self.component.retry_backoff.reset()
        self.failing = None
        if self._last_failed:
            self._last_failed = False
            self.breaker.succeeded()

    def failed(self, reason):
        """
        A delivery failed (told to the breaker).
        """
        self._last_failed = True
        self.breaker.failed(reason)

    @property
    def stopping(self):
        return self._stopping

    def stop(self):
        """
        Take no further item; the item in progress finishes.
        """
        self._stopping = True
        for wait in list(self._waits):
            if not wait.called:
                wait.cancel()

    def terminate(self, report):
        """
        End the loop after the item in progress, reporting C{report}.
        """
        if self.report is None:
            self.report = report
        self.stop()

    def _wait(self, d):
        self._waits.add(d)
        d.addBoth(lambda r: (self._waits.discard(d), r)[1])
        return d

    def sleep(self, seconds):
        """
        @return: a Deferred firing after C{seconds}, or failing with
            L{defer.CancelledError} when the loop stops first (at once
            if it is stopping already).
        """
        if self._stopping:
            return defer.fail(defer.CancelledError())
        return self._wait(task.deferLater(self.clock, seconds, lambda: None))

    def put_back(self, items):
        """
        Return items taken but not processed to the front of the pipe.
        """
        pending = getattr(self.component.queue, "pending", None)
        if pending is None:
            return
        if hasattr(pending, "extendleft"):
            pending.extendleft(reversed(items))
        else:
            pending[:0] = items

    @defer.inlineCallbacks
    def run(self, default_pre_execute, default_post_execute):
        """
        Process items until stopped or terminated.

        @param default_pre_execute: the default C{pre_execute} function,
            which is not called when the component did not override it.
        @param default_post_execute: likewise for C{post_execute}.
        @return: a Deferred firing when the loop has ended.
        """
        component = self.component
        pipe = component.queue
        pending = getattr(pipe, "pending", None)
        if pending is None:
            pending = ()
        take_one = getattr(pending, "popleft", None) or (lambda: pending.pop(0))
        check_space = getattr(pipe, "check_space", None) or (lambda: None)
        max_batch = component.max_batch
        processed = component.processed
        pre_execute = component.pre_execute
        execute = component.execute
        post_execute = component.post_execute
        if getattr(pre_execute, "__func__", None) is default_pre_execute:
            pre_execute = None
        if getattr(post_execute, "__func__", None) is default_post_execute:
            post_execute = None
        plain = _PLAIN_TYPES
        clock = self.clock
        breaker = self.breaker
        observer = component.outcome_observer
        budget = self.turn_budget
        turn_began = clock.seconds()
        retry = None  # items to execute again before taking new ones
        while not self._stopping:
            if breaker.state != CLOSED:
                wait = breaker.admitted()
                if wait is not None:
                    # The circuit is open: nothing is taken until it
                    # half-opens (then one delivery probes).
                    try:
                        yield self._wait(wait)
                    except defer.CancelledError:
                        break
                    turn_began = clock.seconds()
                    continue
            if retry is not None:
                item, retry = retry, None
            elif pending:
                if clock.seconds() - turn_began >= budget:
                    # Let the reactor run timers and read sockets.
                    check_space()
                    try:
                        yield self.sleep(0)
                    except defer.CancelledError:
                        break
                    turn_began = clock.seconds()
                    if not pending:
                        continue
                item = _take_batch(pipe, max_batch, None) if max_batch else take_one()
            else:
                check_space()
                # What was processed last is not kept alive while waiting
                # (an outbox change's payload may be large).
                item = value = outcome = None
                try:
                    item = yield self._wait(pipe.get())
                except defer.CancelledError:
                    break
                if max_batch:
                    item = _take_batch(pipe, max_batch, item)
                turn_began = clock.seconds()
            self.current = component.current_item = item
            self.started_at = clock.seconds()
            try:
                # pre_execute -> execute -> post_execute, inlined: this runs
                # once per notification.  A step's Deferred is waited for;
                # plain values go straight on.
                waited = False
                value = pre_execute() if pre_execute is not None else item
                if type(value) not in plain and _is_deferred(value):
                    value = yield self._timed(value.addCallback(execute))
                    waited = True
                else:
                    value = execute(value)
                    if type(value) not in plain and _is_deferred(value):
                        value = yield self._timed(value)
                        waited = True
                outcome = value if type(value) is BatchOutcome else None
                if post_execute is not None:
                    value = post_execute(value)
                    if type(value) not in plain and _is_deferred(value):
                        yield value
                        waited = True
                if waited:
                    check_space()
            except Exception as error:
                self.current = component.current_item = None
                retry = yield settle_failure(self, item, error)
                continue
            self.current = component.current_item = None
            if outcome is not None:
                retry = yield settle_outcome(self, item, outcome)
                continue
            if self._last_failed or self.failing is not None:
                self.succeeded()
            if observer is not None:
                for event in (item if max_batch else [item]):
                    observer(event, "done", None)
            # Success: the hot path counts notifications inline.
            if max_batch:
                for event in item:
                    if type(event) is Event:
                        if event.kind == "notification":
                            processed[event.channel] = processed.get(event.channel, 0) + 1
                    else:
                        settle_success(self, event)
            elif type(item) is Event:
                if item.kind == "notification":
                    processed[item.channel] = processed.get(item.channel, 0) + 1
            else:
                settle_success(self, item)
        if retry is not None:
            self.put_back(retry if max_batch else [retry])
        self.current = component.current_item = None

    def _timed(self, d):
        """
        Wait for an C{execute} Deferred for at most the component's
        C{execute_timeout}, cancelling it then.
        """
        timeout = self.component.execute_timeout
        if not timeout:
            return d
        timer = self.clock.callLater(timeout, d.cancel)

        def finished(result):
            if timer.active():
                timer.cancel()
            elif isinstance(result, Failure) and result.check(defer.CancelledError):
                return Failure(ExecuteTimeout(
                    f"execute did not finish within {timeout:g} s; cancelled"
                ))
            return result

        return d.addBoth(finished)


def _take_batch(pipe, limit, first):
    """
    @return: a list of up to C{limit} items: C{first} (when not C{None})
        and then whatever is queued already, oldest first.
    """
    batch = [] if first is None else [first]
    room = limit - len(batch)
    if hasattr(pipe, "take"):
        batch.extend(pipe.take(room))
    else:
        batch.extend(pipe.pending[:room])
        del pipe.pending[:room]
    return batch
