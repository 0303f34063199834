# -*- test-case-name: tests.test_outcomes,tests.test_components -*-
"""
What happens to an item after its processor ran: success, an outcome
(L{hermes_tx.outcomes}), or an exception for the error strategy.

One failure, one consequence.  Two kinds of item are settled differently:

  - outbox changes (L{hermes_tx.events.Change}) carry their claim: done
    acknowledges, "try again" releases the row with a delay of its own
    (the outbox keeps it, per-key order holds: later changes of its key
    wait for it, and counts the attempt toward the dead letters), "never"
    moves it to the dead letters.  The processor goes straight on with
    the next item: a failing change never pauses the others;
  - everything else (notifications, start, resync) lives only in memory:
    "try again" executes the same events again after a backoff (they are
    never skipped), "never" logs and skips them.

Any other exception goes to the component's error strategy, as in the
seed: C{CONTINUE} skips the item, C{BACKOFF} waits and then goes on,
C{TERMINATE} ends the run.  A change is never skipped: C{CONTINUE} and
C{BACKOFF} release it with its own delay.

Failed deliveries are told to the processor's
L{hermes_tx.runtime.breaker.Breaker}, which backs the whole processor off
only when deliveries keep failing with no success in between (a
dependency that is down).  It hears of failures that speak of the other
side (L{hermes_tx.outcomes.Unavailable}, a batch in which nothing was
done, a refused or lost connection, a timeout) and of every failed first
delivery; a change that failed before and fails again for any other
reason is its own story (a poison change), retried on its schedule toward
the dead letters without pausing anything.  Lines about failed events are
limited to a few a second (the next line counts those left out).
"""

from twisted.internet import defer, error as net

from hermes_tx import strategies
from hermes_tx.events import Change
from hermes_tx.exceptions import ExecuteTimeout, failure_of, one_line
from hermes_tx.outcomes import Reject, Retry, Unavailable
from hermes_tx.runtime.breaker import CLOSED
from hermes_tx.runtime.supervisor import ComponentError


def _batch_of(loop, item):
    return item if loop.component.max_batch else [item]


def _where(batch):
    channels = sorted({e.channel for e in batch if getattr(e, "channel", None) is not None})
    topics = sorted({e.topic for e in batch if type(e) is Change})
    parts = [f"channel {c!r}" for c in channels] + [f"topic {t!r}" for t in topics]
    return f" ({', '.join(parts)})" if parts else ""


def _ids(changes):
    ids = [str(c.id) for c in changes[:5]]
    return ", ".join(ids) + (f" and {len(changes) - 5} more" if len(changes) > 5 else "")


def _tell(loop, events, outcome, detail):
    """
    Tell the component's outcome observer (tests: L{hermes_tx.testing}),
    if it has one, what became of C{events}.
    """
    observer = loop.component.outcome_observer
    if observer is not None:
        for event in events:
            observer(event, outcome, detail)


def settle_success(loop, change):
    """
    An outbox change was processed: acknowledge it.
    """
    claim = getattr(change, "claim", None)
    if claim is not None:
        claim.done(change)


def _settle_done(loop, events):
    _tell(loop, events, "done", None)
    processed = loop.component.processed
    for event in events:
        if type(event) is Change:
            settle_success(loop, event)
        elif getattr(event, "kind", None) == "notification":
            processed[event.channel] = processed.get(event.channel, 0) + 1


def _release(loop, changes, reason, retry_after=None, systemic=False):
    """
    Give failed changes back to the outbox: with a delay of their own, the
    delivery counted toward the dead letters; or, when the delivery was the
    probe of an open circuit and failed because the other side is down
    (C{systemic}: not the change's fault), at once and not counted.
    """
    probing = systemic and loop.breaker.state != CLOSED
    for change in changes:
        claim = change.claim
        if claim is None:
            continue
        if probing and hasattr(claim, "give_back"):
            claim.give_back(change)
        else:
            claim.retry(change, reason, retry_after)


#: Exceptions that speak of the other side rather than of the event: the
#: circuit breaker hears of them whatever the change's history.
_DEPENDENCY_ERRORS = (
    Unavailable, ConnectionError, TimeoutError, ExecuteTimeout, net.ConnectError,
    net.ConnectionLost, net.DNSLookupError, net.TimeoutError, defer.TimeoutError,
)


def _breaker_hears(loop, events, reason, systemic):
    """
    Tell the circuit breaker of a failed delivery, when it says something
    about the dependency: a failure of the other side (C{systemic}, or an
    exception of L{_DEPENDENCY_ERRORS}), or of a first delivery (a change
    never handed out before, a notification).  A change that failed before
    failing again otherwise is that change's own story (a poison change,
    retried on its schedule toward the dead letters): the breaker does not
    hear of it.
    """
    if (systemic or isinstance(reason, _DEPENDENCY_ERRORS)
            or any(type(e) is not Change or e.attempts == 0 for e in events)):
        loop.failed(one_line(reason) if isinstance(reason, BaseException) else str(reason))


def _warn(loop, text, **fields):
    """
    One line about failed events, at most a few a second.
    """
    component = loop.component
    more = component.failure_lines.allow()
    if more is not None:
        component.log.warn(text + "{more}", ident=component.ident, more=more, **fields)


