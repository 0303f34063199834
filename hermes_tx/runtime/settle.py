# -*- test-case-name: tests.test_components -*-
"""
What happens to an item after its processor ran: success, an outcome
(L{hermes_tx.outcomes}), or an exception for the error strategy.

Two kinds of item are settled differently:

  - outbox changes (L{hermes_tx.events.Change}) carry their claim: done
    acknowledges, "try again" releases the row with a backoff (the outbox
    keeps it, and counts the attempt toward the dead letters), "never"
    moves it to the dead letters;
  - everything else (notifications, start, resync) lives only in memory:
    "try again" executes the same events again after a backoff (they are
    never skipped), "never" logs and skips them.

Any other exception goes to the component's error strategy, as in the
seed: C{CONTINUE} skips the item, C{BACKOFF} waits and then goes on,
C{TERMINATE} ends the run.  Skipping a change releases it to the outbox
instead: nothing is dropped.
"""

from twisted.internet import defer

from hermes_tx import strategies
from hermes_tx.events import Change
from hermes_tx.exceptions import failure_of, one_line
from hermes_tx.outcomes import Reject, Retry
from hermes_tx.runtime.supervisor import ComponentError


def _batch_of(loop, item):
    return item if loop.component.max_batch else [item]


def _where(batch):
    channels = sorted({e.channel for e in batch if getattr(e, "channel", None) is not None})
    topics = sorted({e.topic for e in batch if type(e) is Change})
    parts = [f"channel {c!r}" for c in channels] + [f"topic {t!r}" for t in topics]
    return f" ({', '.join(parts)})" if parts else ""


def settle_success(loop, change):
    """
    An outbox change was processed: acknowledge it.
    """
    claim = getattr(change, "claim", None)
    if claim is not None:
        claim.done(change)


def _settle_done(loop, events):
    processed = loop.component.processed
    for event in events:
        if type(event) is Change:
            settle_success(loop, event)
        elif getattr(event, "kind", None) == "notification":
            processed[event.channel] = processed.get(event.channel, 0) + 1


def _release(changes, reason, retry_after=None):
    for change in changes:
        if change.claim is not None:
            change.claim.retry(change, reason, retry_after)


def _reject(loop, events, reason):
    component = loop.component
    changes = [e for e in events if type(e) is Change]
    others = [e for e in events if type(e) is not Change]
    for change in changes:
        if change.claim is not None:
            change.claim.reject(change, reason)
    if others:
        component.log.warn(
            "{ident}: skipped {n} event(s) the processor rejected for good: {reason}{where}",
            ident=component.ident, n=len(others), reason=one_line(reason), where=_where(others),
        )


@defer.inlineCallbacks
def _retry(loop, events, reason, retry_after):
    """
    Events were not delivered: changes go back to the outbox, the others
    are executed again after the backoff.

    @return: a Deferred firing with the events to execute again (a list),
        or C{None}.
    """
    component = loop.component
    changes = [e for e in events if type(e) is Change]
    others = [e for e in events if type(e) is not Change]
    _release(changes, reason, retry_after)
    delay = max(component.backoff_delay(), retry_after or 0.0)
    if others:
        loop.failing = (one_line(reason), loop.clock.seconds())
    component.log.warn(
        "{ident}: {n} event(s) not delivered ({reason}){where}; {what} in {delay:.3g} s",
        ident=component.ident, n=len(events), reason=one_line(reason), where=_where(events),
        what="retrying" if others else "going on", delay=delay,
    )
    try:
        yield loop.sleep(delay)
    except defer.CancelledError:
        if others:
            loop.put_back(others)
        return None
    return others or None


def _as_item(loop, events):
    if events is None:
        return None
    return events if loop.component.max_batch else events[0]


@defer.inlineCallbacks
def settle_outcome(loop, item, outcome):
    """
    Apply a L{hermes_tx.outcomes.BatchOutcome} to C{item} (an event or a
    batch).

    @return: a Deferred firing with the item to execute again, or C{None}.
    """
    batch = _batch_of(loop, item)
    _settle_done(loop, outcome.done(batch))
    if outcome.rejected:
        for event, reason in outcome.rejected:
            _reject(loop, [event], reason)
    if not outcome.retry:
        loop.component._backoff_attempts = 0
        return None
    loop.component.failures += 1
    events = [event for event, _, _ in outcome.retry]
    reason = outcome.retry[0][1]
    after = max((a for _, _, a in outcome.retry if a is not None), default=None)
    again = yield _retry(loop, events, reason, after)
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
    if isinstance(error, Retry):
        again = yield _retry(loop, batch, error, error.retry_after)
        return _as_item(loop, again)
    if isinstance(error, Reject):
        _reject(loop, batch, error)
        return None
    expected, action = component.error_strategy.handle_exception(error)
    where = _where(batch)
    _release([e for e in batch if type(e) is Change], error)
    ident = component.ident
    if action == strategies.CONTINUE:
        component.log.warn(
            "{ident}: skipped an item after {error}{where}",
            ident=ident, error=one_line(error), where=where,
        )
        return None
    if action == strategies.BACKOFF:
        delay = component.backoff_delay()
        if expected:
            component.log.warn(
                "{ident}: {error}{where}; backing off {delay:g} s",
                ident=ident, error=one_line(error), where=where, delay=delay,
            )
        else:
            component.log.failure(
                "{ident}: unexpected error{where}; backing off {delay:g} s",
                failure=failure_of(error), ident=ident, where=where, delay=delay,
            )
        try:
            yield loop.sleep(delay)
        except defer.CancelledError:
            pass
        return None
    if action == strategies.TERMINATE:
        component.log.warn(
            "{ident}: terminated by {error}{where}", ident=ident, error=one_line(error), where=where,
        )
    else:
        component.log.failure(
            "{ident}: error strategy returned unknown action {action!r}",
            failure=failure_of(error), ident=ident, action=action,
        )
    loop.terminate(ComponentError(expected, action, component, error))
    return None
