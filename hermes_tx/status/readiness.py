# -*- test-case-name: tests.test_status,tests.test_readiness -*-
"""
L{readiness}: whether a Client can deliver now, and why not.

The answer names every part the Client has and what it is doing: the
server's C{role}, the C{listener} and the C{outbox} consumer (when it has
them) and the C{processor}; when one keeps the Client from delivering,
C{reason} says why, in one line.
"""

from hermes_tx.exceptions import one_line
from hermes_tx.failover.roles import PRIMARY
from hermes_tx.runtime.breaker import CLOSED


def readiness(client):
    """
    @return: C{(ready, details)}: ready is True when the server is the
        primary, the listener (if any) is listening and its LISTEN is not
        known to hear nothing, the outbox consumer (if any) is consuming
        (by polling alone, if its wake-ups are not heard) and the processor
        is working (not terminated, not paused by its circuit breaker, not
        retrying notifications, not stuck on one event for longer than its
        C{execute_timeout}); C{details} is a dict for humans: C{role},
        C{listener}, C{outbox} and C{processor} (each present when the
        Client has one) and C{reason} when not ready.
    """
    details = {"role": client.role}
    reasons = []
    if client.role != PRIMARY:
        reasons.append(f"server role is {client.role}")
    if client.listener is not None:
        state, why = _listener(client.listener)
        details["listener"] = state
        if why:
            reasons.append(why)
    if client.outbox is not None:
        state, why = _outbox(client.outbox)
        details["outbox"] = state
        if why:
            reasons.append(why)
    if client.processor is not None:
        state, why = _processor(client, client.processor)
        details["processor"] = state
        if why:
            reasons.append(why)
    if reasons:
        details["reason"] = reasons[0]
    return not reasons, details


def _listener(listener):
    """
    @return: C{(state, reason or None)}.
    """
    if not listener.is_listening:
        state = _source_state(listener)
        return state, f"listener is {state}"
    deaf = getattr(listener, "deaf", None)
    if deaf is not None:
        return "deaf", f"listener's LISTEN hears nothing: {deaf}"
    return "listening", None


def _outbox(consumer):
    if not consumer.is_consuming:
        state = _source_state(consumer)
        return state, f"outbox consumer is {state}"
    hearing = getattr(consumer, "hearing", None)
    if hearing is not None and hearing.deaf is not None:
        # Still delivering, by polling: ready, and the body says how.
        return f"polling only: wake-ups are not heard ({hearing.deaf})", None
    return "consuming", None


def _processor(client, processor):
    if getattr(processor, "terminated", None) is not None:
        return "terminated", "processor terminated: " + one_line(processor.terminated.error)
    if not processor.running:
        return "stopped", "processor is stopped"
    breaker = getattr(processor, "breaker", None)
    if breaker is not None and breaker.state != CLOSED:
        return "paused", _paused(client, breaker)
    failing = getattr(processor, "failing", None)
    if failing is not None:
        reason, since = failing
        return "failing", f"processor failing since {client.clock.seconds() - since:.0f} s: {reason}"
    stuck = _stuck_for(client, processor)
    if stuck is not None:
        return "stuck", f"processor busy with one event for {stuck:.0f} s"
    return "working", None


def _source_state(source):
    """
    @return: a source's state, and why it waits to reconnect (the last
        loss, scrubbed of the DSN's secrets) when it does.
    """
    state = getattr(source, "state", "missing")
    supervisor = getattr(source, "supervisor", None)
    outcome = getattr(supervisor, "last_outcome", None)
    if state != "waiting" or outcome is None or outcome.error is None:
        return state
    describe = getattr(source, "describe_loss", None)
    line = describe(outcome.error) if describe is not None else one_line(outcome.error)
    return f"{state} to reconnect after {line}"


def _paused(client, breaker):
    """
    @return: why an open (or half-open) circuit pauses the processor.
    """
    if getattr(breaker, "checked", False) and breaker.reason:
        # A check found the dependency down (maybe with nothing pending).
        text = f"processor paused: {breaker.reason}"
    else:
        text = f"processor paused: {breaker.failures} deliveries failed in a row"
        if breaker.reason:
            text += f" (last: {breaker.reason})"
    if breaker.retry_at is not None:
        text += f"; next try in {max(0.0, breaker.retry_at - client.clock.seconds()):.1f} s"
    else:
        text += "; trying again now"
    return text


def _stuck_for(client, processor):
    """
    @return: seconds the processor has spent on its current event when that
        exceeds its C{execute_timeout}, else C{None}.
    """
    timeout = getattr(processor, "execute_timeout", None)
    since = getattr(processor, "busy_since", None)
    if not timeout or since is None:
        return None
    age = client.clock.seconds() - since
    return age if age > timeout else None