def _reject(loop, events, reason):
    _tell(loop, events, "rejected", reason)
    changes = [e for e in events if type(e) is Change]
    others = [e for e in events if type(e) is not Change]
    for change in changes:
        if change.claim is not None:
            change.claim.reject(change, reason)
    if others:
        _warn(loop, "{ident}: skipped {n} event(s) the processor rejected for good: {reason}{where}",
              n=len(others), reason=one_line(reason), where=_where(others))


@defer.inlineCallbacks
def _retry(loop, events, reason, retry_after, systemic=False):
    """
    Events were not delivered: changes go back to the outbox, each with its
    own delay, at once; the others are executed again after the backoff.

    @return: a Deferred firing with the events to execute again (a list),
        or C{None}.
    """
    component = loop.component
    _tell(loop, events, "retried", reason)
    changes = [e for e in events if type(e) is Change]
    others = [e for e in events if type(e) is not Change]
    _release(loop, changes, reason, retry_after, systemic)
    if changes:
        _warn(loop, "{ident}: change(s) {ids} not delivered ({reason}){where}; each is retried "
              "on its own schedule", ids=_ids(changes), reason=one_line(reason),
              where=_where(changes))
    if not others:
        return None
    delay = max(component.retry_backoff.next_delay(), retry_after or 0.0)
    loop.failing = (one_line(reason), loop.clock.seconds())
    _warn(loop, "{ident}: {n} event(s) not delivered ({reason}){where}; retrying in {delay:.3g} s",
          n=len(others), reason=one_line(reason), where=_where(others), delay=delay)
    try:
        yield loop.sleep(delay)
    except defer.CancelledError:
        loop.put_back(others)
        return None
    return others


def _as_item(loop, events):
    if events is None:
        return None
    return events if loop.component.max_batch else events[0]


@defer.inlineCallbacks
def settle_outcome(loop, item, outcome):
    """
    Apply a L{hermes_tx.outcomes.BatchOutcome} to C{item} (an event or a
    batch).  Some event done, or some rejected (the other side answered),
    is a success for the breaker; only retries (nothing done) is a failure
    of the other side.

    @return: a Deferred firing with the item to execute again, or C{None}.
    """
    batch = _batch_of(loop, item)
    done = outcome.done(batch)
    _settle_done(loop, done)
    if outcome.rejected:
        for event, reason in outcome.rejected:
            _reject(loop, [event], reason)
    if not outcome.retry:
        loop.succeeded()
        return None
    loop.component.failures += 1
    events = [event for event, _, _ in outcome.retry]
    reason = outcome.retry[0][1]
    after = max((a for _, _, a in outcome.retry if a is not None), default=None)
    answered = bool(done or outcome.rejected)
    if answered:
        loop.succeeded()
    # Released (given back while probing) before the breaker hears of it.
    retried = _retry(loop, events, reason, after, systemic=not answered)
    if not answered:
        _breaker_hears(loop, events, reason, systemic=True)
    again = yield retried
    return _as_item(loop, again)


@defer.inlineCallbacks
def settle_failure(loop, item, error):
    """
    The processor raised C{error} for C{item} (an event or a batch).

    @return: a Deferred firing with the item to execute again, or C{None}.
    """
    component = loop.component
    batch = _batch_of(loop, item)
    component.failures += 1
    if isinstance(error, Reject):
        loop.succeeded()  # the other side answered: nothing is down
        _reject(loop, batch, error)
        return None
    systemic = isinstance(error, Unavailable)
    if isinstance(error, Retry):
        retried = _retry(loop, batch, error, error.retry_after, systemic)
        _breaker_hears(loop, batch, error, systemic)
        again = yield retried
        return _as_item(loop, again)
    expected, action = component.error_strategy.handle_exception(error)
    _tell(loop, batch, "failed", error)
    where = _where(batch)
    changes = [e for e in batch if type(e) is Change]
    _release(loop, changes, error)
    _breaker_hears(loop, batch, error, systemic=False)
    others = [e for e in batch if type(e) is not Change]
    ident = component.ident
    if action == strategies.TERMINATE:
        component.log.warn(
            "{ident}: terminated by {error}{where}", ident=ident, error=one_line(error), where=where,
        )
    elif action not in (strategies.CONTINUE, strategies.BACKOFF):
        component.log.failure(
            "{ident}: error strategy returned unknown action {action!r}",
            failure=failure_of(error), ident=ident, action=action,
        )
    if action not in (strategies.CONTINUE, strategies.BACKOFF):
        loop.terminate(ComponentError(expected, action, component, error))
        return None
    delay = component.retry_backoff.next_delay() if action == strategies.BACKOFF and others else None
    more = component.failure_lines.allow()
    if more is not None:
        what = _what_next(changes, others, action, delay)
        if expected:
            component.log.warn("{ident}: {error}{where}; {what}{more}", ident=ident,
                               error=one_line(error), where=where, what=what, more=more)
        else:
            component.log.failure("{ident}: unexpected error{where}; {what}{more}",
                                  failure=failure_of(error), ident=ident, where=where, what=what,
                                  more=more)
    if delay is not None:
        try:
            yield loop.sleep(delay)
        except defer.CancelledError:
            pass
    return None


def _what_next(changes, others, action, delay):
    parts = []
    if changes:
        parts.append(f"change(s) {_ids(changes)} retried on their own schedule")
    if others:
        parts.append("skipped" if delay is None else f"backing off {delay:g} s")
    return "; ".join(parts)
